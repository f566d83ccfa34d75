import FerryCrypto
import FerryJSON
import FerrySystem

/// The signed description of a bundle (docs/bundle-format.md): what it is for, what it holds,
/// and the hash of every chunk of every payload.
public struct Manifest: Sendable, Equatable {
    public static let formatVersion: Int64 = 1
    /// The largest manifest accepted (read before its signature is checked).
    public static let maximumSize = 1 << 20
    public static let maximumPayloads = 64
    public static let maximumChunks = 1 << 18
    public static let chunkSizeRange: ClosedRange<Int64> = (64 << 10)...(64 << 20)
    public static let maximumPayloadSize: Int64 = 1 << 50

    /// How each chunk of a payload is stored: an .xz stream, a zstd frame, or the bytes as they are.
    public enum Compression: String, Sendable, CaseIterable { case xz, zstd, none }

    /// One chunk of a payload: a fixed decoded size (the last may be shorter), one xz stream.
    public struct Chunk: Sendable, Equatable {
        /// Offset of the chunk's compressed bytes inside the payload member.
        public var offset: Int64
        /// Compressed size.
        public var size: Int64
        /// SHA-256 of the compressed bytes (checked before decoding).
        public var sha256: SHA256Digest
        /// SHA-256 of the decoded bytes (checked before writing).
        public var decodedSHA256: SHA256Digest
    }

    /// A source range of a delta and the SHA-256 of its bytes in the delta's source image.
    public typealias SourceCheck = HashedRange

    /// What a delta payload turns into what (docs/delta-format.md): the delta's own header and
    /// source checks, signed in the manifest so that the device checks its booted slot against
    /// them before it writes anything.
    public struct DeltaInfo: Sendable, Equatable {
        public var sourceSize: Int64
        public var sourceSHA256: SHA256Digest
        public var targetSize: Int64
        public var targetSHA256: SHA256Digest
        public var sourceChecks: [SourceCheck]
        /// The delta's formatVersion (docs/delta-format.md): 2 when the manifest names none, which
        /// keeps such bundles readable by every Ferry that applies deltas. A version-3 delta names
        /// it, so that a Ferry that cannot read it refuses the manifest before writing anything.
        public var formatVersion: Int64

        /// The delta formatVersions this Ferry applies (FerryDelta's `DeltaFormat.readableVersions`).
        public static let formatVersions: ClosedRange<Int64> = 2...3

        public init(
            sourceSize: Int64, sourceSHA256: SHA256Digest, targetSize: Int64, targetSHA256: SHA256Digest,
            sourceChecks: [SourceCheck], formatVersion: Int64 = 2
        ) {
            self.formatVersion = formatVersion
            self.sourceSize = sourceSize
            self.sourceSHA256 = sourceSHA256
            self.targetSize = targetSize
            self.targetSHA256 = targetSHA256
            self.sourceChecks = sourceChecks
        }
    }

    /// What an `app` payload installs: a file of an app's version in the app store.
    public struct AppInfo: Sendable, Equatable {
        public var name: String
        public var version: String
        /// The file name inside `<store>/<name>/<version>/`.
        public var file: String
        /// The file is a tar archive unpacked into `<store>/<name>/<version>/` (docs/apps.md).
        public var unpack: Bool

        public init(name: String, version: String, file: String, unpack: Bool = false) {
            self.name = name
            self.version = version
            self.file = file
            self.unpack = unpack
        }
    }

    /// What a `settings` payload replaces: a JSON or XML document of the settings store.
    public struct SettingsInfo: Sendable, Equatable {
        public var name: String
        /// `json` or `xml`.
        public var format: String
        /// Applied as a JSON merge patch (RFC 7386) to the active document instead of replacing it.
        public var mergePatch: Bool

        public init(name: String, format: String, mergePatch: Bool) {
            self.name = name
            self.format = format
            self.mergePatch = mergePatch
        }
    }

