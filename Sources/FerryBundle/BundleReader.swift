import Dispatch
import FerryCrypto
import FerrySystem
import FerryXZ

/// Reads a bundle from a stream, in the order the format fixes, verifying before trusting:
///
/// 1. `manifest.json` must be the first member (bounded size);
/// 2. then `manifest.json.1.p7s`, `.2.p7s`, … numbered without gaps (bounded size and count);
/// 3. the signatures are checked against the policy *before* the manifest is parsed;
/// 4. then the new keyring member, if the manifest names one, hash-checked;
/// 5. then the payload members, in manifest order, each read chunk by chunk with every chunk's
///    compressed and decoded SHA-256 checked before the chunk is handed out.
public final class BundleReader {
    public static let maximumSignatures = 16
    /// The memory the chunk buffers of a payload being decoded may take (at least two chunks).
    static let decodeMemory = 64 << 20

    public let tar: TarReader
    private var pendingMember: TarMember?
    public private(set) var manifestBytes: [UInt8] = []
    public private(set) var signatures: [(name: String, bytes: [UInt8])] = []
    /// The manifest, once verified.
    public private(set) var manifest: Manifest?
    /// An encrypted bundle's key envelope (read by `verify`, not yet opened).
    public private(set) var envelope: [UInt8]?
    /// The content cipher, once ``unlock(with:)`` opened the envelope.
    public private(set) var cipher: ChunkCipher?

    public init(source: any ByteSource) {
        tar = TarReader(source: source)
    }

    /// Reads the manifest and signature members (step 1–2), without trusting them yet.
    /// - Throws: `.bundleInvalid` (manifest not first, signatures out of order or duplicated),
    ///   `.limitExceeded`, `.truncated`.
    public func readSignedManifest() throws(FerryError) {
        guard let first = try tar.nextMember(maximumSize: Int64(Manifest.maximumSize)) else {
            throw FerryError(
                code: .bundleInvalid, message: "\(tar.source.sourceName) is an empty archive, not a bundle")
        }
        guard first.name == "manifest.json" else {
            throw FerryError(
                code: .bundleInvalid, message: "the first member of the bundle is '\(first.name)', not manifest.json")
        }
        manifestBytes = try tar.readRemainingContent(maximumCount: Manifest.maximumSize)
        while let member = try tar.nextMember() {
            guard member.name.hasPrefix("manifest.json") else {
                pendingMember = member
                break
            }
            let expected = "manifest.json.\(signatures.count + 1).p7s"
            guard member.name == expected else {
                throw FerryError(
                    code: .bundleInvalid,
                    message:
                        "bundle member '\(member.name)' where '\(expected)' was expected (signatures are numbered from 1, in order, once each)"
                )
            }
            guard signatures.count < Self.maximumSignatures else {
                throw FerryError(
                    code: .limitExceeded, message: "the bundle has more than \(Self.maximumSignatures) signatures")
            }
            guard member.size <= Int64(CMS.maximumSignatureSize) else {
                throw FerryError(
                    code: .limitExceeded,
                    message: "\(member.name) is \(member.size) bytes, more than \(CMS.maximumSignatureSize)")
            }
            signatures.append((member.name, try tar.readRemainingContent(maximumCount: CMS.maximumSignatureSize)))
        }
    }

    /// Steps 1–4: reads, verifies and parses; returns the trusted manifest and the signers.
    /// - Parameter indexed: the update index entry the bundle was chosen by: its manifest must be
    ///   the one the entry binds (checked as soon as it is read, before the signatures), and say
    ///   what the entry says.
    /// - Throws: everything `readSignedManifest`, `TrustPolicy` and `Manifest.parse` throw;
    ///   `.notIndexed` for a bundle other than the entry's.
    public func verify(policy: TrustPolicy, allowDowngrade: Bool = false, indexed: UpdateIndex.Entry? = nil)
        throws(FerryError) -> (
            Manifest, [Certificate], keyring: [UInt8]?
        )
    {
        try readSignedManifest()
        try indexed?.checkManifest(manifestBytes, bundle: tar.source.sourceName)
        let signers = try policy.verifySignatures(manifest: manifestBytes, signatures: signatures)
        let manifest = try Manifest.parse(manifestBytes)
        try indexed?.checkManifest(manifest, bundle: tar.source.sourceName)
        try policy.checkManifest(manifest, allowDowngradeOverride: allowDowngrade)
        return (manifest, signers, try readHead(manifest))
    }

