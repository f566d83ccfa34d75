import FerryCrypto
import FerrySystem
import FerryXZ
import FerryZstd

/// A payload read as a stream (a delta, which its applier pulls), chunk by chunk: each chunk's
/// compressed SHA-256, decoded size and decoded SHA-256 are checked before any of its bytes are
/// handed out, as ``BundleReader/readPayload(_:resumeAt:checkWholeHash:body:)`` does for images.
/// Memory: one stored and one decoded chunk.
public final class PayloadStream: ByteSource {
    public let payload: Manifest.Payload
    private let reader: BundleReader
    /// The content cipher of an encrypted bundle, and the payload's index (its chunks' nonces).
    private let cipher: ChunkCipher?
    private let payloadIndex: Int
    private let stored: UnsafeMutableRawBufferPointer
    private let decoded: UnsafeMutableRawBufferPointer
    /// The next chunk to read from the member.
    private var nextChunk = 0
    /// The current chunk's decoded bytes not yet handed out.
    private var available: Range<Int> = 0..<0
    /// Bytes of the payload handed out or skipped so far.
    public private(set) var position: Int64 = 0

    public var sourceName: String { "payload '\(payload.member)'" }

    /// Moves the bundle reader to `payload`'s member (which must come next).
    /// - Throws: `.bundleInvalid` / `.truncated` when the member is not next or has the wrong size.
    public init(reader: BundleReader, payload: Manifest.Payload) throws(FerryError) {
        _ = try reader.nextMember(named: payload.member, size: payload.storedSize)
        (cipher, payloadIndex) = try reader.sealing(of: payload)
        self.reader = reader
        self.payload = payload
        let chunkSize = Int(payload.chunkSize)
        stored = .allocate(byteCount: Manifest.Payload.storedBound(ofChunkSize: chunkSize), alignment: 4096)
        decoded = .allocate(byteCount: chunkSize, alignment: 4096)
    }

    deinit {
        stored.deallocate()
        decoded.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        if available.isEmpty {
            guard nextChunk < payload.chunks.count else { return 0 }
            try loadChunk()
        }
        let count = min(buffer.count, available.count)
        buffer.copyMemory(
            from: UnsafeRawBufferPointer(rebasing: decoded[available.lowerBound..<(available.lowerBound + count)]))
        available = (available.lowerBound + count)..<available.upperBound
        position += Int64(count)
        return count
    }

    /// Skips forward: whole chunks are skipped unread (a seek or a range request), the rest read
    /// and checked like any chunk.
    public func skip(_ count: Int64) throws(FerryError) {
        var left = min(count, payload.size - position)
        let fromCurrent = min(left, Int64(available.count))
        available = (available.lowerBound + Int(fromCurrent))..<available.upperBound
        position += fromCurrent
        left -= fromCurrent
        var skipped: Int64 = 0
        while left > 0, nextChunk < payload.chunks.count, decodedSize(nextChunk) <= left {
            let size = decodedSize(nextChunk)
            skipped += payload.chunks[nextChunk].size
            nextChunk += 1
            left -= size
            position += size
        }
        if skipped > 0 { try reader.tar.skipContent(skipped) }
        if left > 0 {
            try loadChunk()
            available = (available.lowerBound + Int(left))..<available.upperBound
            position += left
        }
    }

    /// Whether every byte of the payload was handed out or skipped.
    public var isAtEnd: Bool { position == payload.size }

    private func decodedSize(_ index: Int) -> Int64 { Int64(payload.decodedSize(ofChunk: index)) }

    private func loadChunk() throws(FerryError) {
        let index = nextChunk
        let chunk = payload.chunks[index]
        let input = UnsafeMutableRawBufferPointer(rebasing: stored[..<Int(chunk.size)])
        var done = 0
        while done < input.count {
            let read = try reader.tar.readContent(into: UnsafeMutableRawBufferPointer(rebasing: input[done...]))
            guard read > 0 else {
                throw FerryError(code: .truncated, message: "payload '\(payload.member)' ends inside chunk \(index)")
            }
            done += read
        }
        try ChunkCheck.compressed(UnsafeRawBufferPointer(input), chunk: chunk, index: index, member: payload.member)
        let size = Int(decodedSize(index))
        let output = UnsafeMutableRawBufferPointer(rebasing: decoded[..<size])
        if ChunkCheck.isZeros(chunk, decodedSize: size) {
            output.initializeMemory(as: UInt8.self, repeating: 0)
            nextChunk += 1
            available = 0..<size
            return
        }
        do throws(FerryError) {
            try ChunkCheck.decode(
                input, into: output, compression: payload.compression, cipher: cipher,
                place: ChunkCheck.Place(payload: payloadIndex, chunk: index))
        } catch {
            throw error.prefixed("payload '\(payload.member)' chunk \(index)")
        }
        try ChunkCheck.decoded(
            SHA256Hasher.hashNotingZeros(UnsafeRawBufferPointer(output)), chunk: chunk, index: index,
            member: payload.member)
        nextChunk += 1
        available = 0..<size
    }
}