    /// What a `bootloader` payload is: the image of a bootloader the device has once, for a slot
    /// updated with `strategy` (docs/bootloader-updates.md), and the groups it boots.
    public struct BootloaderInfo: Sendable, Equatable {
        /// `mbr-switch`, `gpt-switch`, `raw-fallback` or `emmc-boot`: the device refuses a payload made for
        /// another strategy than its slot's.
        public var strategy: String
        /// The bootnames of the groups this bootloader boots. It is switched before the group
        /// switch, so it must boot the running group (the fallback) and the new one: a device
        /// refuses a payload that does not name every one of its groups.
        public var bootsGroups: [String]

        public init(strategy: String, bootsGroups: [String]) {
            self.strategy = strategy
            self.bootsGroups = bootsGroups
        }
    }

    /// At most this many source checks per delta (as the delta format).
    public static let maximumSourceChecks = 1024

    /// One payload: an image for a slot class, stored as a member of the bundle.
    public struct Payload: Sendable, Equatable {
        /// What a payload is, with what only that kind has: decoded from the manifest once, so
        /// that the device switches over it instead of testing a type string and optionals.
        public enum Kind: Sendable, Equatable {
            /// A full image for a slot class.
            case image
            /// A block delta against the booted slot's image: the images it goes from and to. The
            /// payload's own size, hash and chunks are then those of the delta stream.
            case delta(DeltaInfo)
            /// An app's file or archive for the app store.
            case app(AppInfo)
            /// A settings document for the settings store.
            case settings(SettingsInfo)
            /// A bootloader image for a single-copy slot updated atomically with a strategy.
            case bootloader(BootloaderInfo)

            /// The manifest's `type`.
            public var name: String {
                switch self {
                case .image: "image"
                case .delta: "delta"
                case .app: "app"
                case .settings: "settings"
                case .bootloader: "bootloader"
                }
            }

            /// Whether it is written into a slot (an image or a delta), not into a store.
            public var writesSlot: Bool {
                switch self {
                case .image, .delta, .bootloader: true
                case .app, .settings: false
                }
            }
        }

        public var kind: Kind
        /// The slot class it is written to (`rootfs`, `modem`); for apps and settings, their name.
        public var target: String
        /// The tar member holding it.
        public var member: String
        public var compression: Compression
        /// Decoded size and SHA-256 of the whole decoded payload.
        public var size: Int64
        public var sha256: SHA256Digest
        /// Size of the member (the sum of the chunks' compressed sizes).
        public var storedSize: Int64
        public var chunkSize: Int64
        public var chunks: [Chunk]

        public init(
            kind: Kind, target: String, member: String, compression: Compression, size: Int64, sha256: SHA256Digest,
            storedSize: Int64,
            chunkSize: Int64, chunks: [Chunk]
        ) {
            self.kind = kind
            self.target = target
            self.member = member
            self.compression = compression
            self.size = size
            self.sha256 = sha256
            self.storedSize = storedSize
            self.chunkSize = chunkSize
            self.chunks = chunks
        }

        /// `image`, `delta`, `app` or `settings` (the manifest's `type`).
        public var type: String { kind.name }
        /// The delta's source and target images, for a delta payload.
        public var delta: DeltaInfo? {
            get { if case .delta(let info) = kind { info } else { nil } }
            set { if let newValue { kind = .delta(newValue) } }
        }
        /// The app, version and file, for an app payload.
        public var app: AppInfo? {
            if case .app(let info) = kind { info } else { nil }
        }
        /// The document, its format, replace or merge, for a settings payload.
        public var settings: SettingsInfo? {
            if case .settings(let info) = kind { info } else { nil }
        }
        /// The strategy and groups, for a bootloader payload.
        public var bootloader: BootloaderInfo? {
            if case .bootloader(let info) = kind { info } else { nil }
        }

