import FerryBundle
import FerryCrypto
import FerryJSON
import FerryNet
import FerrySystem
import Logging

/// `ferry check` and `ferry update`: reads the signed update index over pinned HTTPS, verifies it
/// like a manifest (signatures and threshold, expiry at the trusted time, a serial never older
/// than the last one accepted), and chooses what applies to this device: the newest version for
/// its `compatible`, as a delta whose sources are the booted images when there is one, else as a
/// full bundle.
public struct UpdateCheck {
    public let configuration: SystemConfiguration
    public let booted: BootedGroup
    public let logger: Logger

    public init(configuration: SystemConfiguration, booted: BootedGroup, logger: Logger) {
        self.configuration = configuration
        self.booted = booted
        self.logger = logger
    }

    public struct Decision: Sendable {
        public var indexURL: String
        public var index: UpdateIndex
        /// The version the booted group runs (from the installed-slot records), if known.
        public var bootedVersion: SemanticVersion?
        /// What to install, nil when up to date.
        public var entry: UpdateIndex.Entry?
        /// A full bundle of the same version, to fall back to when a delta's source check fails.
        public var fallback: UpdateIndex.Entry?

        /// The absolute URL of an entry's bundle.
        public func url(of entry: UpdateIndex.Entry) -> String { UpdateCheck.resolve(entry.url, against: indexURL) }
    }

    /// Fetches, verifies and records the index, then chooses.
    /// - Throws: transport errors (50–56); `.signatureInvalid`/`.untrusted`/`.expired` for the
    ///   signatures; `.expired` for an expired index; `.downgrade` for a replayed (older) index;
    ///   `.bundleInvalid`/`.limitExceeded` for a malformed one; `.notCompatible` when the newest
    ///   version is offered only as deltas from images this device does not run.
    public func check(indexURL: String?) throws(FerryError) -> Decision {
        guard let indexURL = indexURL ?? configuration.updateURL else {
            throw FerryError(code: .usage, message: "no index URL: give one, or set updateURL in \(configuration.path)")
        }
        let (bytes, signatures) = try fetch(indexURL)
        let policy = try DeviceTrust.policy(configuration: configuration, booted: booted, allowDowngrade: false)
        _ = try policy.verifySignatures(
            manifest: bytes, signatures: signatures, document: "the update index \(indexURL)",
            firstSignatureName: "index.json.1.p7s")
        let index = try UpdateIndex.parse(bytes)
        // (An index its server keeps serving after it expired: a freeze.)
        try TrustPolicy.checkExpiry(index.expires, of: "the update index", at: policy.trustedTime)
        try recordSerial(index, bytes: bytes)
        try StateStore(directory: configuration.stateDirectory).recordTrustedTime(policy.trustedTime)
        return try choose(
            index, indexURL: indexURL, floor: policy.device?.securityFloor ?? 0,
            bootedVersion: policy.device?.bootedVersion)
    }

    /// The choice, given a verified index.
    func choose(_ index: UpdateIndex, indexURL: String, floor: Int64, bootedVersion: SemanticVersion?)
        throws(FerryError) -> Decision
    {
        var decision = Decision(indexURL: indexURL, index: index, bootedVersion: bootedVersion)
        let newer = index.entries.filter { entry in
            entry.compatible == configuration.compatible && entry.securityVersion >= floor
                && (bootedVersion.map { entry.version > $0 } ?? true)
        }
        guard let best = newer.map(\.version).max() else { return decision }
        let candidates = newer.filter { $0.version == best }
        let booted = try bootedImageHashes()
        let delta = candidates.first { entry in
            entry.isDelta
                && entry.payloads.allSatisfy {
                    $0.type != "delta" || ($0.sourceSHA256 != nil && booted[$0.target] == $0.sourceSHA256)
                }
        }
        let full = candidates.first { !$0.isDelta }
        guard let chosen = delta ?? full else {
            throw FerryError(
                code: .notCompatible,
                message:
                    "\(best) is offered only as deltas from images this device does not run, and without a full bundle")
        }
        decision.entry = chosen
        decision.fallback = delta != nil ? full : nil
        return decision
    }

    /// The SHA-256 of each booted slot's image, by slot class, from the installed-slot records.
    private func bootedImageHashes() throws(FerryError) -> [String: SHA256Digest] {
        guard let bootname = booted.bootname, let group = configuration.group(bootname) else { return [:] }
        let records = try StateStore(directory: configuration.stateDirectory).slotRecords()
        var hashes: [String: SHA256Digest] = [:]
        for slot in group.slots {
            hashes[slot.slotClass] = records[slot.name]?.sha256.flatMap { SHA256Digest(hex: $0) }
        }
        return hashes
    }

    // MARK: - Fetching