extension Manifest.Payload {
    /// The most stored (compressed) bytes a chunk of `chunkSize` decoded bytes may take: xz's and
    /// zstd's worst cases for incompressible data (and an encrypted chunk's 16-byte tag) are well
    /// within an eighth plus 4 KiB. The manifest
    /// refuses larger chunks, and readers size their buffers by it.
    public static func storedBound(ofChunkSize chunkSize: Int) -> Int { chunkSize + chunkSize / 8 + 4096 }

    /// The decoded size of chunk `index` (the last one may be short).
    public func decodedSize(ofChunk index: Int) -> Int {
        index == chunks.count - 1 ? Int(size - chunkSize * Int64(index)) : Int(chunkSize)
    }

    /// The chunks whose signed decoded SHA-256 is that of zeros: they decode to zeros by
    /// definition (``ChunkCheck/isZeros(_:decodedSize:)``), so an installer may zero their range
    /// of the slot before their stored bytes even arrive.
    public var zeroChunks: [Int] {
        chunks.indices.filter { ChunkCheck.isZeros(chunks[$0], decodedSize: decodedSize(ofChunk: $0)) }
    }
}

/// The checks every chunk of every payload passes, whoever reads it.
enum ChunkCheck {
    /// Whether the chunk's signed decoded SHA-256 is that of `decodedSize` zero bytes. Such a chunk
    /// (the empty blocks of a filesystem image, often half of it) decodes to zeros by definition,
    /// since any other decoding would fail its hash check, so readers skip decoding it. What is
    /// written still follows from signed data only: its compressed bytes are checked as any
    /// chunk's, and its decoded bytes are the ones its signed hash names.
    static func isZeros(_ chunk: Manifest.Chunk, decodedSize: Int) -> Bool {
        chunk.decodedSHA256 == SHA256Hasher.digestOfZeros(count: decodedSize)
    }

    /// - Throws: `.bundleInvalid` when the stored bytes do not match the chunk's SHA-256.
    static func compressed(_ bytes: UnsafeRawBufferPointer, chunk: Manifest.Chunk, index: Int, member: String)
        throws(FerryError)
    {
        guard SHA256Hasher.hash(bytes) == chunk.sha256 else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "payload '\(member)' chunk \(index) (bytes \(chunk.offset)..<\(chunk.offset + chunk.size)) does not match its SHA-256: the bundle is corrupt"
            )
        }
    }

    /// Where a chunk is, for the nonce of an encrypted bundle: the payload's index in the
    /// manifest and the chunk's in the payload.
    struct Place: Sendable {
        var payload: Int
        var chunk: Int
    }

    /// Opens (an encrypted bundle's chunk, in place), then decodes (or copies) one chunk to
    /// exactly `output.count` bytes.
    static func decode(
        _ stored: UnsafeMutableRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
        compression: Manifest.Compression, cipher: ChunkCipher?, place: Place
    )
        throws(FerryError)
    {
        var input = UnsafeRawBufferPointer(stored)
        if let cipher {
            let count = try cipher.open(stored, payload: place.payload, chunk: place.chunk)
            input = UnsafeRawBufferPointer(rebasing: stored[..<count])
        }
        switch compression {
        case .xz:
            // The stream's CRC64 is not checked: every caller compares the decoded bytes with the
            // chunk's signed decoded SHA-256 before using them (about 7 % less decoding time).
            try XZChunkCodec.decode(input, into: output, expectedSize: output.count, checkIntegrity: false)
        case .zstd:
            try ZstdChunkCodec.decode(input, into: output)
        case .none:
            guard input.count == output.count else {
                throw FerryError(code: .bundleInvalid, message: "a stored chunk has the wrong size")
            }
            output.copyMemory(from: input)
        }
    }

    /// - Throws: `.bundleInvalid` when the decoded bytes do not match the chunk's decoded SHA-256.
    static func decoded(_ digest: SHA256Digest?, chunk: Manifest.Chunk, index: Int, member: String) throws(FerryError) {
        guard digest == chunk.decodedSHA256 else {
            throw FerryError(
                code: .bundleInvalid,
                message: "payload '\(member)' chunk \(index) decodes to data that does not match its SHA-256")
        }
    }
}