        /// The size of the image the slot holds once the payload is installed.
        public var imageSize: Int64 { delta?.targetSize ?? size }
        /// The SHA-256 of that image.
        public var imageSHA256: SHA256Digest { delta?.targetSHA256 ?? sha256 }
    }

    /// A new keyring carried by the bundle (keyring rotation).
    public struct KeyringUpdate: Sendable, Equatable {
        public var member: String
        public var size: Int64
        public var sha256: SHA256Digest
        /// Signer certificate fingerprints (SHA-256 of DER, hex) never to trust again.
        public var denyList: [String]
    }

    /// How an encrypted bundle's payloads are encrypted (docs/bundle-format.md, "Encryption").
    public struct Encryption: Sendable, Equatable {
        /// `aes-256-gcm`, the only cipher so far.
        public var cipher: String
        /// The member holding the content key's envelope (CMS EnvelopedData, DER). Not covered
        /// by the signature, so that a bundle can be addressed to other devices without being
        /// signed again: the key check below binds it.
        public var envelope: String
        /// ``ChunkCipher/keyCheck`` of the content key.
        public var keyCheck: SHA256Digest

        public init(cipher: String = ChunkCipher.name, envelope: String = "content-key.p7m", keyCheck: SHA256Digest) {
            self.cipher = cipher
            self.envelope = envelope
            self.keyCheck = keyCheck
        }
    }

    public var compatible: String
    public var version: SemanticVersion
    public var securityVersion: Int64
    /// Seconds since the epoch.
    public var buildTime: Int64
    public var expires: Int64?
    public var description: String?
    public var keyring: KeyringUpdate?
    /// Set for an encrypted bundle: every payload's stored chunks are sealed with the content key.
    public var encryption: Encryption?
    public var payloads: [Payload]

    public init(
        compatible: String, version: SemanticVersion, securityVersion: Int64, buildTime: Int64, expires: Int64?,
        description: String?, keyring: KeyringUpdate?, encryption: Encryption? = nil, payloads: [Payload]
    ) {
        self.encryption = encryption
        self.compatible = compatible
        self.version = version
        self.securityVersion = securityVersion
        self.buildTime = buildTime
        self.expires = expires
        self.description = description
        self.keyring = keyring
        self.payloads = payloads
    }

    // MARK: JSON

    /// The canonical JSON form (sorted keys, pretty-printed): what is signed.
    public func serialized() -> [UInt8] { json.serialized() }

