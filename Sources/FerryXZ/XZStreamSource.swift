internal import CLzma
import FerrySystem

/// Decodes a whole .xz file (one or more concatenated streams) as a `ByteSource`, with bounded
/// memory: the host side reads `image.xz` inputs through it to cut them into chunks.
public final class XZStreamSource: ByteSource {
    public var sourceName: String { "\(inner.sourceName) (xz)" }
    private let inner: any ByteSource
    private var stream = lzma_stream()
    private let input: UnsafeMutableRawBufferPointer
    private var finished = false

    /// - Parameter memoryLimit: the most the decoder may allocate (the default fits `xz -9`).
    public init(source: any ByteSource, memoryLimit: UInt64 = 256 << 20) throws(FerryError) {
        inner = source
        input = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        let result = lzma_stream_decoder(&stream, memoryLimit, CLzma_CONCATENATED)
        guard result == LZMA_OK else {
            input.deallocate()
            throw FerryError(code: .io, message: "cannot start the xz decoder for \(source.sourceName) (lzma error \(result.rawValue))")
        }
    }

    deinit {
        lzma_end(&stream)
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        guard !finished, buffer.count > 0 else { return 0 }
        stream.next_out = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        stream.avail_out = buffer.count
        while stream.avail_out == buffer.count {
            var action = LZMA_RUN
            if stream.avail_in == 0 {
                let count = try inner.read(into: input)
                stream.next_in = UnsafePointer(input.baseAddress!.assumingMemoryBound(to: UInt8.self))
                stream.avail_in = count
                if count == 0 { action = LZMA_FINISH }
            }
            let result = lzma_code(&stream, action)
            switch result {
            case LZMA_OK: continue
            case LZMA_STREAM_END:
                finished = true
                return buffer.count - stream.avail_out
            case LZMA_MEMLIMIT_ERROR:
                throw FerryError(code: .limitExceeded, message: "\(sourceName) needs more memory to decode than allowed")
            case LZMA_FORMAT_ERROR:
                throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is not an xz file")
            case LZMA_DATA_ERROR, LZMA_BUF_ERROR:
                throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is corrupt or truncated xz data")
            default:
                throw FerryError(code: .io, message: "decoding \(inner.sourceName) failed (lzma error \(result.rawValue))")
            }
        }
        return buffer.count - stream.avail_out
    }
}
