import Dispatch
import FerryBundle
import FerryCrypto
import FerrySystem
import Synchronization

/// Verifies a written slot by reading it back from the device and comparing every chunk with the
/// decoded SHA-256 the signed manifest gives for it, on every core.
enum ReadBack {
    /// - Throws: `.io` naming the first chunk that differs; read errors.
    static func verify(_ device: some BlockTarget, payload: Manifest.Payload, slot: String, path: String) throws(FerryError) {
        let chunkSize = Int(payload.chunkSize)
        let workers = max(1, min(ProcessEnvironment.processorCount, 8, payload.chunks.count))
        // Positional reads (pread) on one descriptor are safe from several threads.
        let state = ReadBackState(workers: workers, chunkSize: chunkSize, device: device)
        defer { state.deallocate() }
        var first = 0
        while first < payload.chunks.count {
            let count = min(workers, payload.chunks.count - first)
            let base = first
            let work = { @Sendable (worker: Int) in
                let index = base + worker
                let size = index == payload.chunks.count - 1 ? Int(payload.size - payload.chunkSize * Int64(index)) : chunkSize
                state.check(worker, offset: Int64(index) * payload.chunkSize, size: size, expected: payload.chunks[index].decodedSHA256)
            }
            if count == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: count, execute: work) }
            for worker in 0..<count {
                if let error = state.errors[worker] { throw error }
                if !state.matches[worker] {
                    throw FerryError(
                        code: .readBackMismatch,
                        message: "slot '\(slot)' (\(path)) reads back differently from what was written (chunk \(first + worker)): the device is failing")
                }
            }
            first += count
        }
    }
}

/// Per-worker buffers and results; `@unchecked Sendable` because each worker touches only its
/// own index, and the caller reads the results after `concurrentPerform` returned.
private final class ReadBackState: @unchecked Sendable {
    let workers: Int
    let chunkSize: Int
    let device: any BlockTarget
    let buffers: UnsafeMutableRawBufferPointer
    let errors: UnsafeMutablePointer<FerryError?>
    let matches: UnsafeMutablePointer<Bool>

    init(workers: Int, chunkSize: Int, device: any BlockTarget) {
        self.workers = workers
        self.chunkSize = chunkSize
        self.device = device
        buffers = .allocate(byteCount: workers * chunkSize, alignment: 4096)
        errors = .allocate(capacity: workers)
        errors.initialize(repeating: nil, count: workers)
        matches = .allocate(capacity: workers)
        matches.initialize(repeating: false, count: workers)
    }

    func deallocate() {
        buffers.deallocate()
        errors.deinitialize(count: workers)
        errors.deallocate()
        matches.deallocate()
    }

    func check(_ worker: Int, offset: Int64, size: Int, expected: SHA256Digest) {
        let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[(worker * chunkSize)..<(worker * chunkSize + size)])
        errors[worker] = nil
        do throws(FerryError) {
            try device.read(into: buffer, at: offset)
            matches[worker] = SHA256Hasher.hashNotingZeros(UnsafeRawBufferPointer(buffer)) == expected
        } catch {
            errors[worker] = error
        }
    }
}

/// Reads a slot back while it is still being written: each region is verified on a background
/// thread as soon as a checkpoint made it durable (synced), so reading back overlaps decoding and
/// writing the rest instead of following it. Every chunk is still read from the device, not from
/// the page cache (its cached pages are dropped after the sync, before the read), and compared
/// with the decoded SHA-256 the signed manifest gives for it.
///
/// `@unchecked Sendable`: the buffer and the next chunk are touched only on the serial queue;
/// the outcome is behind a lock.
final class ReadBackQueue: @unchecked Sendable {
    private let device: any BlockTarget
    private let dropCaches: (Range<Int64>) throws(FerryError) -> Void
    private let payload: Manifest.Payload
    private let slot: String
    private let path: String
    private let queue = DispatchQueue(label: "ferry.read-back")
    private let group = DispatchGroup()
    private let buffer: UnsafeMutableRawBufferPointer
    /// The first chunk not yet queued (touched only by the caller's thread).
    private var queued = 0
    private let outcome = Mutex<(verifiedBytes: Int64, failure: FerryError?, cancelled: Bool)>((0, nil, false))

    /// - Parameter dropCaches: drops the cached pages of a synced byte range of the slot.
    init(
        device: any BlockTarget, dropCaches: @escaping (Range<Int64>) throws(FerryError) -> Void, payload: Manifest.Payload,
        slot: String, path: String
    ) {
        self.device = device
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

    /// Bytes read back and found equal so far.
    var verifiedBytes: Int64 { outcome.withLock { $0.verifiedBytes } }

    /// The first failure of the reads queued so far, if one was seen already (does not wait).
    var failure: FerryError? { outcome.withLock { $0.failure } }

    /// Queues chunks `queued..<end` for reading back. Call only after they were synced.
    func verify(upTo end: Int) {
        let chunks = queued..<min(end, payload.chunks.count)
        guard !chunks.isEmpty else { return }
        queued = chunks.upperBound
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

    private func size(_ index: Int) -> Int {
        index == payload.chunks.count - 1 ? Int(payload.size - payload.chunkSize * Int64(index)) : Int(payload.chunkSize)
    }

    /// Runs on the queue.
    private func check(_ chunks: Range<Int>) {
        guard outcome.withLock({ $0.failure == nil && !$0.cancelled }) else { return }
        let start = Int64(chunks.lowerBound) * payload.chunkSize
        let end = Int64(chunks.upperBound - 1) * payload.chunkSize + Int64(size(chunks.upperBound - 1))
        do throws(FerryError) {
            try dropCaches(start..<end)
            for index in chunks {
                if outcome.withLock({ $0.cancelled }) { return }
                let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<size(index)])
                let offset = Int64(index) * payload.chunkSize
                try device.read(into: bytes, at: offset)
                guard SHA256Hasher.hashNotingZeros(UnsafeRawBufferPointer(bytes)) == payload.chunks[index].decodedSHA256 else {
                    throw FerryError(
                        code: .readBackMismatch,
                        message: "slot '\(slot)' (\(path)) reads back differently from what was written (chunk \(index)): the device is failing")
                }
                outcome.withLock { $0.verifiedBytes = offset + Int64(bytes.count) }
            }
            // What was read back need not stay cached (memory is scarce on a device).
            try dropCaches(start..<end)
        } catch {
            outcome.withLock { $0.failure = $0.failure ?? error }
        }
    }
}