    public var json: JSONValue {
        func digest(_ value: SHA256Digest) -> JSONValue { .string(value.hex) }
        func number(_ value: Int64) -> JSONValue { .number(Double(value)) }
        var object: [String: JSONValue] = [
            "formatVersion": number(Self.formatVersion), "compatible": .string(compatible),
            "version": .string(version.description), "securityVersion": number(securityVersion),
            "buildTime": .string(WallClock.iso8601(buildTime)),
            "payloads": .array(
                payloads.map { payload in
                    var entry: [String: JSONValue] = [
                        "type": .string(payload.type), "target": .string(payload.target),
                        "member": .string(payload.member),
                        "compression": .string(payload.compression.rawValue), "size": number(payload.size),
                        "sha256": digest(payload.sha256), "storedSize": number(payload.storedSize),
                        "chunkSize": number(payload.chunkSize),
                        "chunks": .array(
                            payload.chunks.map { chunk in
                                .object([
                                    "offset": number(chunk.offset), "size": number(chunk.size),
                                    "sha256": digest(chunk.sha256),
                                    "decodedSha256": digest(chunk.decodedSHA256),
                                ])
                            }),
                    ]
                    if let delta = payload.delta {
                        var fields: [String: JSONValue] = [
                            "sourceSize": number(delta.sourceSize), "sourceSha256": digest(delta.sourceSHA256),
                            "targetSize": number(delta.targetSize), "targetSha256": digest(delta.targetSHA256),
                            "sourceChecks": .array(
                                delta.sourceChecks.map { check in
                                    .object([
                                        "offset": number(check.range.lowerBound),
                                        "length": number(Int64(check.range.count)),
                                        "sha256": digest(check.sha256),
                                    ])
                                }),
                        ]
                        if delta.formatVersion != 2 { fields["formatVersion"] = number(delta.formatVersion) }
                        entry["delta"] = .object(fields)
                    }
                    if let settings = payload.settings {
                        entry["settings"] = .object([
                            "name": .string(settings.name), "format": .string(settings.format),
                            "mergePatch": .bool(settings.mergePatch),
                        ])
                    }
                    if let bootloader = payload.bootloader {
                        entry["bootloader"] = .object([
                            "strategy": .string(bootloader.strategy),
                            "bootsGroups": .array(bootloader.bootsGroups.map(JSONValue.string)),
                        ])
                    }
                    if let app = payload.app {
                        var info: [String: JSONValue] = [
                            "name": .string(app.name), "version": .string(app.version), "file": .string(app.file),
                        ]
                        if app.unpack { info["unpack"] = .bool(true) }
                        entry["app"] = .object(info)
                    }
                    return .object(entry)
                }),
        ]
        if let expires { object["expires"] = .string(WallClock.iso8601(expires)) }
        if let description { object["description"] = .string(description) }
        if let encryption {
            object["encryption"] = .object([
                "cipher": .string(encryption.cipher), "envelope": .string(encryption.envelope),
                "keyCheck": digest(encryption.keyCheck),
            ])
        }
        if let keyring {
            object["keyring"] = .object([
                "member": .string(keyring.member), "size": number(keyring.size), "sha256": digest(keyring.sha256),
                "denyList": .array(keyring.denyList.map(JSONValue.string)),
            ])
        }
        return .object(object)
    }

    /// Parses and checks a manifest (after its signatures were verified).
    /// - Throws: `.bundleInvalid` naming the key, `.limitExceeded` for absurd sizes or counts.
    public static func parse(_ bytes: [UInt8]) throws(FerryError) -> Manifest {
        guard bytes.count <= maximumSize else {
            throw FerryError(
                code: .limitExceeded, message: "the manifest is \(bytes.count) bytes, more than \(maximumSize)")
        }
        let file = "manifest.json"
        var root = try StrictObject(
            JSONValue.parse(bytes, what: file, code: .bundleInvalid), path: "", file: file, code: .bundleInvalid)
        let version = try root.integer("formatVersion", in: 1...Int64(Int32.max)) ?? 0
        guard version == formatVersion else {
            throw root.invalid("formatVersion", "is \(version); this Ferry reads bundle format \(formatVersion)")
        }
        let compatible = try root.requiredString("compatible")
        let versionText = try root.requiredString("version")
        guard let semver = SemanticVersion(versionText) else {
            throw root.invalid("version", "'\(versionText)' is not a semantic version")
        }
        let securityVersion = try root.integer("securityVersion", in: 0...Int64(UInt32.max)) ?? 0
        let buildTime = try time(&root, "buildTime", required: true)!
        let expires = try time(&root, "expires", required: false)
        let description = try root.string("description")
        var keyring: KeyringUpdate? = nil
        if var object = try root.object("keyring") {
            let member = try object.requiredString("member")
            try checkMemberName(member, object: object, key: "member")
            guard let size = try object.integer("size", in: 1...(1 << 20)) else {
                throw object.invalid("size", "is required")
            }
            keyring = KeyringUpdate(
                member: member, size: size, sha256: try object.digest("sha256"),
                denyList: try object.stringArray("denyList"))
            for (index, entry) in keyring!.denyList.enumerated() where SHA256Digest(hex: entry) == nil {
                throw object.invalid("denyList[\(index)]", "must be a SHA-256 fingerprint (64 hex digits)")
            }
            try object.finish()
        }
        var encryption: Encryption? = nil
        if var object = try root.object("encryption") {
            let cipher = try object.requiredString("cipher")
            guard cipher == ChunkCipher.name else {
                throw object.invalid("cipher", "'\(cipher)' is not a cipher this Ferry knows (\(ChunkCipher.name))")
            }
            let envelope = try object.requiredString("envelope")
            try checkMemberName(envelope, object: object, key: "envelope")
            guard envelope != keyring?.member else { throw object.invalid("envelope", "'\(envelope)' is used twice") }
            encryption = Encryption(cipher: cipher, envelope: envelope, keyCheck: try object.digest("keyCheck"))
            try object.finish()
        }
        guard case .array(let items)? = root.raw("payloads") else { throw root.invalid("payloads", "must be an array") }
        guard items.count <= maximumPayloads else {
            throw FerryError(
                code: .limitExceeded, message: "manifest.json: \(items.count) payloads, more than \(maximumPayloads)")
        }
        var payloads: [Payload] = []
        var totalChunks = 0
        for (index, item) in items.enumerated() {
            var object = try StrictObject(item, path: "payloads[\(index)]", file: file, code: .bundleInvalid)
            let payload = try parsePayload(&object, totalChunks: &totalChunks, sealed: encryption != nil)
            try object.finish()
            if payloads.contains(where: { $0.member == payload.member }) || payload.member == keyring?.member
                || payload.member == encryption?.envelope
            {
                throw object.invalid("member", "'\(payload.member)' is used twice")
            }
            payloads.append(payload)
        }
        try root.finish()
        return Manifest(
            compatible: compatible, version: semver, securityVersion: securityVersion, buildTime: buildTime,
            expires: expires,
            description: description, keyring: keyring, encryption: encryption, payloads: payloads)
    }

