internal import CZstd
import FerrySystem

/// Compresses and decompresses payload chunks with zstd: each chunk is one complete zstd frame
/// that records its decoded size (docs/bundle-format.md).
///
/// As with xz, every chunk is compressed on its own, so a device checks each before writing it,
/// decodes chunks in parallel on every core and resumes at any chunk; the concatenated chunks of a
/// payload are an ordinary multi-frame .zst file that `zstd -dc` decodes. zstd decodes several
/// times faster than xz at a compressed size close to it, which is what a device whose storage is
/// faster than its xz decoding needs (docs/install.md, "Which codec").
///
/// Frames carry no checksum of their own: every caller compares the decoded bytes with the
/// chunk's signed SHA-256. Encoding is deterministic for the same bytes, chunk size and level.
public enum ZstdChunkCodec {
    /// The levels `encode` takes (zstd's 1 to 19; 20 to 22 need far more memory to decode).
    public static let levels: ClosedRange<Int> = 1...19
    /// The default level: 19 is zstd's best ratio before its "ultra" levels; decoding speed does
    /// not depend on the level.
    public static let defaultLevel = 19
    /// The largest window a device accepts (2^27 = 128 MiB; chunks are at most 64 MiB, and Ferry's
    /// encoder caps the window at the chunk's size).
    public static let maximumWindowLog: Int32 = 27

    /// The largest frame `encode` can produce for `count` input bytes.
    public static func maximumEncodedSize(_ count: Int) -> Int { ZSTD_compressBound(count) }

    /// Compresses one chunk into `output` (at least ``maximumEncodedSize(_:)`` bytes); returns the
    /// frame's size. Every call has its own context: safe from several threads at once.
    /// - Throws: `.internal` when libzstd refuses Ferry's settings, `.io` when it cannot allocate.
    public static func encode(
        _ chunk: UnsafeRawBufferPointer, level: Int, into output: UnsafeMutableRawBufferPointer
    ) throws(FerryError) -> Int {
        precondition(levels.contains(level), "Ferry bug: zstd level \(level) is not \(levels)")
        guard let context = ZSTD_createCCtx() else {
            throw FerryError(code: .io, message: "libzstd cannot allocate a compression context")
        }
        defer { ZSTD_freeCCtx(context) }
        // The window need not be larger than the chunk: a larger one finds nothing more and costs
        // the device memory.
        var windowLog: Int32 = 10
        while windowLog < maximumWindowLog && (1 << windowLog) < chunk.count { windowLog += 1 }
        for (parameter, value) in [
            (ZSTD_c_compressionLevel, Int32(level)), (ZSTD_c_checksumFlag, 0), (ZSTD_c_contentSizeFlag, 1),
            (ZSTD_c_windowLog, windowLog),
        ] {
            let result = ZSTD_CCtx_setParameter(context, parameter, value)
            guard ZSTD_isError(result) == 0 else {
                throw FerryError(code: .internal, message: "libzstd refuses a setting: \(errorName(result))")
            }
        }
        let result = ZSTD_compress2(context, output.baseAddress, output.count, chunk.baseAddress, chunk.count)
        guard ZSTD_isError(result) == 0 else {
            throw FerryError(code: .io, message: "compressing \(chunk.count) bytes with zstd: \(errorName(result))")
        }
        return result
    }

    /// Decodes one chunk (exactly one zstd frame) into `output`, which must be exactly its decoded size.
    /// - Throws: `.bundleInvalid` if the chunk is not one zstd frame, is corrupt or truncated, is
    ///   followed by other bytes, records or decodes to another size than `output.count`;
    ///   `.limitExceeded` if it needs a window beyond ``maximumWindowLog``; `.io` if libzstd cannot
    ///   allocate.
    public static func decode(_ compressed: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer)
        throws(FerryError)
    {
        let what = "zstd chunk of \(compressed.count) bytes"
        let frameSize = ZSTD_findFrameCompressedSize(compressed.baseAddress, compressed.count)
        guard ZSTD_isError(frameSize) == 0 else {
            throw FerryError(
                code: .bundleInvalid, message: "\(what) is not a complete zstd frame: \(errorName(frameSize))")
        }
        guard frameSize == compressed.count else {
            throw FerryError(
                code: .bundleInvalid,
                message: "\(what) holds \(compressed.count - frameSize) bytes after its zstd frame")
        }
        let recorded = ZSTD_getFrameContentSize(compressed.baseAddress, compressed.count)
        guard recorded == UInt64(output.count) else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "\(what) records \(recorded >= UInt64(1) << 62 ? "no" : "\(recorded)") decoded bytes, the manifest says \(output.count)"
            )
        }
        guard let context = ZSTD_createDCtx() else {
            throw FerryError(code: .io, message: "libzstd cannot allocate a decompression context")
        }
        defer { ZSTD_freeDCtx(context) }
        _ = ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, maximumWindowLog)
        let result = ZSTD_decompressDCtx(
            context, output.baseAddress, output.count, compressed.baseAddress, compressed.count)
        guard ZSTD_isError(result) == 0 else {
            if ZSTD_getErrorCode(result) == ZSTD_error_frameParameter_windowTooLarge {
                throw FerryError(
                    code: .limitExceeded, message: "\(what) needs a window larger than 2^\(maximumWindowLog) bytes")
            }
            throw FerryError(code: .bundleInvalid, message: "\(what) is corrupt: \(errorName(result))")
        }
        guard result == output.count else {
            throw FerryError(
                code: .bundleInvalid, message: "\(what) decodes to \(result) bytes, the manifest says \(output.count)")
        }
    }

    /// Reads `source` to its end in chunks of `chunkSize` bytes, compresses them on `threads`
    /// threads at `level`, and hands them to `body` in order (``ChunkPipeline``).
    public static func encodeChunks(
        source: ByteSource, chunkSize: Int, threads: Int = ProcessEnvironment.processorCount,
        level: Int = defaultLevel, body: (ChunkPipeline.EncodedChunk) throws(FerryError) -> Void
    ) throws(FerryError) {
        precondition(levels.contains(level), "Ferry bug: zstd level \(level) is not \(levels)")
        try ChunkPipeline.encode(
            source: source, chunkSize: chunkSize, threads: threads, bound: maximumEncodedSize,
            encode: { (chunk, output) throws(FerryError) in try ZstdChunkCodec.encode(chunk, level: level, into: output)
            },
            body: body)
    }

    private static func errorName(_ code: Int) -> String { String(cString: ZSTD_getErrorName(code)) }
}