    /// The index and its signatures `<url>.1.p7s`, `.2.p7s`, … up to the first that is not there.
    private func fetch(_ url: String) throws(FerryError) -> ([UInt8], [(name: String, bytes: [UInt8])]) {
        let index = try download(url, limit: UpdateIndex.maximumSize, what: "the update index")
        var signatures: [(name: String, bytes: [UInt8])] = []
        for number in 1...UpdateIndex.maximumSignatures {
            let source = try HTTPSource(url: "\(url).\(number).p7s", options: configuration.transport, logger: logger)
            do {
                signatures.append(
                    (
                        "index.json.\(number).p7s",
                        try Self.readAll(source, limit: CMS.maximumSignatureSize, what: "index.json.\(number).p7s")
                    ))
            } catch  where error.code == .httpStatus && (source.lastStatus == 404 || source.lastStatus == 410) {
                break
            }
        }
        return (index, signatures)
    }

    private func download(_ url: String, limit: Int, what: String) throws(FerryError) -> [UInt8] {
        try Self.readAll(
            try HTTPSource(url: url, options: configuration.transport, logger: logger), limit: limit, what: what)
    }

    static func readAll(_ source: any ByteSource, limit: Int, what: String) throws(FerryError) -> [UInt8] {
        var bytes: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = try source.read(into: buffer)
            if count == 0 { return bytes }
            bytes += buffer[..<count]
            guard bytes.count <= limit else {
                throw FerryError(
                    code: .limitExceeded, message: "\(what) (\(source.sourceName)) is larger than \(limit) bytes")
            }
        }
    }

    /// Resolves `reference` against the index URL: absolute https:// URLs stay, others replace
    /// the index's file name.
    static func resolve(_ reference: String, against base: String) -> String {
        if reference.contains("://") { return reference }
        if reference.hasPrefix("/") {
            // Same scheme and host: everything before the first "/" after "https://".
            let afterScheme = base.index(base.startIndex, offsetBy: min(base.count, "https://".count))
            guard let slash = base[afterScheme...].firstIndex(of: "/") else { return base + reference }
            return String(base[..<slash]) + reference
        }
        guard let slash = base.lastIndex(of: "/") else { return reference }
        return String(base[...slash]) + reference
    }

    // MARK: - Replay protection

    /// Refuses an index older than the last one accepted (a replay), or another index with the
    /// same serial; records a newer one.
    private func recordSerial(_ index: UpdateIndex, bytes: [UInt8]) throws(FerryError) {
        let store = StateStore(directory: configuration.stateDirectory)
        let digest = SHA256Hasher.hash(bytes).hex
        if let last = try store.trustRecord().updateIndex {
            guard index.serial >= last.serial else {
                throw FerryError(
                    code: .downgrade,
                    message:
                        "the update index has serial \(index.serial), older than \(last.serial) which this device accepted: a replayed index is refused"
                )
            }
            if index.serial == last.serial {
                guard last.sha256 == digest else {
                    throw FerryError(
                        code: .downgrade,
                        message:
                            "the update index has serial \(index.serial) like the one this device accepted, but other content: a new index needs a new serial"
                    )
                }
                return
            }
        }
        try store.updateTrustRecord { record in
            record.updateIndex = TrustRecord.AcceptedIndex(
                serial: index.serial, sha256: digest, acceptedAt: WallClock.iso8601())
        }
    }
}

/// A bundle download checked against its index entry: never more bytes than the entry's size,
/// and at the end exactly that size and (when read whole) its SHA-256, before the install can
/// switch (the installer reads to the end of the stream before it switches).
public final class IndexedBundleSource: ByteSource {
    private let inner: any ByteSource
    private let entry: UpdateIndex.Entry
    private let hasher = SHA256Hasher()
    private var count: Int64 = 0
    private var skipped = false
    public var sourceName: String { inner.sourceName }

    public init(_ inner: any ByteSource, entry: UpdateIndex.Entry) {
        self.inner = inner
        self.entry = entry
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        let read = try inner.read(into: buffer)
        count += Int64(read)
        guard count <= entry.size else {
            throw FerryError(
                code: .notIndexed, message: "\(sourceName) is larger than the \(entry.size) bytes the update index says"
            )
        }
        if read > 0 {
            if !skipped { hasher.update(UnsafeRawBufferPointer(rebasing: buffer[..<read])) }
            return read
        }
        guard count == entry.size else {
            throw FerryError(
                code: .truncated,
                message: "\(sourceName) ends after \(count) of the \(entry.size) bytes the update index says")
        }
        if !skipped {
            let digest = hasher.finalize()
            guard digest == entry.sha256 else {
                throw FerryError(
                    code: .notIndexed,
                    message:
                        "\(sourceName) has SHA-256 \(digest.hex), not the \(entry.sha256.hex) the update index says")
            }
        }
        return 0
    }

    /// Skipped bytes are not hashed (a resumed install): the size is still checked, and the
    /// manifest the index binds, with its signed chunk hashes, covers the content. Skipping
    /// nothing skips nothing: the whole file is still hashed.
    public func skip(_ bytes: Int64) throws(FerryError) {
        guard bytes > 0 else { return }
        try inner.skip(bytes)
        skipped = true
        count += bytes
    }
}