    /// - Parameter sealed: the bundle is encrypted (every stored chunk carries a tag).
    private static func parsePayload(_ object: inout StrictObject, totalChunks: inout Int, sealed: Bool)
        throws(FerryError) -> Payload
    {
        let type = try object.requiredString("type")
        guard ["image", "delta", "app", "settings", "bootloader"].contains(type) else {
            throw object.invalid(
                "type", "'\(type)' is not a payload type this Ferry knows (image, delta, app, settings, bootloader)")
        }
        let target = try object.requiredString("target")
        let member = try object.requiredString("member")
        try checkMemberName(member, object: object, key: "member")
        let compressionName = try object.requiredString("compression")
        guard let compression = Compression(rawValue: compressionName) else {
            throw object.invalid("compression", "must be xz, zstd or none, not '\(compressionName)'")
        }
        guard let size = try object.integer("size", in: 0...maximumPayloadSize) else {
            throw object.invalid("size", "is required")
        }
        let sha256 = try object.digest("sha256")
        guard let storedSize = try object.integer("storedSize", in: 0...maximumPayloadSize) else {
            throw object.invalid("storedSize", "is required")
        }
        guard let chunkSize = try object.integer("chunkSize", in: chunkSizeRange) else {
            throw object.invalid("chunkSize", "is required")
        }
        guard case .array(let items)? = object.raw("chunks") else { throw object.invalid("chunks", "must be an array") }
        let expectedCount = Int((size + chunkSize - 1) / chunkSize)
        guard items.count == expectedCount else {
            throw object.invalid(
                "chunks",
                "has \(items.count) entries, but \(size) bytes in chunks of \(chunkSize) need \(expectedCount)")
        }
        totalChunks += items.count
        guard totalChunks <= maximumChunks else {
            throw FerryError(code: .limitExceeded, message: "manifest.json: more than \(maximumChunks) chunks")
        }
        var chunks: [Chunk] = []
        chunks.reserveCapacity(items.count)
        var nextOffset: Int64 = 0
        for (index, item) in items.enumerated() {
            var entry = try StrictObject(
                item, path: object.keyPath("chunks[\(index)]"), file: object.file, code: .bundleInvalid)
            guard let offset = try entry.integer("offset", in: 0...maximumPayloadSize),
                let chunkStored = try entry.integer("size", in: 1...maximumPayloadSize)
            else { throw entry.invalid("offset", "offset and size are required") }
            guard offset == nextOffset else {
                throw entry.invalid(
                    "offset", "is \(offset), but the chunks must follow each other (expected \(nextOffset))")
            }
            if compression == .none {
                let decoded = index == items.count - 1 ? size - chunkSize * Int64(index) : chunkSize
                guard chunkStored == decoded + (sealed ? Int64(ChunkCipher.tagSize) : 0) else {
                    throw entry.invalid(
                        "size",
                        sealed
                            ? "must equal the decoded size and the 16-byte tag for compression none"
                            : "must equal the decoded size for compression none")
                }
            } else if chunkStored > Int64(Payload.storedBound(ofChunkSize: Int(chunkSize))) {
                throw entry.invalid("size", "\(chunkStored) bytes is absurd for a chunk of \(chunkSize) decoded bytes")
            }
            nextOffset = offset + chunkStored
            chunks.append(
                Chunk(
                    offset: offset, size: chunkStored, sha256: try entry.digest("sha256"),
                    decodedSHA256: try entry.digest("decodedSha256")))
            try entry.finish()
        }
        guard nextOffset == storedSize else {
            throw object.invalid("storedSize", "is \(storedSize), but the chunks add up to \(nextOffset)")
        }
        var delta: DeltaInfo? = nil
        if var info = try object.object("delta") {
            guard type == "delta" else { throw object.invalid("delta", "belongs to payloads of type delta only") }
            delta = try parseDelta(&info)
            try info.finish()
        } else if type == "delta" {
            throw object.invalid("delta", "is required for a payload of type delta")
        }
        var app: AppInfo? = nil
        if var info = try object.object("app") {
            guard type == "app" else { throw object.invalid("app", "belongs to payloads of type app only") }
            app = AppInfo(
                name: try info.requiredString("name"), version: try info.requiredString("version"),
                file: try info.requiredString("file"))
            for (key, value) in [("name", app!.name), ("version", app!.version), ("file", app!.file)] {
                try checkMemberName(value, object: info, key: key)
            }
            guard app!.name == target else { throw info.invalid("name", "must equal the payload's target") }
            app!.unpack = try info.bool("unpack") ?? false
            try info.finish()
        } else if type == "app" {
            throw object.invalid("app", "is required for a payload of type app")
        }
        var settings: SettingsInfo? = nil
        if var info = try object.object("settings") {
            guard type == "settings" else {
                throw object.invalid("settings", "belongs to payloads of type settings only")
            }
            let name = try info.requiredString("name")
            try checkMemberName(name, object: info, key: "name")
            let format = try info.requiredString("format")
            guard format == "json" || format == "xml" else { throw info.invalid("format", "must be json or xml") }
            settings = SettingsInfo(name: name, format: format, mergePatch: try info.bool("mergePatch") ?? false)
            guard name == target else { throw info.invalid("name", "must equal the payload's target") }
            try info.finish()
        } else if type == "settings" {
            throw object.invalid("settings", "is required for a payload of type settings")
        }
        var bootloader: BootloaderInfo? = nil
        if var info = try object.object("bootloader") {
            guard type == "bootloader" else {
                throw object.invalid("bootloader", "belongs to payloads of type bootloader only")
            }
            let groups = try info.stringArray("bootsGroups")
            guard !groups.isEmpty else {
                throw info.invalid(
                    "bootsGroups", "is required: the groups the new bootloader boots (every group of the device)")
            }
            bootloader = BootloaderInfo(strategy: try info.requiredString("strategy"), bootsGroups: groups)
            try info.finish()
        } else if type == "bootloader" {
            throw object.invalid("bootloader", "is required for a payload of type bootloader")
        }
        let kind: Payload.Kind =
            delta.map { .delta($0) } ?? app.map { .app($0) } ?? settings.map { .settings($0) }
            ?? bootloader.map { .bootloader($0) } ?? .image
        return Payload(
            kind: kind, target: target, member: member, compression: compression, size: size, sha256: sha256,
            storedSize: storedSize, chunkSize: chunkSize, chunks: chunks)
    }

