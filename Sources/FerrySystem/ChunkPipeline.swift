import Dispatch

/// Compresses a payload chunk by chunk on several threads, whatever the codec (xz, zstd): the
/// chunks of a bundle payload are compressed independently (docs/bundle-format.md).
public enum ChunkPipeline {
    /// One compressed chunk of a payload.
    public struct EncodedChunk: Sendable, Equatable {
        /// The position of the chunk in the payload, from 0.
        public let index: Int
        /// Where the chunk's decoded bytes start in the payload.
        public let decodedOffset: Int64
        /// The number of decoded bytes (the chunk size, except for the last chunk).
        public let decodedSize: Int
        /// The chunk as one complete stream (an .xz stream, a zstd frame).
        public let bytes: [UInt8]

        public init(index: Int, decodedOffset: Int64, decodedSize: Int, bytes: [UInt8]) {
            self.index = index
            self.decodedOffset = decodedOffset
            self.decodedSize = decodedSize
            self.bytes = bytes
        }
    }

    /// Compresses one chunk into the output buffer (at least `bound(chunk.count)` bytes) and
    /// returns the compressed size. Called from several threads at once.
    public typealias Encoder =
        @Sendable (UnsafeRawBufferPointer, UnsafeMutableRawBufferPointer) throws(FerryError)
        -> Int

    /// Reads `source` to its end in chunks of `chunkSize` bytes, compresses them on `threads` threads,
    /// and hands them to `body` in order.
    ///
    /// Chunks are read in batches of `threads`; each batch is compressed in parallel, then passed to
    /// `body` on the calling thread before the next batch is read. Memory therefore stays bounded at
    /// about `2 × threads` chunks (decoded and encoded), plus each encoder's working memory. The last
    /// chunk may be shorter than `chunkSize`; an empty source gives one empty chunk, so the
    /// concatenated output is always a valid stream of the codec.
    /// - Parameters:
    ///   - bound: the largest compressed size of a chunk of that many bytes.
    ///   - encode: compresses one chunk.
    /// - Throws: whatever `source`, `encode` or `body` throws. Chunks already handed to `body` stay valid.
    public static func encode(
        source: ByteSource, chunkSize: Int, threads: Int, bound: (Int) -> Int, encode: @escaping Encoder,
        body: (EncodedChunk) throws(FerryError) -> Void
    ) throws(FerryError) {
        precondition(chunkSize > 0, "Ferry bug: chunk size \(chunkSize)")
        precondition(threads > 0, "Ferry bug: \(threads) compression threads")
        let batch = Batch(slots: threads, chunkSize: chunkSize, encodedBound: bound(chunkSize))
        defer { batch.deallocate() }

        var index = 0
        var decodedOffset: Int64 = 0
        var atEnd = false
        while !atEnd {
            // Read the next batch: up to `threads` chunks, stopping at the end of the source.
            var sizes: [Int] = []
            while sizes.count < threads {
                let count = try fill(batch.decodedBuffer(sizes.count), from: source)
                if count == 0 && index + sizes.count > 0 {
                    atEnd = true
                    break
                }
                sizes.append(count)
                if count < chunkSize {
                    atEnd = true
                    break
                }
            }
            if sizes.isEmpty { break }

            // Compress the batch, one chunk per worker.
            let decodedSizes = sizes
            let compress = { @Sendable (slot: Int) in
                batch.compress(slot: slot, decodedSize: decodedSizes[slot], encode)
            }
            if sizes.count == 1 {
                compress(0)
            } else {
                DispatchQueue.concurrentPerform(iterations: sizes.count, execute: compress)
            }

            // Hand the chunks over in order.
            for slot in sizes.indices {
                let bytes: [UInt8]
                switch batch.takeResult(slot) {
                case .success(let encoded): bytes = encoded
                case .failure(let error):
                    throw error.prefixed("compressing chunk \(index) of \(source.sourceName)")
                }
                try body(
                    EncodedChunk(index: index, decodedOffset: decodedOffset, decodedSize: sizes[slot], bytes: bytes))
                index += 1
                decodedOffset += Int64(sizes[slot])
            }
        }
    }

    /// The buffers of one batch: a decoded and an encoded buffer and a result per slot, allocated
    /// once and reused for every batch.
    ///
    /// It is `@unchecked Sendable` because the workers share it: each worker touches only its own slot,
    /// and the calling thread touches the slots only before `concurrentPerform` starts the workers and
    /// after it has returned, which is after every worker finished.
    private struct Batch: @unchecked Sendable {
        let chunkSize: Int
        let encodedBound: Int
        let decoded: UnsafeMutableRawBufferPointer
        let encoded: UnsafeMutableRawBufferPointer
        let results: UnsafeMutableBufferPointer<Result<Int, FerryError>?>

        init(slots: Int, chunkSize: Int, encodedBound: Int) {
            self.chunkSize = chunkSize
            self.encodedBound = encodedBound
            decoded = .allocate(byteCount: slots * chunkSize, alignment: 16)
            encoded = .allocate(byteCount: slots * encodedBound, alignment: 16)
            results = .allocate(capacity: slots)
            results.initialize(repeating: nil)
        }

        func deallocate() {
            decoded.deallocate()
            encoded.deallocate()
            results.deinitialize().deallocate()
        }

        /// Where slot `slot`'s decoded chunk is read to.
        func decodedBuffer(_ slot: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: decoded[(slot * chunkSize)..<((slot + 1) * chunkSize)])
        }

        /// Compresses slot `slot`'s first `decodedSize` bytes into its encoded buffer (a worker).
        func compress(slot: Int, decodedSize: Int, _ encode: Encoder) {
            let input = UnsafeRawBufferPointer(rebasing: decoded[(slot * chunkSize)..<(slot * chunkSize + decodedSize)])
            let output = UnsafeMutableRawBufferPointer(
                rebasing: encoded[(slot * encodedBound)..<((slot + 1) * encodedBound)])
            do throws(FerryError) {
                results[slot] = .success(try encode(input, output))
            } catch {
                results[slot] = .failure(error)
            }
        }

        /// Slot `slot`'s stream, copied out, or the error compressing it; clears the slot.
        func takeResult(_ slot: Int) -> Result<[UInt8], FerryError> {
            guard let result = results[slot] else { preconditionFailure("Ferry bug: slot \(slot) was not compressed") }
            results[slot] = nil
            return result.map { count in
                Array(UnsafeRawBufferPointer(rebasing: encoded[(slot * encodedBound)..<(slot * encodedBound + count)]))
            }
        }
    }

    /// Reads until `buffer` is full or the source ends; returns the number of bytes read.
    private static func fill(_ buffer: UnsafeMutableRawBufferPointer, from source: ByteSource) throws(FerryError)
        -> Int
    {
        var done = 0
        while done < buffer.count {
            let count = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if count == 0 { break }
            done += count
        }
        return done
    }
}