    /// Reads the manifest and the members before the payloads without checking a signature (for
    /// `bundle info` and re-addressing a bundle, whose signatures are kept as they are).
    public func readUnverified() throws(FerryError) -> (Manifest, keyring: [UInt8]?) {
        try readSignedManifest()
        let manifest = try Manifest.parse(manifestBytes)
        return (manifest, try readHead(manifest))
    }

    /// After the manifest: the new keyring (hash-checked) and an encrypted bundle's envelope.
    private func readHead(_ manifest: Manifest) throws(FerryError) -> [UInt8]? {
        var keyring: [UInt8]? = nil
        if let update = manifest.keyring {
            let member = try nextMember(named: update.member, size: update.size)
            let bytes = try tar.readRemainingContent(maximumCount: Int(update.size))
            guard SHA256Hasher.hash(bytes) == update.sha256 else {
                throw FerryError(
                    code: .bundleInvalid,
                    message: "bundle member '\(member.name)' does not match its SHA-256 in the manifest")
            }
            keyring = bytes
        }
        self.manifest = manifest
        if let encryption = manifest.encryption {
            let member = try nextMember(named: encryption.envelope, size: nil)
            guard member.size <= Int64(Envelope.maximumSize) else {
                throw FerryError(
                    code: .limitExceeded,
                    message: "\(member.name) is \(member.size) bytes, more than \(Envelope.maximumSize)")
            }
            envelope = try tar.readRemainingContent(maximumCount: Envelope.maximumSize)
        }
        return keyring
    }

    /// Opens an encrypted bundle's envelope with the device's key, after `verify`: the content
    /// key must be the one the signed manifest names.
    /// - Throws: `.notAddressed`, `.bundleInvalid` (a corrupt envelope, or one that holds another key).
    public func unlock(with key: DeviceKey) throws(FerryError) {
        guard let encryption = manifest?.encryption, let envelope else { return }
        cipher = try Envelope.open(envelope, with: key, name: encryption.envelope, keyCheck: encryption.keyCheck)
    }

    /// The cipher and the payload's index for its chunks' nonces (nil for a plain bundle).
    /// - Throws: `.deviceKeyInvalid` for an encrypted bundle not unlocked.
    func sealing(of payload: Manifest.Payload) throws(FerryError) -> (ChunkCipher?, Int) {
        let index = manifest?.payloads.firstIndex { $0.member == payload.member } ?? 0
        guard let encryption = manifest?.encryption else { return (nil, index) }
        guard let cipher else {
            throw FerryError(
                code: .deviceKeyInvalid,
                message: "the bundle is encrypted ('\(encryption.envelope)'), and no device key opened it")
        }
        return (cipher, index)
    }

    /// Verifies the whole bundle, writing nothing: the manifest as ``verify(policy:allowDowngrade:indexed:)``
    /// does, then every chunk of every payload, then the archive's end.
    ///
    /// An encrypted bundle is opened with `key`; without one, only what needs no key is checked
    /// (every stored chunk's SHA-256, which the signature covers), and `contentChecked` says so.
    /// `checkManifest` runs after the manifest is verified, before any payload is read.
    public func verifyWhole(
        policy: TrustPolicy, allowDowngrade: Bool = false, key: DeviceKey? = nil,
        checkManifest: (BundleReader) throws(FerryError) -> Void = { _ in }
    )
        throws(FerryError) -> (Manifest, [Certificate], contentChecked: Bool)
    {
        let (manifest, signers, _) = try verify(policy: policy, allowDowngrade: allowDowngrade)
        try checkManifest(self)
        if let key { try unlock(with: key) }
        let contentChecked = manifest.encryption == nil || cipher != nil
        for payload in manifest.payloads {
            if contentChecked {
                try readPayload(payload) { (_, _, _) throws(FerryError) in }
            } else {
                try readStoredChunks(payload)
            }
        }
        try finish()
        return (manifest, signers, contentChecked)
    }

