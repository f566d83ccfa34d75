internal import CZstd
import FerrySystem

/// Decodes a whole .zst file (one or more concatenated frames) as a `ByteSource`, with bounded
/// memory: the host side reads `image.zst` inputs through it to cut them into chunks, and
/// `ferry write-slot` writes `.zst` images through it.
public final class ZstdStreamSource: ByteSource {
    public var sourceName: String { "\(inner.sourceName) (zstd)" }
    private let inner: any ByteSource
    private let context: OpaquePointer
    private let input: UnsafeMutableRawBufferPointer
    /// The unread part of `input`.
    private var pending: Range<Int> = 0..<0
    /// Whether the last frame read ended (so the end of the input is a clean end).
    private var frameEnded = true
    private var finished = false
    private let windowLogMax: Int32

    /// - Parameter windowLogMax: the largest window accepted (2^31: what `zstd --long=31` makes).
    public init(source: any ByteSource, windowLogMax: Int32 = 31) throws(FerryError) {
        guard let context = ZSTD_createDStream() else {
            throw FerryError(code: .io, message: "cannot start the zstd decoder for \(source.sourceName)")
        }
        inner = source
        self.context = context
        self.windowLogMax = windowLogMax
        _ = ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, windowLogMax)
        input = UnsafeMutableRawBufferPointer.allocate(byteCount: ZSTD_DStreamInSize(), alignment: 16)
    }

    deinit {
        ZSTD_freeDStream(context)
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        guard !finished, buffer.count > 0 else { return 0 }
        var output = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
        while output.pos == 0 {
            if pending.isEmpty {
                let count = try inner.read(into: input)
                if count == 0 {
                    guard frameEnded else {
                        throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is truncated zstd data")
                    }
                    finished = true
                    return 0
                }
                pending = 0..<count
            }
            var source = ZSTD_inBuffer(src: input.baseAddress! + pending.lowerBound, size: pending.count, pos: 0)
            let result = ZSTD_decompressStream(context, &output, &source)
            guard ZSTD_isError(result) == 0 else {
                if ZSTD_getErrorCode(result) == ZSTD_error_frameParameter_windowTooLarge {
                    throw FerryError(
                        code: .limitExceeded,
                        message: "\(inner.sourceName) needs a window larger than 2^\(windowLogMax) bytes to decode")
                }
                throw FerryError(
                    code: .bundleInvalid,
                    message: "\(inner.sourceName) is not valid zstd data: \(String(cString: ZSTD_getErrorName(result)))"
                )
            }
            pending = (pending.lowerBound + source.pos)..<pending.upperBound
            frameEnded = result == 0
        }
        return output.pos
    }
}
