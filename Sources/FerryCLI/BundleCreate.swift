import ArgumentParser
import FerryBundle
import FerryCore
import FerryCrypto
import FerryDelta
import FerryJSON
import FerrySystem
import FerryZstd
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension FerryCommand.Bundle {
    /// `ferry bundle create`.
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a signed bundle from build outputs (host side).",
            discussion: """
                Images may be raw, .xz or .zst; Ferry (re)compresses them into chunks of a fixed \
                decoded size, each one xz stream (or zstd frame, --codec zstd), on all cores. Give \
                --cert and --key once per signer, in pairs.
                """)

        @Option(help: "The device type the bundle is for (matches system.json's compatible).")
        var compatible: String
        @Option(help: ArgumentHelp("The release version (Semantic Versioning).", valueName: "semver"))
        var version: String
        @Option(
            name: .customLong("security-version"),
            help: "The security version (devices never go below the highest they confirmed).")
        var securityVersion: Int64 = 0
        @Option(
            help: ArgumentHelp("When the bundle stops being accepted (UTC, 2027-01-01T00:00:00Z).", valueName: "time"))
        var expires: String?
        @Option(help: "A free-form description.")
        var description: String?
        @Option(
            name: .customLong("cert"),
            help: ArgumentHelp("A signer's certificate (PEM); repeat per signer.", valueName: "pem"))
        var certificates: [String] = []
        @Option(
            name: .customLong("key"),
            help: ArgumentHelp("That signer's private key (PEM), read in place.", valueName: "pem"))
        var keys: [String] = []
        @Option(
            name: .customLong("image"),
            help: ArgumentHelp("An image for a slot class: <class>=<file>; repeat.", valueName: "class=file"))
        var images: [String] = []
        @Option(
            name: .customLong("bootloader"),
            help: ArgumentHelp(
                "A bootloader image for a single-copy slot updated atomically: <class>=<file> (docs/bootloader-updates.md).",
                valueName: "class=file"))
        var bootloaders: [String] = []
        @Option(
            name: .customLong("bootloader-strategy"),
            help: ArgumentHelp(
                "The strategy of the devices' bootloader slot: mbr-switch, gpt-switch, raw-fallback or emmc-boot.",
                valueName: "strategy"))
        var bootloaderStrategy: String?
        @Option(
            name: .customLong("boots-groups"),
            help: ArgumentHelp(
                "The slot groups the --bootloader image boots, comma-separated (every group of the devices: it is switched before them).",
                valueName: "A,B"))
        var bootsGroups: String?
        @Option(
            name: .customLong("app"),
            help: ArgumentHelp(
                "An app-only update: <name>=<file> (an app package or container image archive); repeat.",
                valueName: "name=file"))
        var apps: [String] = []
        @Option(
            name: .customLong("app-version"),
            help: ArgumentHelp("The version the --app files install as (default: --version).", valueName: "version"))
        var appVersion: String?
        @Flag(
            name: .customLong("app-unpack"),
            help:
                "The --app files are tar archives, unpacked into the app's version folder on the device (entries and links checked to stay inside it)."
        )
        var appUnpack = false
        @Option(
            name: .customLong("settings"),
            help: ArgumentHelp("A settings update: <name>=<file.json|file.xml>; repeat.", valueName: "name=file"))
        var settings: [String] = []
        @Flag(
            name: .customLong("merge-patch"),
            help: "Apply the JSON --settings as JSON merge patches (RFC 7386) to the device's documents.")
        var mergePatch = false
        @Option(
            name: .customLong("delta-from"),
            help: ArgumentHelp(
                "Ship the --image of a class as a block delta from this older image: <class>=<file>; repeat.",
                valueName: "class=file"))
        var deltaFrom: [String] = []
        @Option(
            name: .customLong("delta-format-version"),
            help: ArgumentHelp(
                "The deltas' format: 3 (approximate matches), or 2 for devices whose Ferry predates it.",
                valueName: "2|3"))
        var deltaFormatVersion = Int(DeltaFormat.formatVersion)
        @Option(
            name: .customLong("chunk-size"),
            help: ArgumentHelp("Decoded bytes per chunk (K/M suffix).", valueName: "size"))
        var chunkSize: String = "4M"
        @Option(help: "Compression threads (default: all cores).")
        var threads: Int = ProcessEnvironment.processorCount
        @Option(name: .customLong("xz-preset"), help: "xz compression level 0-9 (the same as --level with --codec xz).")
        var preset: Int = 6
        @Option(
            help: ArgumentHelp(
                "The payload codec: xz (smallest; decodes at tens of MB/s on a Cortex-A core) or zstd (decodes several times faster, slightly larger) — docs/install.md.",
                valueName: "xz|zstd"))
        var codec: Manifest.Compression = .xz
        @Option(
            help: ArgumentHelp(
                "The codec's level: xz 0-9 (default 6), zstd 1-19 (default 19; decoding speed does not depend on it).",
                valueName: "n"))
        var level: Int?
        @Flag(name: .customLong("no-compress"), help: "Store the images uncompressed (still chunked and hashed).")
        var noCompress = false
        @Option(
            name: .customLong("new-keyring"),
            help: ArgumentHelp(
                "A keyring (PEM) the devices adopt after this bundle (keyring rotation).", valueName: "pem"))
        var newKeyring: String?
        @Option(
            name: .customLong("deny"),
            help: ArgumentHelp(
                "A signer certificate fingerprint to deny from then on (with --new-keyring).", valueName: "sha256"))
        var denyList: [String] = []
        @Option(
            name: .customLong("encrypt-to"),
            help: ArgumentHelp(
                "Encrypt the payloads to a recipient certificate (PEM, RSA or EC key: a device's, or a fleet's); repeat (docs/encryption.md).",
                valueName: "pem"))
        var encryptTo: [String] = []
        @Option(
            name: .customLong("rsa-padding"),
            help: ArgumentHelp(
                "How the content key is encrypted to RSA recipients: oaep (RSA-OAEP, SHA-256), or pkcs1 (PKCS #1 v1.5) for key providers that decrypt nothing else, such as tpm2-openssl 1.1.1.",
                valueName: "oaep|pkcs1"))
        var rsaPadding: Envelope.RSAPadding = .oaep
        @Option(name: .shortAndLong, help: "The bundle file to write.")
        var output: String
        @Flag(help: "Log debug messages.")
        var verbose = false

        func validate() throws {
            guard SemanticVersion(version) != nil else {
                throw ValidationError("--version '\(version)' is not a semantic version")
            }
            guard !certificates.isEmpty, certificates.count == keys.count else {
                throw ValidationError("give --cert and --key in pairs, at least one pair")
            }
            guard !images.isEmpty || !apps.isEmpty || !settings.isEmpty || !bootloaders.isEmpty else {
                throw ValidationError(
                    "give at least one --image <class>=<file>, --bootloader <class>=<file>, --app <name>=<file> or --settings <name>=<file>"
                )
            }
            if !bootloaders.isEmpty {
                guard let strategy = bootloaderStrategy,
                    ["mbr-switch", "gpt-switch", "raw-fallback", "emmc-boot"].contains(strategy)
                else {
                    throw ValidationError(
                        "--bootloader needs --bootloader-strategy mbr-switch, gpt-switch, raw-fallback or emmc-boot")
                }
                guard let groups = bootsGroups, !groups.split(separator: ",").isEmpty else {
                    throw ValidationError(
                        "--bootloader needs --boots-groups: the slot groups the new bootloader boots (for example A,B)")
                }
            } else if bootloaderStrategy != nil || bootsGroups != nil {
                throw ValidationError("--bootloader-strategy and --boots-groups go with --bootloader")
            }
            if mergePatch && settings.isEmpty { throw ValidationError("--merge-patch goes with --settings") }
            for image in images + apps + settings + bootloaders
            where !image.contains("=") || image.hasPrefix("=") || image.hasSuffix("=") {
                throw ValidationError("'\(image)' is not <name>=<file>")
            }
            if appVersion != nil && apps.isEmpty { throw ValidationError("--app-version goes with --app") }
            if appUnpack && apps.isEmpty { throw ValidationError("--app-unpack goes with --app") }
            for delta in deltaFrom {
                guard let equals = delta.firstIndex(of: "="), equals != delta.startIndex,
                    delta.index(after: equals) != delta.endIndex
                else {
                    throw ValidationError("--delta-from '\(delta)' is not <class>=<file>")
                }
                let slotClass = delta[..<equals]
                guard images.contains(where: { $0.hasPrefix(slotClass + "=") }) else {
                    throw ValidationError("--delta-from '\(delta)' has no --image \(slotClass)=<new image> to go to")
                }
                guard deltaFrom.filter({ $0.hasPrefix(slotClass + "=") }).count == 1 else {
                    throw ValidationError("--delta-from names slot class '\(slotClass)' twice")
                }
            }
            guard DeltaFormat.readableVersions.contains(UInt32(clamping: deltaFormatVersion)) else {
                throw ValidationError("--delta-format-version must be 2 or 3")
            }
            if deltaFormatVersion != Int(DeltaFormat.formatVersion) && deltaFrom.isEmpty {
                throw ValidationError("--delta-format-version goes with --delta-from")
            }
            guard Self.parseSize(chunkSize) != nil else {
                throw ValidationError("--chunk-size '\(chunkSize)' is not a size like 4M")
            }
            guard (0...9).contains(preset) else { throw ValidationError("--xz-preset must be 0 to 9") }
            guard codec != .none else { throw ValidationError("--codec is xz or zstd (--no-compress stores as is)") }
            if let level {
                if codec == .zstd && !ZstdChunkCodec.levels.contains(level) {
                    throw ValidationError("--level must be 1 to 19 for zstd")
                }
                if codec == .xz && !(0...9).contains(level) { throw ValidationError("--level must be 0 to 9 for xz") }
            }
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            if let expires, WallClock.parseISO8601(expires) == nil {
                throw ValidationError("--expires '\(expires)' is not a UTC time like 2027-01-01T00:00:00Z")
            }
            if !denyList.isEmpty && newKeyring == nil { throw ValidationError("--deny goes with --new-keyring") }
        }

        static func parseSize(_ text: String) -> Int? {
            let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
            if let last = text.last, let unit = units[Character(last.uppercased())] {
                return Int(text.dropLast()).map { $0 * unit }
            }
            return Int(text)
        }

        /// `json` or `xml`, by the file's extension or else its first non-blank byte.
        static func settingsFormat(_ path: String) throws(FerryError) -> String {
            if path.hasSuffix(".json") { return "json" }
            if path.hasSuffix(".xml") { return "xml" }
            let bytes = try TextFile.readBytes(path, limit: 16 << 20)
            return bytes.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) } == UInt8(ascii: "<") ? "xml" : "json"
        }

        static func split(_ pair: String) -> (String, String) {
            let equals = pair.firstIndex(of: "=")!
            return (String(pair[..<equals]), Paths.absolute(String(pair[pair.index(after: equals)...])))
        }

        /// Writes the delta from image `from` to image `to` into `path`, and describes it for the manifest.
        static func makeDelta(
            slotClass: String, from: String, to: String, into path: String, formatVersion: Int
        ) throws(FerryError) -> BundleWriter.Image {
            let sink = try FileByteSink(path: path)
            var options = DeltaGenerator.Options()
            options.formatVersion = UInt32(formatVersion)
            let statistics = try DeltaGenerator(
                source: try BlockDevice.openForReading(from), target: try BlockDevice.openForReading(to),
                options: options
            )
            .create { (bytes) throws(FerryError) in try sink.write(bytes) }
            try sink.finish()
            let (header, checks) = try DeltaFormat.readPreamble(try FileByteSource(path: path))
            Terminal.writeOutput(
                "Delta for \(slotClass): \(statistics.deltaBytes) bytes for a \(header.targetSize)-byte image.\n")
            let info = Manifest.DeltaInfo(
                sourceSize: header.sourceSize, sourceSHA256: header.sourceSHA256, targetSize: header.targetSize,
                targetSHA256: header.targetSHA256,
                sourceChecks: checks, formatVersion: Int64(header.formatVersion))
            return BundleWriter.Image(slotClass: slotClass, path: path, delta: info)
        }

        /// Refuses, before any work, what every device would refuse, with the device's message:
        /// an expired bundle, app and settings names that are not plain, settings documents
        /// that are not well-formed.
        func checkAsDevicesWould() throws(FerryError) {
            if let expires = expires.flatMap(WallClock.parseISO8601) {
                try TrustPolicy.checkExpiry(expires, of: "the bundle", at: WallClock.now())
            }
            for app in apps {
                let (name, path) = Self.split(app)
                try AppStore.checkName(name, what: "app name")
                try AppStore.checkName(appVersion ?? version, what: "app version")
                try AppStore.checkName(String(path.split(separator: "/").last ?? "app"), what: "app file name")
            }
            for document in settings {
                let (name, path) = Self.split(document)
                let format = try Self.settingsFormat(path)
                try SettingsStore.checkWellFormed(
                    try TextFile.readBytes(path, limit: SettingsStore.maximumSize), name: name, format: format,
                    mergePatch: mergePatch && format == "json")
            }
        }

        func run() async throws {
            MemoryPolicy.applyForHost()
            try checkAsDevicesWould()
            let output = Paths.absolute(self.output)
            // Bootloaders first: a device switches them before anything else (docs/bootloader-updates.md).
            var bundleImages: [BundleWriter.Image] = bootloaders.map { pair in
                let (slotClass, path) = Self.split(pair)
                let groups = (bootsGroups ?? "").split(separator: ",").map { String($0).trimmingPrefix(" ") }.map(
                    String.init)
                return BundleWriter.Image(
                    slotClass: slotClass, path: path,
                    bootloader: Manifest.BootloaderInfo(strategy: bootloaderStrategy ?? "", bootsGroups: groups))
            }
            var temporaries: [String] = []
            defer { for path in temporaries { FileSystem.removeIfPossible(path) } }
            for image in images {
                let (slotClass, path) = Self.split(image)
                guard let from = deltaFrom.first(where: { $0.hasPrefix(slotClass + "=") }).map({ Self.split($0).1 })
                else {
                    bundleImages.append(BundleWriter.Image(slotClass: slotClass, path: path))
                    continue
                }
                let deltaPath = "\(output).\(slotClass).delta.tmp-\(FileSystem.processID)"
                temporaries.append(deltaPath)
                bundleImages.append(
                    try Self.makeDelta(
                        slotClass: slotClass, from: from, to: path, into: deltaPath, formatVersion: deltaFormatVersion))
            }
            for app in apps {
                let (name, path) = Self.split(app)
                let file = String(path.split(separator: "/").last ?? "app")
                bundleImages.append(
                    BundleWriter.Image(
                        slotClass: name, path: path,
                        app: Manifest.AppInfo(name: name, version: appVersion ?? version, file: file, unpack: appUnpack)
                    ))
            }
            for document in settings {
                let (name, path) = Self.split(document)
                let format = try Self.settingsFormat(path)
                bundleImages.append(
                    BundleWriter.Image(
                        slotClass: name, path: path,
                        settings: Manifest.SettingsInfo(
                            name: name, format: format, mergePatch: mergePatch && format == "json")))
            }
            var options = BundleWriter.Options(
                compatible: compatible, version: SemanticVersion(version)!, images: bundleImages,
                signers: zip(certificates, keys).map { BundleWriter.Signer(certificate: $0, key: $1) })
            options.securityVersion = securityVersion
            options.expires = expires.flatMap(WallClock.parseISO8601)
            options.description = description
            options.chunkSize = Self.parseSize(chunkSize)!
            options.threads = threads
            options.preset = codec == .xz ? level ?? preset : preset
            options.codec = codec
            options.zstdLevel = codec == .zstd ? level ?? ZstdChunkCodec.defaultLevel : ZstdChunkCodec.defaultLevel
            options.compress = !noCompress
            options.newKeyring = newKeyring
            options.denyList = denyList
            options.recipients = encryptTo.map(Paths.absolute)
            options.rsaPadding = rsaPadding
            let manifest = try BundleWriter.create(options, output: output, logger: Logger(label: "ferry.bundle"))
            let stored = manifest.payloads.reduce(Int64(0)) { $0 + $1.storedSize }
            let decoded = manifest.payloads.reduce(Int64(0)) { $0 + $1.size }
            Terminal.writeOutput(
                "Wrote \(self.output): \(manifest.compatible) \(manifest.version), \(manifest.payloads.count) payload(s), "
                    + "\(decoded) bytes stored as \(stored), \(certificates.count) signature(s)"
                    + (encryptTo.isEmpty ? "" : ", encrypted to \(encryptTo.count) recipient certificate file(s)")
                    + ".\n")
        }
    }
}

extension Manifest.Compression: ExpressibleByArgument {}
