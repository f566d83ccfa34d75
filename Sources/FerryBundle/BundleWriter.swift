import FerryCrypto
import FerrySystem
import FerryXZ
import FerryZstd
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Host side: turns build outputs into a signed bundle (docs/bundle-format.md).
public enum BundleWriter {
    /// One image to carry: which slot class it is for and where it is.
    public struct Image: Sendable {
        public var slotClass: String
        public var path: String
        /// Set when `path` is a delta (docs/delta-format.md) rather than an image: what it turns
        /// into what. Deltas are stored uncompressed (their data is LZMA2 already), chunked and hashed.
        public var delta: Manifest.DeltaInfo?
        /// Set when `path` is an app file (an app-only update) rather than an image; `slotClass`
        /// is then the app's name.
        public var app: Manifest.AppInfo?
        /// Set when `path` is a settings document; `slotClass` is then the settings name.
        public var settings: Manifest.SettingsInfo?
        /// Set when `path` is a bootloader image for a slot updated with a strategy.
        public var bootloader: Manifest.BootloaderInfo?

        public init(
            slotClass: String, path: String, delta: Manifest.DeltaInfo? = nil, app: Manifest.AppInfo? = nil,
            settings: Manifest.SettingsInfo? = nil, bootloader: Manifest.BootloaderInfo? = nil
        ) {
            self.slotClass = slotClass
            self.path = path
            self.delta = delta
            self.app = app
            self.settings = settings
            self.bootloader = bootloader
        }
    }

    /// Decoded bytes per chunk of a delta payload: small, so that a resumed delta install reads
    /// little twice.
    public static let deltaChunkSize = 1 << 20

    /// A signer's certificate and private key (PEM files; the key is read in place, never copied).
    public struct Signer: Sendable {
        public var certificate: String
        public var key: String
        public init(certificate: String, key: String) {
            self.certificate = certificate
            self.key = key
        }
    }

    public struct Options: Sendable {
        public var compatible: String
        public var version: SemanticVersion
        public var securityVersion: Int64 = 0
        public var expires: Int64?
        public var description: String?
        public var images: [Image]
        public var signers: [Signer]
        /// Decoded bytes per chunk (one xz stream each).
        public var chunkSize: Int = 4 << 20
        public var compress: Bool = true
        /// The codec of compressed payloads: `.xz` (the default) or `.zstd`.
        public var codec: Manifest.Compression = .xz
        /// The zstd level (``ZstdChunkCodec/levels``), when the codec is zstd.
        public var zstdLevel: Int = ZstdChunkCodec.defaultLevel
        public var threads: Int = ProcessEnvironment.processorCount
        public var preset: Int = 6
        /// A new keyring (PEM) for keyring rotation, and fingerprints to deny from then on.
        public var newKeyring: String?
        public var denyList: [String] = []
        public var buildTime: Int64 = WallClock.now()
        /// Recipient certificates (PEM files, RSA or EC keys): when set, the bundle is encrypted
        /// with a random content key wrapped for each of them (docs/encryption.md).
        public var recipients: [String] = []
        public var rsaPadding: Envelope.RSAPadding = .oaep

        public init(compatible: String, version: SemanticVersion, images: [Image], signers: [Signer]) {
            self.compatible = compatible
            self.version = version
            self.images = images
            self.signers = signers
        }
    }

