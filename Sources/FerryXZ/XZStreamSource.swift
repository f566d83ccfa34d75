internal import CLzma
import FerrySystem

/// Decodes a whole .xz file (one or more concatenated streams) as a `ByteSource`, with bounded
/// memory: the host side reads `image.xz` inputs through it to cut them into chunks.
public final class XZStreamSource: ByteSource {
    public var sourceName: String { "\(inner.sourceName) (xz)" }
    private let inner: any ByteSource
    /// liblzma keeps pointers into the stream struct between calls: it lives on the heap, at a fixed address.
    private let stream: UnsafeMutablePointer<lzma_stream>
    private let input: UnsafeMutableRawBufferPointer
    private var finished = false

    /// - Parameter memoryLimit: the most the decoder may allocate (the default fits `xz -9`).
    public init(source: any ByteSource, memoryLimit: UInt64 = 256 << 20) throws(FerryError) {
        inner = source
        input = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        stream = UnsafeMutablePointer<lzma_stream>.allocate(capacity: 1)
        stream.initialize(to: CLzma_stream_init())
        let result = lzma_stream_decoder(stream, memoryLimit, CLzma_CONCATENATED)
        guard result == LZMA_OK else {
            input.deallocate()
            stream.deallocate()
            throw FerryError(
                code: .io,
                message: "cannot start the xz decoder for \(source.sourceName) (lzma error \(result.rawValue))")
        }
    }

    deinit {
        lzma_end(stream)
        stream.deallocate()
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        guard !finished, buffer.count > 0 else { return 0 }
        stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_out = buffer.count
        while stream.pointee.avail_out == buffer.count {
            var action = LZMA_RUN
            if stream.pointee.avail_in == 0 {
                let count = try inner.read(into: input)
                stream.pointee.next_in = UnsafePointer(input.baseAddress!.assumingMemoryBound(to: UInt8.self))
                stream.pointee.avail_in = count
                if count == 0 { action = LZMA_FINISH }
            }
            let result = lzma_code(stream, action)
            switch result {
            case LZMA_OK: continue
            case LZMA_STREAM_END:
                finished = true
                return buffer.count - stream.pointee.avail_out
            case LZMA_MEMLIMIT_ERROR:
                throw FerryError(
                    code: .limitExceeded, message: "\(sourceName) needs more memory to decode than allowed")
            case LZMA_FORMAT_ERROR:
                throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is not an xz file")
            case LZMA_BUF_ERROR:
                throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is truncated xz data")
            case LZMA_DATA_ERROR:
                throw FerryError(code: .bundleInvalid, message: "\(inner.sourceName) is corrupt xz data")
            default:
                throw FerryError(
                    code: .io, message: "decoding \(inner.sourceName) failed (lzma error \(result.rawValue))")
            }
        }
        return buffer.count - stream.pointee.avail_out
    }
}
