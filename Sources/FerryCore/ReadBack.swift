import Dispatch
import FerryBundle
import FerryCrypto
import FerrySystem
import Synchronization
import SystemPackage

/// Reads a slot back while it is still being written: each region is verified on a background
/// thread as soon as a checkpoint made it durable (synced), so reading back overlaps decoding and
/// writing the rest instead of following it. Every byte is read from the device, not from the
/// page cache: through a second descriptor with `O_DIRECT` where the device takes it (large
/// requests, no page cache filled and emptied again), otherwise through the writer's descriptor
/// after its cached pages were dropped.
///
/// Two uses: an image payload's chunks, each compared with the decoded SHA-256 the signed
/// manifest gives for it (``init(device:direct:dropCaches:payload:slot:path:)``, ``verify(upTo:)``);
/// and a whole image read back in order, from its first byte, and compared with its one SHA-256
/// at the end (``init(device:direct:dropCaches:wholeImage:slot:path:what:)``, ``verify(through:)``,
/// a delta's target).
///
/// `@unchecked Sendable`: the buffer, the whole-image hasher and the next region are touched only
/// on the serial queue; the outcome is behind a lock.
final class ReadBackQueue: @unchecked Sendable {
    /// A byte range of the slot to read back, with the SHA-256 it must have (a chunk, at most
    /// the buffer's size), or none (part of the whole image).
    private struct Region {
        var range: Range<Int64>
        var sha256: SHA256Digest?
        var chunk: Int?
    }

    private let device: any BlockTarget
    /// The direct (`O_DIRECT`) reader; nil when there is none, or once the device refused a direct
    /// read as invalid (touched only on the queue).
    private var direct: (any BlockTarget)?
    private let dropCaches: (Range<Int64>) throws(FerryError) -> Void
    private let payload: Manifest.Payload?
    /// The whole image's hasher and SHA-256, and what it is called in messages.
    private let whole: (hasher: SHA256Hasher, sha256: SHA256Digest, size: Int64, what: String)?
    private let slot: String
    private let path: String
    private let queue = DispatchQueue(label: "ferry.read-back")
    private let group = DispatchGroup()
    private let buffer: UnsafeMutableRawBufferPointer
    /// The first chunk not yet queued, and chunks queued ahead of it (``verify(_:)``); or the
    /// first byte of a whole image not yet queued. Touched only by the caller's thread.
    private var queued = 0
    private var queuedAhead = Set<Int>()
    private var queuedThrough: Int64 = 0
    private let outcome = Mutex<(verifiedBytes: Int64, failure: FerryError?, cancelled: Bool)>((0, nil, false))

    private init(
        device: any BlockTarget, direct: (any BlockTarget)?,
        dropCaches: @escaping (Range<Int64>) throws(FerryError) -> Void, bufferSize: Int,
        payload: Manifest.Payload?, whole: (hasher: SHA256Hasher, sha256: SHA256Digest, size: Int64, what: String)?,
        slot: String, path: String
    ) {
        self.device = device
        self.direct = direct
        self.dropCaches = dropCaches
        self.payload = payload
        self.whole = whole
        self.slot = slot
        self.path = path
        buffer = .allocate(byteCount: bufferSize, alignment: 4096)
    }

    /// Reads back the chunks of an image payload.
    /// - Parameters:
    ///   - device: the slot as written.
    ///   - direct: the same slot read with `O_DIRECT` (``BlockDevice/directReader()``), if any.
    ///   - dropCaches: drops the cached pages of a synced byte range of the slot.
    convenience init(
        device: any BlockTarget, direct: (any BlockTarget)?,
        dropCaches: @escaping (Range<Int64>) throws(FerryError) -> Void,
        payload: Manifest.Payload, slot: String, path: String
    ) {
        self.init(
            device: device, direct: direct, dropCaches: dropCaches, bufferSize: Int(payload.chunkSize),
            payload: payload, whole: nil, slot: slot, path: path)
    }

    /// Reads back a whole image of `size` bytes, in order from its first byte, and compares it
    /// with `sha256` (``finish()``); `what` names it in messages ("the delta's target image").
    convenience init(
        device: any BlockTarget, direct: (any BlockTarget)?,
        dropCaches: @escaping (Range<Int64>) throws(FerryError) -> Void,
        wholeImage sha256: SHA256Digest, size: Int64, slot: String, path: String, what: String
    ) {
        self.init(
            device: device, direct: direct, dropCaches: dropCaches, bufferSize: 1 << 20, payload: nil,
            whole: (SHA256Hasher(), sha256, size, what), slot: slot, path: path)
    }

    deinit {
        group.wait()
        buffer.deallocate()
    }

    /// Bytes read back and found equal so far (in whatever order they were queued).
    var verifiedBytes: Int64 { outcome.withLock { $0.verifiedBytes } }

    /// The first failure of the reads queued so far, if one was seen already (does not wait).
    var failure: FerryError? { outcome.withLock { $0.failure } }

    /// Queues chunks `queued..<end` for reading back, but those queued ahead. Call only after
    /// they were synced.
    func verify(upTo end: Int) {
        guard let payload else { return }
        let range = queued..<min(max(end, queued), payload.chunks.count)
        queued = range.upperBound
        verify(range.filter { queuedAhead.remove($0) == nil }, ahead: false)
    }