    /// Writes the bundle to `output` (a new file, synced, renamed into place).
    /// - Returns: the manifest it signed.
    /// - Throws: `.deviceNotFound` for a missing image, `.signatureInvalid` for an unusable key,
    ///   `.bundleInvalid` for inconsistent options, I/O errors.
    @discardableResult
    public static func create(_ options: Options, output: String, logger: Logger) throws(FerryError) -> Manifest {
        guard !options.images.isEmpty else {
            throw FerryError(code: .usage, message: "a bundle needs at least one --image or --app")
        }
        guard !options.signers.isEmpty else {
            throw FerryError(code: .usage, message: "a bundle needs at least one --cert/--key signer")
        }
        guard Manifest.chunkSizeRange.contains(Int64(options.chunkSize)) else {
            throw FerryError(code: .usage, message: "the chunk size must be between 64 KiB and 64 MiB")
        }
        var temporaries: [String] = []
        defer { for path in temporaries { FileSystem.removeIfPossible(path) } }
        // The envelope first: an unusable recipient is refused before any payload is encoded.
        let cipher = options.recipients.isEmpty ? nil : try ChunkCipher.random()
        var envelope: [UInt8] = []
        if let cipher {
            var key = cipher.keyBytes
            defer { for index in key.indices { key[index] = 0 } }
            envelope = try Envelope.seal(key, recipients: options.recipients, rsaPadding: options.rsaPadding)
        }
        let encryption = cipher.map { Manifest.Encryption(keyCheck: $0.keyCheck) }
        var payloads: [Manifest.Payload] = []
        for (index, image) in options.images.enumerated() {
            guard !payloads.contains(where: { $0.target == image.slotClass }) else {
                throw FerryError(code: .usage, message: "two payloads for '\(image.slotClass)'")
            }
            let temporary = "\(output).payload\(index).tmp-\(FileSystem.processID)"
            temporaries.append(temporary)
            let payload = try encodePayload(
                image, into: temporary, options: options, cipher: cipher.map { ($0, index) })
            logger.info(
                "Encoded payload",
                metadata: [
                    "payload.target": "\(image.slotClass)", "bytes.decoded": "\(payload.size)",
                    "bytes.stored": "\(payload.storedSize)",
                ])
            payloads.append(payload)
        }
        var keyringUpdate: Manifest.KeyringUpdate? = nil
        var keyringBytes: [UInt8] = []
        if let newKeyring = options.newKeyring {
            keyringBytes = try TextFile.readBytes(newKeyring, limit: 1 << 20)
            _ = try Keyring(pem: keyringBytes, name: newKeyring)  // refuse to ship a keyring that does not load
            keyringUpdate = Manifest.KeyringUpdate(
                member: "keyring.pem", size: Int64(keyringBytes.count), sha256: SHA256Hasher.hash(keyringBytes),
                denyList: options.denyList.map { $0.lowercased() })
        }
        let manifest = Manifest(
            compatible: options.compatible, version: options.version, securityVersion: options.securityVersion,
            buildTime: options.buildTime, expires: options.expires, description: options.description,
            keyring: keyringUpdate, encryption: encryption,
            payloads: payloads)
        let manifestBytes = manifest.serialized()
        var signatures: [[UInt8]] = []
        for signer in options.signers {
            signatures.append(
                try CMS.sign(content: manifestBytes, certificatePath: signer.certificate, keyPath: signer.key))
        }

        let partial = "\(output).tmp-\(FileSystem.processID)"
        temporaries.append(partial)
        let sink = try FileByteSink(path: partial)
        let tar = TarWriter(sink: sink)
        let mtime = options.buildTime
        try tar.addMember(name: "manifest.json", bytes: manifestBytes, mtime: mtime)
        for (index, signature) in signatures.enumerated() {
            try tar.addMember(name: "manifest.json.\(index + 1).p7s", bytes: signature, mtime: mtime)
        }
        if let keyringUpdate { try tar.addMember(name: keyringUpdate.member, bytes: keyringBytes, mtime: mtime) }
        if let encryption { try tar.addMember(name: encryption.envelope, bytes: envelope, mtime: mtime) }
        for (index, payload) in payloads.enumerated() {
            try tar.beginMember(name: payload.member, size: payload.storedSize, mtime: mtime)
            let source = try FileByteSource(path: temporaries[index])
            try copy(source, into: tar, count: payload.storedSize)
            try tar.endMember()
        }
        try tar.finish()
        try sink.finish()
        try FileSystem.rename(partial, to: output)
        try DurableFile.synchronizeDirectory(Paths.directory(of: output))
        return manifest
    }

    /// - Parameter cipher: for an encrypted bundle, the content cipher and the payload's index.
    /// Addresses an encrypted bundle to other recipients without signing it again: the same
    /// manifest, signatures, keyring and sealed payloads, byte for byte, and a new envelope of the
    /// same content key. `key` must open the bundle's envelope.
    /// - Returns: the manifest.
    /// - Throws: `.usage` for a bundle that is not encrypted; everything opening the envelope throws.
    @discardableResult
    public static func readdress(
        _ source: any ByteSource, recipients: [String], rsaPadding: Envelope.RSAPadding = .oaep, key: DeviceKey,
        output: String
    ) throws(FerryError) -> Manifest {
        let reader = BundleReader(source: source)
        let (manifest, keyring) = try reader.readUnverified()
        guard let encryption = manifest.encryption, let envelope = reader.envelope else {
            throw FerryError(
                code: .usage,
                message:
                    "\(source.sourceName) is not encrypted: encrypt a bundle when it is made (ferry bundle create --encrypt-to), since its signed manifest changes"
            )
        }
        let cipher = try Envelope.open(envelope, with: key, name: encryption.envelope, keyCheck: encryption.keyCheck)
        var contentKey = cipher.keyBytes
        defer { for index in contentKey.indices { contentKey[index] = 0 } }
        let newEnvelope = try Envelope.seal(contentKey, recipients: recipients, rsaPadding: rsaPadding)

        let partial = "\(output).tmp-\(FileSystem.processID)"
        defer { FileSystem.removeIfPossible(partial) }
        let sink = try FileByteSink(path: partial)
        let tar = TarWriter(sink: sink)
        let mtime = manifest.buildTime
        try tar.addMember(name: "manifest.json", bytes: reader.manifestBytes, mtime: mtime)
        for signature in reader.signatures {
            try tar.addMember(name: signature.name, bytes: signature.bytes, mtime: mtime)
        }
        if let update = manifest.keyring, let keyring {
            try tar.addMember(name: update.member, bytes: keyring, mtime: mtime)
        }
        try tar.addMember(name: encryption.envelope, bytes: newEnvelope, mtime: mtime)
        for payload in manifest.payloads {
            _ = try reader.nextMember(named: payload.member, size: payload.storedSize)
            try tar.beginMember(name: payload.member, size: payload.storedSize, mtime: mtime)
            try copy(ContentSource(reader.tar), into: tar, count: payload.storedSize)
            try tar.endMember()
        }
        try reader.finish()
        try tar.finish()
        try sink.finish()
        try FileSystem.rename(partial, to: output)
        try DurableFile.synchronizeDirectory(Paths.directory(of: output))
        return manifest
    }

