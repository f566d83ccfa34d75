import Dispatch
import FerryBundle
import FerryCrypto
import FerrySystem
import Synchronization
import SystemPackage

/// Reads a slot back while it is still being written: each region is verified on a background
/// thread as soon as a checkpoint made it durable (synced), so reading back overlaps decoding and
/// writing the rest instead of following it. Every chunk is still read from the device, not from
/// the page cache, and compared with the decoded SHA-256 the signed manifest gives for it:
/// through a second descriptor with `O_DIRECT` where the device takes it (large requests, no
/// page cache filled and emptied again), otherwise through the writer's descriptor after its
/// cached pages were dropped.
///
/// `@unchecked Sendable`: the buffer and the next chunk are touched only on the serial queue;
/// the outcome is behind a lock.
final class ReadBackQueue: @unchecked Sendable {
    private let device: any BlockTarget
    /// The direct (`O_DIRECT`) reader; nil when there is none, or once the device refused a direct
    /// read as invalid (touched only on the queue).
    private var direct: (any BlockTarget)?
    private let dropCaches: (Range<Int64>) throws(FerryError) -> Void
    private let payload: Manifest.Payload
    private let slot: String
    private let path: String
    private let queue = DispatchQueue(label: "ferry.read-back")
    private let group = DispatchGroup()
    private let buffer: UnsafeMutableRawBufferPointer
    /// The first chunk not yet queued, and chunks queued ahead of it (``verify(_:)``); touched
    /// only by the caller's thread.
    private var queued = 0
    private var queuedAhead = Set<Int>()
    private let outcome = Mutex<(verifiedBytes: Int64, failure: FerryError?, cancelled: Bool)>((0, nil, false))

    /// - Parameters:
    ///   - device: the slot as written.
    ///   - direct: the same slot read with `O_DIRECT` (``BlockDevice/directReader()``), if any.
    ///   - dropCaches: drops the cached pages of a synced byte range of the slot.
    init(
        device: any BlockTarget, direct: (any BlockTarget)?,
        dropCaches: @escaping (Range<Int64>) throws(FerryError) -> Void,
        payload: Manifest.Payload, slot: String, path: String
    ) {
        self.device = device
        self.direct = direct
        self.dropCaches = dropCaches
        self.payload = payload
        self.slot = slot
        self.path = path
        buffer = .allocate(byteCount: Int(payload.chunkSize), alignment: 4096)
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
        let range = queued..<min(max(end, queued), payload.chunks.count)
        queued = range.upperBound
        verify(range.filter { queuedAhead.remove($0) == nil }, ahead: false)
    }

    /// Queues `chunks` (in this order) ahead of the rest: chunks written out of order, such as
    /// the zero chunks zeroed first. Call only after they were synced.
    func verify(_ chunks: [Int]) {
        verify(chunks.filter { $0 >= queued && !queuedAhead.contains($0) }, ahead: true)
    }

    private func verify(_ chunks: [Int], ahead: Bool) {
        guard !chunks.isEmpty else { return }
        if ahead { queuedAhead.formUnion(chunks) }
        queue.async(group: group) { self.check(chunks) }
    }

    /// Stops reading back (after the chunk being read) and waits: for the way out of a failed
    /// write, before the device is closed.
    func cancel() {
        outcome.withLock { $0.cancelled = true }
        group.wait()
    }

    /// Waits for every queued chunk; throws the first failure.
    func finish() throws(FerryError) {
        group.wait()
        if let failure { throw failure }
    }

    /// The byte range of chunk `index` in the slot.
    private func range(_ index: Int) -> Range<Int64> {
        let offset = Int64(index) * payload.chunkSize
        return offset..<(offset + Int64(payload.decodedSize(ofChunk: index)))
    }

    /// The byte ranges of `chunks`, adjacent chunks merged.
    private func spans(_ chunks: [Int]) -> [Range<Int64>] { Installer.spans(of: chunks, in: payload) }

    /// Runs on the queue.
    private func check(_ chunks: [Int]) {
        guard outcome.withLock({ $0.failure == nil && !$0.cancelled }) else { return }
        do throws(FerryError) {
            // Buffered reads must not be served from the pages written a moment ago.
            var dropped = direct == nil
            if dropped { for span in spans(chunks) { try dropCaches(span) } }
            for index in chunks {
                if outcome.withLock({ $0.cancelled }) { return }
                let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<payload.decodedSize(ofChunk: index)])
                let offset = range(index).lowerBound
                if !(try readDirectly(into: bytes, at: offset)) {
                    if !dropped {
                        for span in spans(chunks) { try dropCaches(span) }
                        dropped = true
                    }
                    try device.read(into: bytes, at: offset)
                }
                guard SHA256Hasher.hashNotingZeros(UnsafeRawBufferPointer(bytes)) == payload.chunks[index].decodedSHA256
                else {
                    throw FerryError(
                        code: .readBackMismatch,
                        message:
                            "slot '\(slot)' (\(path)) reads back differently from what was written (chunk \(index)): the device is failing"
                    )
                }
                outcome.withLock { $0.verifiedBytes += Int64(bytes.count) }
            }
            // What was written and read back need not stay cached (memory is scarce on a device).
            for span in spans(chunks) { try dropCaches(span) }
        } catch {
            outcome.withLock { $0.failure = $0.failure ?? error }
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