    /// Queues `chunks` (in this order) ahead of the rest: chunks written out of order, such as
    /// the zero chunks zeroed first. Call only after they were synced.
    func verify(_ chunks: [Int]) {
        verify(chunks.filter { $0 >= queued && !queuedAhead.contains($0) }, ahead: true)
    }

    /// Queues a whole image's bytes up to `end` (those not queued yet) for reading back. Call
    /// only after they were synced.
    func verify(through end: Int64) {
        guard let whole, end > queuedThrough else { return }
        let range = queuedThrough..<min(end, whole.size)
        queuedThrough = range.upperBound
        enqueue([Region(range: range, sha256: nil, chunk: nil)])
    }

    private func verify(_ chunks: [Int], ahead: Bool) {
        guard let payload, !chunks.isEmpty else { return }
        if ahead { queuedAhead.formUnion(chunks) }
        enqueue(
            chunks.map { index in
                let offset = Int64(index) * payload.chunkSize
                return Region(
                    range: offset..<(offset + Int64(payload.decodedSize(ofChunk: index))),
                    sha256: payload.chunks[index].decodedSHA256, chunk: index)
            })
    }

    private func enqueue(_ regions: [Region]) {
        queue.async(group: group) { self.check(regions) }
    }

    /// Stops reading back (after the piece being read) and waits: for the way out of a failed
    /// write, before the device is closed.
    func cancel() {
        outcome.withLock { $0.cancelled = true }
        group.wait()
    }

    /// Waits for every queued region; throws the first failure, or, for a whole image, a
    /// mismatch of its SHA-256 (or bytes never queued).
    func finish() throws(FerryError) {
        group.wait()
        if let failure { throw failure }
        if let whole, queuedThrough != whole.size || whole.hasher.finalize() != whole.sha256 {
            throw mismatch(whole.what)
        }
    }

    private func mismatch(_ what: String) -> FerryError {
        FerryError(
            code: .readBackMismatch,
            message: "slot '\(slot)' (\(path)) reads back differently from \(what): the device is failing")
    }

    /// The byte ranges of `regions`, adjacent ones merged.
    private static func spans(_ regions: [Region]) -> [Range<Int64>] {
        var spans: [Range<Int64>] = []
        for region in regions {
            if let last = spans.last, last.upperBound == region.range.lowerBound {
                spans[spans.count - 1] = last.lowerBound..<region.range.upperBound
            } else {
                spans.append(region.range)
            }
        }
        return spans
    }

    /// Runs on the queue.
    private func check(_ regions: [Region]) {
        guard outcome.withLock({ $0.failure == nil && !$0.cancelled }) else { return }
        let spans = Self.spans(regions)
        do throws(FerryError) {
            // Buffered reads must not be served from the pages written a moment ago.
            var dropped = direct == nil
            if dropped { for span in spans { try dropCaches(span) } }
            for region in regions {
                var offset = region.range.lowerBound
                while offset < region.range.upperBound {
                    if outcome.withLock({ $0.cancelled }) { return }
                    let count = Int(min(Int64(buffer.count), region.range.upperBound - offset))
                    let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
                    if !(try readDirectly(into: bytes, at: offset)) {
                        if !dropped {
                            for span in spans { try dropCaches(span) }
                            dropped = true
                        }
                        try device.read(into: bytes, at: offset)
                    }
                    try compare(UnsafeRawBufferPointer(bytes), region)
                    outcome.withLock { $0.verifiedBytes += Int64(count) }
                    offset += Int64(count)
                }
            }
            // What was written and read back need not stay cached (memory is scarce on a device).
            for span in spans { try dropCaches(span) }
        } catch {
            outcome.withLock { $0.failure = $0.failure ?? error }
        }
    }

    /// Compares bytes read back with what they must be: a chunk's SHA-256 (a chunk fits the
    /// buffer), or the whole image's hasher, fed in order.
    private func compare(_ bytes: UnsafeRawBufferPointer, _ region: Region) throws(FerryError) {
        if let whole {
            whole.hasher.update(bytes)
        } else if let chunk = region.chunk,
            SHA256Hasher.hashNotingZeros(bytes) != region.sha256 || bytes.count != region.range.count
        {
            throw mismatch("what was written (chunk \(chunk))")
        }
    }

    /// Reads `bytes.count` bytes at `offset` through the direct reader, the length rounded up to
    /// whole sectors (the buffer holds a whole chunk). False when that cannot be done: no direct
    /// reader, an unaligned offset, a rounded length past the end of the slot, or a device that
    /// calls the direct read invalid (then no further direct reads are tried).
    private func readDirectly(into bytes: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) -> Bool {
        guard let reader = direct else { return false }
        let sector = reader.logicalSectorSize
        let length = (bytes.count + sector - 1) / sector * sector
        guard offset % Int64(sector) == 0, length <= buffer.count, offset + Int64(length) <= reader.byteCount else {
            return false
        }
        do {
            try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<length]), at: offset)
            return true
        } catch  where (error.cause as? Errno) == .invalidArgument {
            direct = nil
            return false
        }
    }
}
