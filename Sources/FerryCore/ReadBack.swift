import Dispatch
import FerryBundle
import FerryCrypto
import FerrySystem

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
            let hasher = SHA256Hasher()
            hasher.update(UnsafeRawBufferPointer(buffer))
            matches[worker] = hasher.finalize() == expected
        } catch {
            errors[worker] = error
        }
    }
}