    private static func parseDelta(_ object: inout StrictObject) throws(FerryError) -> DeltaInfo {
        guard let sourceSize = try object.integer("sourceSize", in: 1...maximumPayloadSize),
            let targetSize = try object.integer("targetSize", in: 0...maximumPayloadSize)
        else { throw object.invalid("sourceSize", "sourceSize and targetSize are required") }
        let sourceHash = try object.digest("sourceSha256")
        let targetHash = try object.digest("targetSha256")
        let version = try object.integer("formatVersion", in: 0...Int64(UInt32.max)) ?? 2
        guard DeltaInfo.formatVersions.contains(version) else {
            throw object.invalid(
                "formatVersion",
                "is \(version), a delta format this Ferry does not read (it reads \(DeltaInfo.formatVersions.lowerBound) to \(DeltaInfo.formatVersions.upperBound))"
            )
        }
        guard case .array(let items)? = object.raw("sourceChecks") else {
            throw object.invalid("sourceChecks", "must be an array")
        }
        guard items.count <= maximumSourceChecks else {
            throw FerryError(
                code: .limitExceeded,
                message: "manifest.json: \(items.count) delta source checks, more than \(maximumSourceChecks)")
        }
        var checks: [SourceCheck] = []
        var end: Int64 = 0
        for (index, item) in items.enumerated() {
            var entry = try StrictObject(
                item, path: object.keyPath("sourceChecks[\(index)]"), file: object.file, code: .bundleInvalid)
            guard let offset = try entry.integer("offset", in: 0...sourceSize),
                let length = try entry.integer("length", in: 1...sourceSize),
                offset >= end, length <= sourceSize - offset
            else {
                throw entry.invalid(
                    "offset", "offset and length must name a range inside the source, after the previous one")
            }
            checks.append(SourceCheck(range: offset..<(offset + length), sha256: try entry.digest("sha256")))
            end = offset + length
            try entry.finish()
        }
        return DeltaInfo(
            sourceSize: sourceSize, sourceSHA256: sourceHash, targetSize: targetSize, targetSHA256: targetHash,
            sourceChecks: checks, formatVersion: version)
    }

    private static func time(_ object: inout StrictObject, _ key: String, required: Bool) throws(FerryError) -> Int64? {
        guard let text = try object.string(key) else {
            if required { throw object.invalid(key, "is required") }
            return nil
        }
        guard let seconds = WallClock.parseISO8601(text) else {
            throw object.invalid(key, "'\(text)' is not a UTC time like 2026-11-25T13:00:00Z")
        }
        return seconds
    }

    /// Member names are plain file names: no directories, no `..`, nothing a tar extraction could misuse.
    static func checkMemberName(_ name: String, object: StrictObject, key: String) throws(FerryError) {
        guard PlainName.isPlain(name), !name.hasPrefix("."), name.count <= 100, !name.hasPrefix("manifest.json") else {
            throw object.invalid(
                key, "'\(name)' is not a plain member name (letters, digits, '.', '_', '-'; not starting with '.')")
        }
    }
}

extension StrictObject {
    /// A required SHA-256 in hex.
    /// - Throws: the object's error for a missing key or anything but 64 hex digits.
    mutating func digest(_ key: String) throws(FerryError) -> SHA256Digest {
        let text = try requiredString(key)
        guard let value = SHA256Digest(hex: text) else { throw invalid(key, "must be 64 hex digits") }
        return value
    }
}
