internal import CLzma
import FerrySystem

/// Compresses and decompresses payload chunks: each chunk is one complete, single-block .xz stream.
///
/// A payload is cut into chunks of a fixed decoded size (the last one may be shorter), and each is
/// compressed on its own. The bundle manifest lists every chunk's compressed offset and size and both
/// hashes, so the device can check a chunk before writing it, decode chunks in parallel, and resume an
/// interrupted install at a chunk boundary. Because every chunk is a whole stream, the concatenated
/// chunks of a payload are also an ordinary multi-stream .xz file that `xz -dc` decodes.
///
/// Encoding is deterministic: the same bytes, chunk size and preset always give the same output,
/// whatever the number of threads.
public enum XZChunkCodec {
    /// The default memory limit for decoding one chunk: 128 MiB.
    ///
    /// Chunks made by Ferry need about their decoded size (the dictionary is capped at the chunk size);
    /// a stream made by `xz -9` needs 65 MiB.
    public static let defaultMemoryLimit = 128 << 20

    /// One compressed chunk of a payload, as produced by
    /// ``encodeChunks(source:chunkSize:threads:preset:extreme:body:)``.
    public typealias EncodedChunk = ChunkPipeline.EncodedChunk

    // MARK: - One chunk

    /// Compresses one chunk into a complete .xz stream with one LZMA2 block and a CRC64 check.
    ///
    /// An empty chunk gives a valid empty stream (no blocks, 32 bytes). The LZMA2 dictionary is
    /// capped at the chunk's size: a larger one cannot find more matches, only costs memory when
    /// encoding and when decoding on the device.
    ///
    /// - Parameters:
    ///   - chunk: The decoded bytes.
    ///   - preset: The xz compression level, 0 to 9 (traps otherwise). The default is 6, as `xz`.
    ///   - extreme: Whether to spend more CPU time for slightly better compression (`xz --extreme`).
    ///     The default is `false`.
    /// - Returns: The .xz stream.
    /// - Throws: `.io` if liblzma cannot allocate memory; `.internal` if liblzma rejects Ferry's settings.
    ///
    /// The corresponding C function is `lzma_stream_buffer_encode(3)`.
    public static func encode(
        _ chunk: UnsafeRawBufferPointer, preset: Int = 6, extreme: Bool = false
    ) throws(FerryError) -> [UInt8] {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumEncodedSize(chunk.count), alignment: 16)
        defer { scratch.deallocate() }
        let count = try encode(chunk, preset: preset, extreme: extreme, into: scratch)
        return Array(UnsafeRawBufferPointer(rebasing: scratch[..<count]))
    }

    /// Decodes one chunk (exactly one .xz stream) into `output`.
    ///
    /// The chunk must decode to exactly `expectedSize` bytes and must contain nothing after the end of
    /// its stream. The stream's integrity check (CRC32, CRC64 or SHA-256) is verified unless
    /// `checkIntegrity` is false. On failure the
    /// first `expectedSize` bytes of `output` hold unspecified data.
    ///
    /// - Parameters:
    ///   - compressed: The chunk as listed in the manifest.
    ///   - output: Where the decoded bytes go; at least `expectedSize` bytes (traps otherwise). Only the
    ///     first `expectedSize` bytes are written.
    ///   - expectedSize: The decoded size listed in the manifest.
    ///   - memoryLimit: The most memory the decoder may use. The default is ``defaultMemoryLimit``.
    ///   - checkIntegrity: Whether to verify the stream's own check (`LZMA_IGNORE_CHECK` when false):
    ///     pass false only when the caller compares the decoded bytes with a stronger hash anyway.
    /// - Throws: `.bundleInvalid` if the chunk is not .xz, corrupt, truncated, followed by other bytes,
    ///   or decodes to more or fewer than `expectedSize` bytes; `.limitExceeded` if decoding it needs
    ///   more than `memoryLimit`; `.io` if liblzma cannot allocate memory.
    ///
    /// The corresponding C functions are `lzma_stream_decoder(3)` and `lzma_code(3)`.
    public static func decode(
        _ compressed: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, expectedSize: Int,
        memoryLimit: Int = defaultMemoryLimit, checkIntegrity: Bool = true
    ) throws(FerryError) {
        precondition(
            expectedSize >= 0 && expectedSize <= output.count,
            "Ferry bug: decoding \(expectedSize) bytes into a buffer of \(output.count)")
        precondition(memoryLimit > 0, "Ferry bug: xz memory limit \(memoryLimit)")
        let what = "xz chunk of \(compressed.count) bytes"

        // The multi-call decoder, not lzma_stream_buffer_decode: that one reports a truncated chunk and
        // a chunk that decodes to too many bytes alike (LZMA_BUF_ERROR), and we want to say which.
        // liblzma keeps no pointer to the lzma_stream, but it lives on the heap all the same.
        let stream = UnsafeMutablePointer<lzma_stream>.allocate(capacity: 1)
        stream.initialize(to: CLzma_stream_init())
        // One spare output byte, to learn whether the chunk goes on once `output` is full.
        let spare = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        defer {
            lzma_end(stream)
            stream.deinitialize(count: 1).deallocate()
            spare.deallocate()
        }
        let initialized = lzma_stream_decoder(stream, UInt64(memoryLimit), checkIntegrity ? 0 : CLzma_IGNORE_CHECK)
        guard initialized == LZMA_OK else {
            throw XZError(initialized, message: reason(initialized)).ferryError("setting up the decoder for \(what)")
        }

        stream.pointee.next_in = compressed.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_in = compressed.count
        stream.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_out = expectedSize
        while true {
            let result = lzma_code(stream, LZMA_FINISH)
            if result == LZMA_STREAM_END { break }
            if result == LZMA_MEMLIMIT_ERROR {
                throw XZError(
                    result,
                    message: "it needs \(mebibytes(lzma_memusage(stream))) of memory, "
                        + "more than the limit of \(mebibytes(UInt64(memoryLimit)))"
                ).ferryError("decoding \(what)")
            }
            // LZMA_BUF_ERROR: no progress was possible (the same cases as below, caught one call later).
            guard result == LZMA_OK || result == LZMA_BUF_ERROR else {
                throw XZError(result, message: reason(result)).ferryError("decoding \(what)")
            }
            if stream.pointee.total_out > UInt64(expectedSize) {
                throw FerryError(
                    code: .bundleInvalid, message: "\(what) decodes to more than the expected \(expectedSize) bytes")
            }
            if stream.pointee.avail_out == 0 {
                // `output` is full: the stream may have only its index and footer left. Offer the spare byte.
                stream.pointee.next_out = spare
                stream.pointee.avail_out = 1
                continue
            }
            if stream.pointee.avail_in == 0 {
                throw FerryError(
                    code: .bundleInvalid,
                    message: "\(what) is truncated: it ends after \(byteCount(stream.pointee.total_out)) "
                        + "of decoded data, before the end of its xz stream")
            }
            // Input left and output room, yet no progress: liblzma would not normally stop here.
            throw XZError(result, message: reason(result)).ferryError("decoding \(what)")
        }
        if stream.pointee.total_out != UInt64(expectedSize) {
            throw FerryError(
                code: .bundleInvalid,
                message: "\(what) decodes to \(stream.pointee.total_out) bytes, expected \(expectedSize)")
        }
        if stream.pointee.avail_in != 0 {
            throw FerryError(
                code: .bundleInvalid,
                message: "\(what) has \(byteCount(stream.pointee.avail_in)) after the end of its xz stream")
        }
    }

    // MARK: - A whole payload

    /// Reads `source` to its end in chunks of `chunkSize` bytes, compresses them on `threads` threads,
    /// and hands them to `body` in order.
    ///
    /// Chunks are read in batches of `threads`; each batch is compressed in parallel, then passed to
    /// `body` on the calling thread before the next batch is read. Memory therefore stays bounded at
    /// about `2 × threads` chunks (decoded and encoded), plus liblzma's working memory for each thread
    /// (roughly ten times the chunk size at preset 6). The last chunk may be shorter than `chunkSize`;
    /// an empty source gives one empty chunk, so the concatenated output is always a valid .xz file.
    ///
    /// - Parameters:
    ///   - source: The payload; read sequentially until it returns 0.
    ///   - chunkSize: The decoded size of every chunk but the last (more than 0; traps otherwise).
    ///   - threads: The number of chunks compressed at once (more than 0). The default is the number of
    ///     online processors.
    ///   - preset: The xz compression level, 0 to 9. The default is 6.
    ///   - extreme: Whether to use the extreme variant of the preset. The default is `false`.
    ///   - body: Called once per chunk, in payload order, on the calling thread.
    /// - Throws: Whatever `source.read(into:)` or `body` throws; `.io` if liblzma cannot allocate memory;
    ///   `.internal` if liblzma rejects Ferry's settings. Chunks already handed to `body` stay valid.
    ///
    /// The corresponding C function is `lzma_stream_buffer_encode(3)`.
    public static func encodeChunks(
        source: ByteSource, chunkSize: Int, threads: Int = ProcessEnvironment.processorCount, preset: Int = 6,
        extreme: Bool = false, body: (EncodedChunk) throws(FerryError) -> Void
    ) throws(FerryError) {
        precondition((0...9).contains(preset), "Ferry bug: xz preset \(preset) is not 0...9")
        try ChunkPipeline.encode(
            source: source, chunkSize: chunkSize, threads: threads, bound: maximumEncodedSize,
            encode: { (chunk, output) throws(FerryError) in
                try XZChunkCodec.encode(chunk, preset: preset, extreme: extreme, into: output)
            }, body: body)
    }

    // MARK: - Internals

    /// The largest .xz stream that `encode` can produce for `count` input bytes.
    static func maximumEncodedSize(_ count: Int) -> Int {
        let bound = lzma_stream_buffer_bound(count)
        precondition(bound > 0, "Ferry bug: xz chunk of \(count) bytes is too large")
        return bound
    }

    /// Compresses `chunk` into `output` (at least ``maximumEncodedSize(_:)`` bytes) and returns the
    /// stream's size. Safe to call from several threads at once: every call has its own encoder.
    static func encode(
        _ chunk: UnsafeRawBufferPointer, preset: Int, extreme: Bool, into output: UnsafeMutableRawBufferPointer
    ) throws(FerryError) -> Int {
        precondition((0...9).contains(preset), "Ferry bug: xz preset \(preset) is not 0...9")
        var options = lzma_options_lzma()
        let presetFlags = UInt32(preset) | (extreme ? CLzma_PRESET_EXTREME : 0)
        // lzma_lzma_preset returns true (non-zero) for an unsupported preset; 0...9 always is.
        precondition(lzma_lzma_preset(&options, presetFlags) == 0, "Ferry bug: liblzma rejects preset \(preset)")
        options.dict_size = max(CLzma_DICT_SIZE_MIN, min(options.dict_size, UInt32(clamping: chunk.count)))

        var outputPosition = 0
        let result = withUnsafeMutablePointer(to: &options) { options in
            var filters = [
                lzma_filter(id: CLzma_FILTER_LZMA2, options: UnsafeMutableRawPointer(options)),
                lzma_filter(id: CLzma_VLI_UNKNOWN, options: nil),
            ]
            return filters.withUnsafeMutableBufferPointer { filters in
                lzma_stream_buffer_encode(
                    filters.baseAddress, LZMA_CHECK_CRC64, nil,
                    chunk.baseAddress?.assumingMemoryBound(to: UInt8.self), chunk.count,
                    output.baseAddress?.assumingMemoryBound(to: UInt8.self), &outputPosition, output.count)
            }
        }
        guard result == LZMA_OK else {
            var error = XZError(result, message: reason(result)).ferryError("compressing \(chunk.count) bytes")
            // Only allocation can fail for valid input; anything else means Ferry set up liblzma wrongly.
            if result != LZMA_MEM_ERROR { error.code = .internal }
            throw error
        }
        return outputPosition
    }

    /// What a liblzma return code means, in words.
    private static func reason(_ result: lzma_ret) -> String {
        switch result {
        case LZMA_DATA_ERROR: "the compressed data is corrupt (or fails its integrity check)"
        case LZMA_FORMAT_ERROR: "it is not an xz stream"
        case LZMA_OPTIONS_ERROR: "it uses unsupported xz options"
        case LZMA_UNSUPPORTED_CHECK: "it uses an unsupported integrity check"
        case LZMA_MEM_ERROR: "liblzma cannot allocate memory"
        case LZMA_MEMLIMIT_ERROR: "it needs more memory than allowed"
        case LZMA_BUF_ERROR: "the output buffer is too small"
        case LZMA_PROG_ERROR: "liblzma was called with invalid arguments"
        default: "liblzma failed"
        }
    }

    private static func byteCount(_ count: some BinaryInteger) -> String {
        count == 1 ? "1 byte" : "\(count) bytes"
    }

    private static func mebibytes(_ bytes: UInt64) -> String {
        "\((bytes + (1 << 20) - 1) >> 20) MiB"
    }
}