    /// Reads one payload's stored chunks, checking each one's SHA-256 only (an encrypted
    /// payload without its key).
    func readStoredChunks(_ payload: Manifest.Payload) throws(FerryError) {
        _ = try nextMember(named: payload.member, size: payload.storedSize)
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Manifest.Payload.storedBound(ofChunkSize: Int(payload.chunkSize)), alignment: 16)
        defer { buffer.deallocate() }
        for (index, chunk) in payload.chunks.enumerated() {
            let stored = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(chunk.size)])
            try readStored(into: stored, payload: payload, index: index)
            try ChunkCheck.compressed(
                UnsafeRawBufferPointer(stored), chunk: chunk, index: index, member: payload.member)
        }
    }

    /// Fills `stored` with the next stored bytes of `payload`'s member (chunk `index`).
    private func readStored(into stored: UnsafeMutableRawBufferPointer, payload: Manifest.Payload, index: Int)
        throws(FerryError)
    {
        var done = 0
        while done < stored.count {
            let read = try tar.readContent(into: UnsafeMutableRawBufferPointer(rebasing: stored[done...]))
            guard read > 0 else {
                throw FerryError(code: .truncated, message: "payload '\(payload.member)' ends inside chunk \(index)")
            }
            done += read
        }
    }

    /// Moves to the next member, which must be `name` with exactly `size` bytes (any size when nil).
    public func nextMember(named name: String, size: Int64?) throws(FerryError) -> TarMember {
        let member: TarMember?
        if let pending = pendingMember {
            pendingMember = nil
            member = pending
        } else {
            member = try tar.nextMember()
        }
        guard let member else {
            throw FerryError(code: .truncated, message: "the bundle ends before member '\(name)'")
        }
        if let envelope = manifest?.encryption?.envelope, name != envelope, member.name == envelope {
            throw FerryError(
                code: .bundleInvalid, message: "bundle member '\(envelope)' comes after the payloads it unlocks")
        }
        if manifest?.encryption == nil, member.name == "content-key.p7m" {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "the bundle carries a key envelope ('\(member.name)'), but its signed manifest says it is not encrypted"
            )
        }
        guard member.name == name else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "bundle member '\(member.name)' where '\(name)' was expected (members must follow the manifest's order)"
            )
        }
        guard size == nil || member.size == size else {
            throw FerryError(
                code: .bundleInvalid,
                message: "bundle member '\(name)' is \(member.size) bytes, the manifest says \(size ?? 0)")
        }
        return member
    }

    /// Reads one payload chunk by chunk, calling `body` with each verified decoded chunk in
    /// order (the decoded bytes are valid only during the call). Checks, in this order for every
    /// chunk: compressed SHA-256, decoding to exactly the expected size, decoded SHA-256; and at
    /// the end the whole payload's SHA-256.
    /// - Throws: `.bundleInvalid` naming the payload and chunk, `.truncated`.
    ///
    /// - Parameter resumeAt: chunks before this index were written by an interrupted install:
    ///   they are skipped without being read (the source seeks where it can), and the
    ///   whole-payload hash is then left to the caller's read-back.
    /// - Parameter checkWholeHash: also hash the whole decoded payload (one more pass over it).
    ///   Every chunk is checked anyway; installs skip this because their read-back compares the
    ///   slot with the chunk hashes again.
    public func readPayload(
        _ payload: Manifest.Payload, resumeAt: Int = 0, checkWholeHash: Bool = true,
        body: (_ index: Int, _ offset: Int64, _ bytes: UnsafeRawBufferPointer) throws(FerryError) -> Void
    ) throws(FerryError) {
        _ = try nextMember(named: payload.member, size: payload.storedSize)
        let (cipher, payloadIndex) = try sealing(of: payload)
        let chunkSize = Int(payload.chunkSize)
        // A ring of chunk buffers: this thread reads each chunk (checking its compressed SHA-256)
        // into a free slot and hands it to a decoder; decoders run on every core at once, each
        // chunk as soon as it is read; this thread then hands the decoded chunks out in order.
        // So decoding never waits for writing, nor writing for a whole batch. Memory: a stored and
        // a decoded buffer per slot, two slots per core plus one, within 64 MiB whatever the cores.
        let storedBound = Manifest.Payload.storedBound(ofChunkSize: chunkSize)
        let workers = max(1, min(ProcessEnvironment.processorCount, 8))
        let slots = max(2, min(2 * workers + 1, Self.decodeMemory / (storedBound + chunkSize)))
        let ring = DecodeRing(
            slots: max(1, min(slots, payload.chunks.count)), decoders: workers, storedBound: storedBound,
            chunkSize: chunkSize)
        // No decoder may outlive the buffers (an error leaves some running).
        defer { ring.finish() }
        let whole = SHA256Hasher()

        /// Reads chunk `index` into its slot (checking its compressed SHA-256) and starts decoding it.
        func read(_ index: Int) throws(FerryError) {
            let chunk = payload.chunks[index]
            let slot = index % ring.slots
            let stored = ring.stored(slot, size: Int(chunk.size))
            try readStored(into: stored, payload: payload, index: index)
            try ChunkCheck.compressed(
                UnsafeRawBufferPointer(stored), chunk: chunk, index: index, member: payload.member)
            let decodedSize = payload.decodedSize(ofChunk: index)
            ring.start(
                slot,
                DecodeRing.Job(
                    storedSize: Int(chunk.size), decodedSize: decodedSize, compression: payload.compression,
                    zeros: ChunkCheck.isZeros(chunk, decodedSize: decodedSize), cipher: cipher,
                    place: ChunkCheck.Place(payload: payloadIndex, chunk: index)))
        }

        // Chunks already written by an interrupted install are skipped unread (a seek in a file, a
        // range request over HTTPS); the read-back verifies them on the device.
        let first = min(resumeAt, payload.chunks.count)
        try tar.skipContent(payload.chunks[..<first].reduce(0) { $0 + $1.size })
        var next = first
        for index in first..<payload.chunks.count {
            // Keep every slot busy: read ahead while one is free.
            while next < payload.chunks.count && next - index < ring.slots {
                try read(next)
                next += 1
            }
            // Hand out the oldest, checked against its decoded SHA-256; its slot is then free.
            let slot = index % ring.slots
            let job = ring.wait(slot)
            if let error = ring.errors[slot] { throw error.prefixed("payload '\(payload.member)' chunk \(index)") }
            try ChunkCheck.decoded(
                ring.digests[slot], chunk: payload.chunks[index], index: index, member: payload.member)
            let output = UnsafeRawBufferPointer(ring.decoded(slot, size: job.decodedSize))
            if checkWholeHash { whole.update(output) }
            try body(index, Int64(index) * payload.chunkSize, output)
        }
        guard resumeAt > 0 || !checkWholeHash || whole.finalize() == payload.sha256 else {
            throw FerryError(code: .bundleInvalid, message: "payload '\(payload.member)' does not match its SHA-256")
        }
    }

    /// After the last payload: nothing but the archive's end may follow.
    /// - Throws: `.bundleInvalid` for extra members or trailing data.
    public func finish() throws(FerryError) {
        if let extra = pendingMember {
            throw FerryError(
                code: .bundleInvalid, message: "unexpected bundle member '\(extra.name)' after the last payload")
        }
        if let extra = try tar.nextMember() {
            throw FerryError(
                code: .bundleInvalid, message: "unexpected bundle member '\(extra.name)' after the last payload")
        }
        try tar.finishAndCheckEnd()
    }
}

