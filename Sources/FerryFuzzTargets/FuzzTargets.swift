import FerrySystem

/// The fuzz targets (docs/fuzzing.md): one entry function per parser that reads untrusted or
/// on-disk input.
///
/// Each function takes one input, runs it through the parser the way Ferry does, and returns.
/// A `FerryError` is the expected outcome of a bad input and is swallowed: only a crash (a trap,
/// a failed precondition, a sanitizer report) or a hang is a finding. Some targets also check a
/// property that must hold for every accepted input (a parsed document serializes and parses back
/// to the same value); a violation traps like a crash.
///
/// The same functions run under libFuzzer (`tools/fuzz`, the `ferry-fuzz` executable built with
/// `-sanitize=fuzzer`) and as ordinary tests over the committed corpus (`FerryFuzzTests`).
public struct FuzzTarget: Sendable {
    public let name: String
    /// What the target feeds its input to.
    public let summary: String
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void

    public init(name: String, summary: String, run: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.name = name
        self.summary = summary
        self.run = run
    }

    /// Runs the target on bytes (a corpus file).
    public func run(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { run($0) }
    }
}

public enum FuzzTargets {
    /// Every target, by name.
    public static let all: [FuzzTarget] = [
        FuzzTarget(
            name: "tar", summary: "bundle container: TarReader (regular files only) over a byte stream",
            run: ContainerTargets.tar),
        FuzzTarget(
            name: "bundle",
            summary: "BundleReader: manifest and signature members, manifest parsing, payload members and chunks",
            run: ContainerTargets.bundle),
        FuzzTarget(
            name: "signature",
            summary: "a detached CMS signature over a fixed manifest, checked by TrustPolicy against a fixed keyring",
            run: SignatureTargets.signature),
        FuzzTarget(
            name: "manifest", summary: "Manifest.parse (manifest.json), with a serialize/parse round trip",
            run: ManifestTargets.manifest),
        FuzzTarget(
            name: "chunk-table",
            summary: "Manifest.parse of a fixed manifest whose payload list is the input (chunk tables, delta info)",
            run: ManifestTargets.chunkTable),
        FuzzTarget(
            name: "delta",
            summary: "DeltaFormat header, source checks and operations; DeltaApplier against a fixed 64 KiB source",
            run: DeltaTargets.delta),
        FuzzTarget(
            name: "uboot-env",
            summary: "UBootEnvironmentCodec.decode of one or two copies (first byte: layout), copy choice, round trip",
            run: BootloaderTargets.ubootEnvironment),
        FuzzTarget(
            name: "grubenv", summary: "GRUBEnvironment.decode of a 1024-byte block, round trip",
            run: BootloaderTargets.grubEnvironment),
        FuzzTarget(
            name: "fw-env-config", summary: "FWEnvConfig.parse (fw_env.config)", run: BootloaderTargets.fwEnvConfig),
        FuzzTarget(
            name: "system-config", summary: "SystemConfiguration.parse (system.json)",
            run: CoreTargets.systemConfiguration),
        FuzzTarget(
            name: "state",
            summary: "StateStore readers and writers on every state file (slots, boot, trust, install, group-parts)",
            run: CoreTargets.stateFiles),
        FuzzTarget(
            name: "update-index", summary: "UpdateIndex.parse (index.json), with a serialize/parse round trip",
            run: ManifestTargets.updateIndex),
        FuzzTarget(
            name: "settings-json",
            summary:
                "JSONValue.parse of a settings document and a merge patch (first byte: split), mergePatched, round trip",
            run: SettingsTargets.json),
        FuzzTarget(
            name: "settings-xml", summary: "SettingsStore.candidate for XML (libxml2; odd first byte: also an XSD)",
            run: SettingsTargets.xml),
        FuzzTarget(
            name: "app-archive",
            summary: "app archives: TarReader with directories and links, AppStore.stageArchive into a temporary store",
            run: AppTargets.appArchive),
    ]

    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}

/// A failed property of an accepted input: trap with a message (libFuzzer saves the input).
func violated(_ target: String, _ message: @autoclosure () -> String) -> Never {
    fatalError("fuzz target \(target): \(message())")
}