    /// The current member's content as a byte source.
    private final class ContentSource: ByteSource {
        let tar: TarReader
        init(_ tar: TarReader) { self.tar = tar }
        var sourceName: String { tar.source.sourceName }
        func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
            try tar.readContent(into: buffer)
        }
    }

    private static func encodePayload(
        _ image: Image, into temporary: String, options: Options, cipher: (ChunkCipher, Int)?
    ) throws(FerryError) -> Manifest.Payload {
        let input: any ByteSource
        let isDelta = image.delta != nil
        let compression: Manifest.Compression = options.compress && !isDelta ? options.codec : .none
        let chunkSize = isDelta ? min(options.chunkSize, deltaChunkSize) : options.chunkSize
        let isImage = !isDelta && image.app == nil && image.settings == nil
        if isImage && image.path.hasSuffix(".xz") {
            input = try XZStreamSource(source: FileByteSource(path: image.path))
        } else if isImage && image.path.hasSuffix(".zst") {
            input = try ZstdStreamSource(source: FileByteSource(path: image.path))
        } else {
            input = try FileByteSource(path: image.path)
        }
        let hashing = HashingByteSource(input, chunkSize: chunkSize)
        let sink = try FileByteSink(path: temporary)
        var chunks: [Manifest.Chunk] = []
        var offset: Int64 = 0
        func record(_ encoded: [UInt8], index: Int) throws(FerryError) {
            var bytes = encoded
            if let (cipher, payload) = cipher {
                bytes = try cipher.seal(encoded, payload: payload, chunk: index)
            }
            try sink.write(bytes)
            // The reader hashed chunk `index` before handing it out: its digest is known.
            chunks.append(
                Manifest.Chunk(
                    offset: offset, size: Int64(bytes.count), sha256: SHA256Hasher.hash(bytes),
                    decodedSHA256: hashing.chunkDigests[index]))
            offset += Int64(bytes.count)
        }
        switch compression {
        case .xz:
            try XZChunkCodec.encodeChunks(
                source: hashing, chunkSize: chunkSize, threads: options.threads, preset: options.preset
            ) { (chunk) throws(FerryError) in
                try record(chunk.bytes, index: chunk.index)
            }
        case .zstd:
            try ZstdChunkCodec.encodeChunks(
                source: hashing, chunkSize: chunkSize, threads: options.threads, level: options.zstdLevel
            ) { (chunk) throws(FerryError) in
                try record(chunk.bytes, index: chunk.index)
            }
        case .none:
            var index = 0
            while true {
                let bytes = try readUpTo(hashing, count: chunkSize)
                if bytes.isEmpty { break }
                try record(bytes, index: index)
                index += 1
            }
        }
        try sink.finish()
        let slotClass = image.slotClass
        let kind: Manifest.Payload.Kind =
            image.delta.map { .delta($0) } ?? image.app.map { .app($0) } ?? image.settings.map { .settings($0) }
            ?? image.bootloader.map { .bootloader($0) } ?? .image
        let suffix = ["app": "app", "settings": "settings", "bootloader": "bootloader"][kind.name] ?? "img"
        return Manifest.Payload(
            kind: kind, target: slotClass,
            member: (isDelta ? "\(slotClass).delta" : "\(slotClass).\(suffix)\(Self.suffix[compression] ?? "")")
                + (cipher == nil ? "" : ".enc"),
            compression: compression, size: hashing.byteCount, sha256: hashing.finalize(),
            storedSize: offset,
            chunkSize: Int64(chunkSize), chunks: chunks)
    }

    /// The member name's suffix for each codec.
    static let suffix: [Manifest.Compression: String] = [.xz: ".xz", .zstd: ".zst"]

    /// Reads until `count` bytes or the end of the stream.
    static func readUpTo(_ source: any ByteSource, count: Int) throws(FerryError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { buffer.deallocate() }
        var done = 0
        while done < count {
            let read = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if read == 0 { break }
            done += read
        }
        return Array(buffer[..<done])
    }

    private static func copy(_ source: any ByteSource, into tar: TarWriter, count: Int64) throws(FerryError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var remaining = count
        while remaining > 0 {
            let read = try source.read(
                into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(Int64(buffer.count), remaining))]))
            guard read > 0 else { throw FerryError(code: .truncated, message: "\(source.sourceName) ended early") }
            try tar.writeContent(UnsafeRawBufferPointer(rebasing: buffer[..<read]))
            remaining -= Int64(read)
        }
    }
}
