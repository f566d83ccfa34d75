// swift-tools-version:6.2
// Ferry: an embedded A/B partition updater. See docs/architecture.md for the module map.
import PackageDescription

let argumentParser: Target.Dependency = .product(name: "ArgumentParser", package: "swift-argument-parser")
let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")
let systemPackage: Target.Dependency = .product(name: "SystemPackage", package: "swift-system")

// Size, release only (stripped sizes measured with tools/check-binary):
// - --no-export-dynamic undoes the -export-dynamic that --static-swift-stdlib adds
//   (static-stdlib-args.lnk): it put ~5,000 symbols of Ferry and its packages in .dynsym/.dynstr
//   (~0.4 MiB). Nothing looks Ferry's symbols up by name (no dlsym); the Swift runtime finds
//   metadata and conformances through its sections, not the dynamic symbol table.
// - -z pack-relative-relocs stores the PIE's relative relocations as DT_RELR (~0.95 MiB less
//   .rela.dyn). Needs glibc 2.36 or later at run time (ld.so checks GLIBC_ABI_DT_RELR); -no-pie
//   would save the same without that but would lose ASLR for the binary.
let sizeLinkerFlags = ["-Xlinker", "--no-export-dynamic", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"]

let package = Package(
    name: "Ferry",
    products: [
        .executable(name: "ferry", targets: ["ferry"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // MARK: - C modules
        // The one C target: ioctl numbers and _GNU_SOURCE calls that Swift cannot import.
        // It also holds the TLS pin check, a C callback inside OpenSSL's certificate verification.
        .target(
            name: "CFerryShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .systemLibrary(name: "CLzma", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CXML2", pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),
        // libFuzzer's driver entry (declaration only): used by ferry-fuzz when tools/fuzz builds it
        // with -sanitize=fuzzer; the ordinary build never references it.
        .systemLibrary(name: "CLibFuzzer", path: "Sources/CLibFuzzer"),

        // MARK: - Libraries
        .target(
            name: "FerrySystem",
            dependencies: ["CFerryShims", "CBlkid", systemPackage, logging]
        ),
        .target(
            name: "FerryJSON",
            dependencies: ["FerrySystem"]
        ),
        .target(
            name: "FerryXZ",
            dependencies: ["CLzma", "FerrySystem"]
        ),
        .target(
            name: "FerryZstd",
            dependencies: ["CZstd", "FerrySystem"]
        ),
        .target(
            name: "FerryXML",
            dependencies: ["CXML2"]
        ),
        .target(
            name: "FerryCrypto",
            dependencies: ["COpenSSL", "FerrySystem"]
        ),
        .target(
            name: "FerryNet",
            dependencies: ["CCurl", "CFerryShims", "FerrySystem", logging]
        ),
        .target(
            name: "FerryDelta",
            dependencies: ["FerrySystem", "FerryCrypto", "FerryXZ", logging]
        ),
        .target(
            name: "FerryBundle",
            dependencies: ["FerrySystem", "FerryJSON", "FerryCrypto", "FerryXZ", "FerryZstd", systemPackage, logging]
        ),
        .target(
            name: "FerryBootloader",
            dependencies: ["FerrySystem", "FerryXZ", "FerryCrypto", logging]
        ),
        .target(
            name: "FerryCore",
            dependencies: [
                "FerryXML", "FerrySystem", "FerryJSON", "FerryCrypto", "FerryBootloader", "FerryBundle", "FerryDelta",
                "FerryNet", "FerryZstd", logging,
            ]
        ),
        .target(
            name: "FerryCLI",
            dependencies: [
                "FerryCore", "FerryJSON", "FerryBootloader", "FerryBundle", "FerryCrypto", "FerryDelta", "FerryNet",
                "FerrySystem", "FerryZstd",
                argumentParser, logging,
            ]
        ),

        // MARK: - Executables
        .executableTarget(
            name: "ferry",
            dependencies: ["FerryCLI", logging],
            // Size: the binary must fit an initramfs budget (16 MiB stripped). lld with safe
            // identical-code folding saves ~0.3 MiB over the default linker (measured in
            // tools/check-binary); lld ships with the Swift toolchain.
            linkerSettings: [
                .unsafeFlags(["-use-ld=lld", "-Xlinker", "--icf=safe"]),
                .unsafeFlags(sizeLinkerFlags, .when(configuration: .release)),
            ]
        ),

        // MARK: - Fuzzing (docs/fuzzing.md)
        // One entry function per parser that reads untrusted or on-disk input. Not part of the
        // ferry product: tools/fuzz builds ferry-fuzz with -sanitize=fuzzer; an ordinary build
        // makes it a replayer of files, and FerryFuzzTests replays the committed corpus.
        .target(
            name: "FerryFuzzTargets",
            dependencies: [
                "FerrySystem", "FerryJSON", "FerryXZ", "FerryBundle", "FerryDelta", "FerryBootloader", "FerryCore",
                logging,
            ]
        ),
        .executableTarget(
            name: "ferry-fuzz",
            dependencies: ["FerryFuzzTargets", "FerrySystem", "CLibFuzzer"]
        ),

        // MARK: - Tests
        .target(
            name: "FerryTestSupport",
            dependencies: ["FerrySystem", "FerryCore", "FerryJSON", systemPackage, logging],
            path: "Tests/FerryTestSupport"
        ),
        .testTarget(name: "FerrySystemTests", dependencies: ["FerrySystem", "FerryTestSupport"]),
        .testTarget(
            name: "FerryBundleTests",
            dependencies: ["FerryBundle", "FerryCore", "FerryCrypto", "FerryXZ", "FerryJSON", "FerryTestSupport"]),
        .testTarget(name: "FerryXZTests", dependencies: ["FerryXZ", "FerryZstd", "FerryTestSupport"]),
        .testTarget(name: "FerryJSONTests", dependencies: ["FerryJSON", "FerryTestSupport"]),
        .testTarget(name: "FerryBootloaderTests", dependencies: ["FerryBootloader", "FerryXZ", "FerryTestSupport"]),
        .testTarget(
            name: "FerryDeltaTests", dependencies: ["FerryDelta", "FerryCrypto", "FerrySystem", "FerryTestSupport"]),
        .testTarget(name: "FerryNetTests", dependencies: ["FerryNet", "FerrySystem", "FerryTestSupport"]),
        .testTarget(name: "FerryCryptoTests", dependencies: ["FerryCrypto", "FerryTestSupport"]),
        .testTarget(
            name: "FerryCoreTests",
            dependencies: ["FerryCore", "FerryNet", "FerryJSON", "FerryCrypto", "FerryTestSupport"]),
        .testTarget(
            name: "FerryCLITests",
            dependencies: ["FerryCLI", "FerryJSON", "FerryTestSupport"],
            exclude: ["Snapshots"]
        ),
        .testTarget(name: "FerryFuzzTests", dependencies: ["FerryFuzzTargets", "FerryBundle", "FerryCrypto"]),
        // The install path end to end on image files, without root (so `tools/test --quick` runs
        // it): the crash simulation.
        .testTarget(
            name: "FerryInstallTests",
            dependencies: [
                "FerryBootloader", "FerryBundle", "FerryCore", "FerryCrypto", "FerryJSON", "FerrySystem",
                "FerryTestSupport",
            ]
        ),
        .testTarget(
            name: "FerryIntegrationTests",
            dependencies: ["FerryCore", "FerrySystem", "FerryCLI", "FerryTestSupport"]
        ),
    ]
)

for target in package.targets where target.type != .system && target.name != "CFerryShims" {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    // Optimize Ferry's own code for size in release builds (the binary has a size budget).
    // -function-sections gives each function its own section, so --gc-sections can drop unused
    // internal functions (without it a file's internal code is one .text section, kept whole).
    // -internalize-at-link stops marking every public symbol as used (SHF_GNU_RETAIN), so unused
    // public functions can be dropped too: the ferry executable is the only client of these
    // modules. Together ~0.2 MiB; the packages' code cannot get these flags from here.
    if target.type == .regular || target.type == .executable {
        settings.append(
            .unsafeFlags(
                ["-Osize", "-Xfrontend", "-function-sections", "-Xfrontend", "-internalize-at-link"],
                .when(configuration: .release)))
    }
    target.swiftSettings = settings
}