/// The chunk buffers of ``BundleReader/readPayload(_:resumeAt:checkWholeHash:body:)``: a ring of
/// slots, each holding one chunk from the moment it is read until it was handed out.
///
/// `@unchecked Sendable`: a decoder touches only its own slot, between `start` and the signal
/// that `wait` consumes; the reading thread touches a slot only outside that span.
private final class DecodeRing: @unchecked Sendable {
    struct Job {
        var storedSize = 0
        var decodedSize = 0
        var compression = Manifest.Compression.xz
        /// The signed decoded hash is that of zeros: not decoded (``ChunkCheck/isZeros(_:decodedSize:)``).
        var zeros = false
        /// An encrypted bundle's content cipher, and where the chunk is (its nonce).
        var cipher: ChunkCipher? = nil
        var place = ChunkCheck.Place(payload: 0, chunk: 0)
    }

    let slots: Int
    let storedBound: Int
    let chunkSize: Int
    let storedBuffers: UnsafeMutableRawBufferPointer
    let decodedBuffers: UnsafeMutableRawBufferPointer
    /// Per-slot jobs and results, through raw pointers (never a shared Swift array, whose
    /// concurrent mutation would violate exclusivity).
    let jobs: UnsafeMutablePointer<Job>
    let errors: UnsafeMutablePointer<FerryError?>
    let digests: UnsafeMutablePointer<SHA256Digest?>
    /// Signalled by a slot's decoder when it is done.
    private let done: [DispatchSemaphore]
    /// Whether a slot's decoder was started and its signal not yet consumed.
    private var busy: [Bool]
    private let decoders = DispatchGroup()
    /// One serial queue per decoder, chunks handed out round-robin. Each such queue has a thread
    /// of its own as soon as it has work; the global pool, by contrast, grows by a thread only
    /// when its monitor sees it short (about a second on Linux), which left one core idle at the
    /// start of every install.
    private let queues: [DispatchQueue]
    /// Chunks started so far (touched only by the caller's thread).
    private var started = 0

