import FerryCrypto
import FerrySystem

/// Passes a source through while hashing it: the whole stream, and each fixed-size chunk.
///
/// The bundle writer reads images through it, so the decoded SHA-256 of every chunk is known
/// without decoding the compressed chunk again.
final class HashingByteSource: ByteSource {
    let inner: any ByteSource
    let chunkSize: Int
    var sourceName: String { inner.sourceName }
    private let whole = SHA256Hasher()
    private var current = SHA256Hasher()
    private var inChunk = 0
    private(set) var byteCount: Int64 = 0
    /// Decoded SHA-256 of each completed chunk, by index.
    private(set) var chunkDigests: [SHA256Digest] = []
    private var ended = false

    init(_ inner: any ByteSource, chunkSize: Int) {
        self.inner = inner
        self.chunkSize = chunkSize
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        let count = try inner.read(into: buffer)
        if count == 0 {
            if !ended && inChunk > 0 { chunkDigests.append(current.finalize()) }
            ended = true
            return 0
        }
        var done = 0
        while done < count {
            let take = min(count - done, chunkSize - inChunk)
            let slice = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[done..<(done + take)])
            current.update(slice)
            whole.update(slice)
            inChunk += take
            done += take
            if inChunk == chunkSize {
                chunkDigests.append(current.finalize())
                current = SHA256Hasher()
                inChunk = 0
            }
        }
        byteCount += Int64(count)
        return count
    }

    /// The SHA-256 of everything read (call once, after the end).
    func finalize() -> SHA256Digest { whole.finalize() }
}