    init(slots: Int, decoders: Int, storedBound: Int, chunkSize: Int) {
        self.slots = slots
        self.storedBound = (storedBound + 4095) / 4096 * 4096
        self.chunkSize = chunkSize
        storedBuffers = .allocate(byteCount: self.storedBound * slots, alignment: 4096)
        decodedBuffers = .allocate(byteCount: chunkSize * slots, alignment: 4096)
        jobs = .allocate(capacity: slots)
        jobs.initialize(repeating: Job(), count: slots)
        errors = .allocate(capacity: slots)
        errors.initialize(repeating: nil, count: slots)
        digests = .allocate(capacity: slots)
        digests.initialize(repeating: nil, count: slots)
        done = (0..<slots).map { _ in DispatchSemaphore(value: 0) }
        busy = Array(repeating: false, count: slots)
        queues = (0..<max(1, min(decoders, slots))).map { DispatchQueue(label: "ferry.decode.\($0)") }
    }

    /// Waits for every decoder still running, then frees the buffers.
    func finish() {
        decoders.wait()
        storedBuffers.deallocate()
        decodedBuffers.deallocate()
        jobs.deinitialize(count: slots)
        jobs.deallocate()
        errors.deinitialize(count: slots)
        errors.deallocate()
        digests.deinitialize(count: slots)
        digests.deallocate()
    }

    func stored(_ slot: Int, size: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: storedBuffers[(slot * storedBound)..<(slot * storedBound + size)])
    }

    func decoded(_ slot: Int, size: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: decodedBuffers[(slot * chunkSize)..<(slot * chunkSize + size)])
    }

    /// Starts decoding the chunk read into `slot`, on another thread.
    func start(_ slot: Int, _ job: Job) {
        precondition(!busy[slot], "Ferry bug: decode slot \(slot) reused before it was handed out")
        jobs[slot] = job
        busy[slot] = true
        let queue = queues[started % queues.count]
        started += 1
        queue.async(group: decoders) {
            self.decode(slot)
            self.done[slot].signal()
        }
    }

    /// Waits until `slot` is decoded; returns its job (results in `errors` and `digests`).
    func wait(_ slot: Int) -> Job {
        precondition(busy[slot], "Ferry bug: waiting for decode slot \(slot), which was not started")
        done[slot].wait()
        busy[slot] = false
        return jobs[slot]
    }

    /// Decodes and hashes one slot's chunk (runs on a decoder thread).
    private func decode(_ slot: Int) {
        let job = jobs[slot]
        errors[slot] = nil
        digests[slot] = nil
        let input = stored(slot, size: job.storedSize)
        let output = decoded(slot, size: job.decodedSize)
        if job.zeros {
            output.initializeMemory(as: UInt8.self, repeating: 0)
            digests[slot] = SHA256Hasher.digestOfZeros(count: output.count)
            return
        }
        do throws(FerryError) {
            try ChunkCheck.decode(
                input, into: output, compression: job.compression, cipher: job.cipher, place: job.place)
            digests[slot] = SHA256Hasher.hashNotingZeros(UnsafeRawBufferPointer(output))
        } catch {
            errors[slot] = error
        }
    }
}
