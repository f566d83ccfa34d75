import FerrySystem
import FerryTestSupport
import FerryXZ
import Testing

/// Chunks of seeded data through encode and decode, against the real `xz` tool in both directions,
/// and every way a chunk can be bad.
@Suite struct XZChunkCodecTests {
    /// Test inputs: sizes and kinds (compressible text, incompressible random bytes).
    enum Input: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case empty, oneByte, text4MiB, random4MiB, text100KiB

        var bytes: [UInt8] {
            switch self {
            case .empty: []
            case .oneByte: [0x42]
            case .text4MiB: seededText(count: 4 << 20, seed: 1)
            case .random4MiB: seededBytes(count: 4 << 20, seed: 2)
            case .text100KiB: seededText(count: 100 << 10 + 7, seed: 3)
            }
        }

        var testDescription: String { rawValue }
    }

    static let xzMagic: [UInt8] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]

    /// Decodes `stream` into a fresh buffer of `expectedSize` bytes.
    func decoded(
        _ stream: [UInt8], expectedSize: Int, memoryLimit: Int = XZChunkCodec.defaultMemoryLimit,
        checkIntegrity: Bool = true
    ) throws -> [UInt8] {
        var output = [UInt8](repeating: 0, count: expectedSize)
        try stream.withUnsafeBytes { compressed in
            try output.withUnsafeMutableBytes { buffer in
                try XZChunkCodec.decode(
                    compressed, into: buffer, expectedSize: expectedSize, memoryLimit: memoryLimit,
                    checkIntegrity: checkIntegrity)
            }
        }
        return output
    }

    /// A stream whose CRC64 is wrong fails by default, and decodes when the caller checks the
    /// decoded bytes itself (as bundle readers do, with the chunk's SHA-256).
    @Test func theStreamCheckIsVerifiedUnlessTheCallerOptsOut() throws {
        let bytes = Input.text100KiB.bytes
        var stream = try encoded(bytes)
        // The footer (12 bytes) gives the index's size; the block's 8-byte CRC64 comes just before it.
        let footer = stream.count - 12
        let backward = Int(
            UInt32(stream[footer + 4]) | UInt32(stream[footer + 5]) << 8 | UInt32(stream[footer + 6]) << 16 | UInt32(
                stream[footer + 7]) << 24)
        let check = footer - (backward + 1) * 4 - 8
        stream[check] ^= 0x01
        let error = #expect(throws: FerryError.self) { try decoded(stream, expectedSize: bytes.count) }
        #expect(error?.code == .bundleInvalid, "\(error?.message ?? "")")
        #expect(try decoded(stream, expectedSize: bytes.count, checkIntegrity: false) == bytes)
    }

    func encoded(_ bytes: [UInt8], preset: Int = 6, extreme: Bool = false) throws -> [UInt8] {
        try bytes.withUnsafeBytes { chunk in try XZChunkCodec.encode(chunk, preset: preset, extreme: extreme) }
    }

    /// All chunks of `bytes`, collected.
    func chunks(of bytes: [UInt8], chunkSize: Int, threads: Int, source: ByteSource? = nil) throws
        -> [XZChunkCodec.EncodedChunk]
    {
        var result: [XZChunkCodec.EncodedChunk] = []
        try XZChunkCodec.encodeChunks(
            source: source ?? MemoryByteSource(bytes), chunkSize: chunkSize, threads: threads, preset: 6
        ) { chunk in result.append(chunk) }
        return result
    }

    // MARK: - Round trips

    @Test(arguments: Input.allCases)
    func roundTrip(input: Input) throws {
        let bytes = input.bytes
        let stream = try encoded(bytes)
        #expect(Array(stream.prefix(6)) == Self.xzMagic)
        #expect(try decoded(stream, expectedSize: bytes.count) == bytes)
        if input == .text4MiB { #expect(stream.count < bytes.count / 2) }
        if input == .random4MiB { #expect(stream.count < bytes.count + 1024) }
    }

    @Test(arguments: [(0, false), (1, false), (9, false), (6, true), (9, true)])
    func everyPresetRoundTrips(preset: Int, extreme: Bool) throws {
        let bytes = Input.text100KiB.bytes
        #expect(try decoded(encoded(bytes, preset: preset, extreme: extreme), expectedSize: bytes.count) == bytes)
    }

    /// A bigger output buffer than the chunk (a reused buffer) is fine; only the prefix is written.
    @Test func decodesIntoThePrefixOfALargerBuffer() throws {
        let bytes = Input.text100KiB.bytes
        let stream = try encoded(bytes)
        var output = [UInt8](repeating: 0xEE, count: bytes.count + 100)
        try stream.withUnsafeBytes { compressed in
            try output.withUnsafeMutableBytes { buffer in
                try XZChunkCodec.decode(compressed, into: buffer, expectedSize: bytes.count)
            }
        }
        #expect(Array(output.prefix(bytes.count)) == bytes)
        #expect(output.suffix(100).allSatisfy { $0 == 0xEE })
    }

    @Test func emptyChunkIsAValidEmptyStream() async throws {
        let stream = try encoded([])
        #expect(stream.count == 32)  // stream header, empty index, stream footer
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/empty.xz", bytes: stream)
            try Shell.check(["sh", "-c", "xz -dc \(dir)/empty.xz > \(dir)/empty"])
            #expect(try readFile("\(dir)/empty").isEmpty)
        }
    }

    // MARK: - Whole payloads

    /// The concatenated chunks are an ordinary multi-stream .xz file: `xz -dc` restores the input and
    /// `xz -l` counts one stream and one block per chunk.
    @Test func xzToolDecodesTheConcatenatedChunks() async throws {
        let input = mixedPayload(count: 10 << 20 + 123, seed: 4)
        let chunks = try chunks(of: input, chunkSize: 1 << 20, threads: 2)
        #expect(chunks.count == 11)
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/payload.xz", bytes: chunks.flatMap(\.bytes))
            try Shell.check(["sh", "-c", "xz -dc \(dir)/payload.xz > \(dir)/payload"])
            #expect(try readFile("\(dir)/payload") == input)

            // --robot: "file<TAB>streams<TAB>blocks<TAB>compressed<TAB>uncompressed<TAB>ratio<TAB>check<TAB>padding"
            let listing = try Shell.check(["xz", "-l", "--robot", "\(dir)/payload.xz"])
            let file = try #require(listing.split(separator: "\n").first { $0.hasPrefix("file\t") })
            let fields = file.split(separator: "\t", omittingEmptySubsequences: false)
            #expect(fields[1] == "11")
            #expect(fields[2] == "11")
            #expect(fields[4] == "\(input.count)")
            #expect(fields[6] == "CRC64")
        }
    }

    @Test(arguments: [
        (1 << 20 + 5, 64 << 10, 3),  // a short last chunk
        (128 << 10, 64 << 10, 2),  // an exact multiple: no empty chunk at the end
        (1000, 64 << 10, 4),  // fewer chunks than threads
        (5 * 1000 + 1, 1000, 1),  // one thread
    ])
    func chunksComeInOrderWithTheirOffsetsAndSizes(size: Int, chunkSize: Int, threads: Int) throws {
        let input = mixedPayload(count: size, seed: UInt64(size))
        let chunks = try chunks(of: input, chunkSize: chunkSize, threads: threads)
        #expect(chunks.count == (size + chunkSize - 1) / chunkSize)
        for (position, chunk) in chunks.enumerated() {
            #expect(chunk.index == position)
            #expect(chunk.decodedOffset == Int64(position * chunkSize))
            #expect(chunk.decodedSize == min(chunkSize, size - position * chunkSize))
            let start = Int(chunk.decodedOffset)
            let expected = Array(input[start..<(start + chunk.decodedSize)])
            #expect(try decoded(chunk.bytes, expectedSize: chunk.decodedSize) == expected)
        }
    }

    /// A source that returns a few bytes per read (a pipe, the network) still gives full chunks.
    @Test func shortReadsStillFillWholeChunks() throws {
        let input = mixedPayload(count: 300_000, seed: 5)
        let trickle = try chunks(
            of: input, chunkSize: 64 << 10, threads: 2, source: TrickleByteSource(input, step: 999))
        let whole = try chunks(of: input, chunkSize: 64 << 10, threads: 2)
        #expect(trickle == whole)
    }

    @Test func emptySourceGivesOneEmptyChunk() throws {
        let chunks = try chunks(of: [], chunkSize: 1 << 20, threads: 2)
        #expect(chunks.count == 1)
        #expect(chunks.first?.decodedSize == 0)
        #expect(chunks.first?.bytes == (try encoded([])))
    }

    /// The output depends only on the input and the settings, never on the number of threads.
    @Test func outputIsTheSameForAnyNumberOfThreads() throws {
        let input = mixedPayload(count: 3 << 20 + 77, seed: 6)
        let single = try chunks(of: input, chunkSize: 256 << 10, threads: 1)
        #expect(try chunks(of: input, chunkSize: 256 << 10, threads: 2) == single)
        #expect(try chunks(of: input, chunkSize: 256 << 10, threads: 5) == single)
        for chunk in single {
            let start = Int(chunk.decodedOffset)
            #expect(try encoded(Array(input[start..<(start + chunk.decodedSize)])) == chunk.bytes)
        }
    }

    @Test func errorsFromBodyStopTheRun() {
        var calls = 0
        expectFerryError(.noSpace) {
            try XZChunkCodec.encodeChunks(
                source: MemoryByteSource(mixedPayload(count: 10 * 4096, seed: 7)), chunkSize: 4096, threads: 2
            ) { chunk throws(FerryError) in
                calls += 1
                if chunk.index == 2 { throw FerryError(code: .noSpace, message: "disk full") }
            }
        }
        #expect(calls == 3)
    }

    @Test func errorsFromTheSourceStopTheRun() {
        var calls = 0
        expectFerryError(.io) {
            try XZChunkCodec.encodeChunks(
                source: FailingByteSource(failAfter: 3 * 4096 + 10), chunkSize: 4096, threads: 2
            ) { _ in calls += 1 }
        }
        #expect(calls == 2)  // the batch holding the failed read is never handed over
    }

    // MARK: - Bad chunks

    @Test(arguments: [Input.text4MiB, Input.random4MiB])
    func rejectsAFlippedByteInTheMiddle(input: Input) throws {
        let bytes = input.bytes
        var stream = try encoded(bytes)
        stream[stream.count / 2] ^= 0x10
        expectFerryError(.bundleInvalid) { try decoded(stream, expectedSize: bytes.count) }
    }

    @Test(arguments: [1, 4, 12, 1000])
    func rejectsATruncatedChunk(missing: Int) throws {
        let bytes = Input.text100KiB.bytes
        let stream = try encoded(bytes)
        expectFerryError(.bundleInvalid) { try decoded(Array(stream.dropLast(missing)), expectedSize: bytes.count) }
    }

    @Test(arguments: [[0x00], [0x00, 0x00, 0x00, 0x00], Array("garbage".utf8), XZChunkCodecTests.xzMagic])
    func rejectsTrailingBytes(trailer: [UInt8]) throws {
        let bytes = Input.text100KiB.bytes
        let stream = try encoded(bytes)
        expectFerryError(.bundleInvalid) { try decoded(stream + trailer, expectedSize: bytes.count) }
    }

    /// Two chunks glued together are one chunk with trailing data, not a longer chunk.
    @Test func rejectsTwoStreamsInOneChunk() throws {
        let stream = try encoded([1, 2, 3])
        expectFerryError(.bundleInvalid) { try decoded(stream + stream, expectedSize: 6) }
    }

    @Test(arguments: [-1, 1, -4096, 4096])
    func rejectsAWrongDecodedSize(difference: Int) throws {
        let bytes = Input.text100KiB.bytes
        let stream = try encoded(bytes)
        expectFerryError(.bundleInvalid) { try decoded(stream, expectedSize: bytes.count + difference) }
    }

    @Test func rejectsAWrongSizeForEmptyAndOneByteChunks() throws {
        expectFerryError(.bundleInvalid) { try decoded(try encoded([]), expectedSize: 1) }
        expectFerryError(.bundleInvalid) { try decoded(try encoded([7]), expectedSize: 0) }
    }

    @Test(arguments: [[], Array("not xz at all, just text".utf8), [UInt8](repeating: 0, count: 64)])
    func rejectsSomethingThatIsNotXZ(bytes: [UInt8]) {
        expectFerryError(.bundleInvalid) { try decoded(bytes, expectedSize: 10) }
    }

    // MARK: - Streams made by xz itself

    /// `xz -9` uses a 64 MiB dictionary: decodable within the default limit, refused under a small one.
    @Test func decodesAStreamMadeByXZNine() async throws {
        let input = seededText(count: 3 << 20 + 11, seed: 8)
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/input", bytes: input)
            try Shell.check(["sh", "-c", "xz -9 -c \(dir)/input > \(dir)/input.xz"])
            let stream = try readFile("\(dir)/input.xz")
            #expect(try decoded(stream, expectedSize: input.count) == input)
            expectFerryError(.limitExceeded) { try decoded(stream, expectedSize: input.count, memoryLimit: 16 << 20) }
        }
    }

    @Test func decodesAStreamWithACRC32OrSHA256Check() async throws {
        let input = seededText(count: 200_000, seed: 9)
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/input", bytes: input)
            for check in ["crc32", "sha256", "none"] {
                try Shell.check(["sh", "-c", "xz -C \(check) -c \(dir)/input > \(dir)/input.xz"])
                #expect(try decoded(readFile("\(dir)/input.xz"), expectedSize: input.count) == input)
            }
        }
    }
}

// MARK: - Helpers

/// Seeded text that compresses like real text: words from a small vocabulary, lines of varying length.
func seededText(count: Int, seed: UInt64) -> [UInt8] {
    let words = [
        "slot", "bundle", "manifest", "chunk", "payload", "the", "a", "of", "and", "rootfs", "boot", "install",
        "verify", "signature", "offset", "size", "hash", "xz", "block", "stream", "device", "partition", "update",
        "good", "bad", "active", "primary", "kernel", "initramfs", "0x1f", "4096", "error", "warning", "info",
    ].map { Array($0.utf8) }
    let random = seededBytes(count: count / 2 + 16, seed: seed)
    var text: [UInt8] = []
    text.reserveCapacity(count + 16)
    var position = 0
    while text.count < count {
        let pick = Int(random[position % random.count])
        position += 1
        text += words[pick % words.count]
        text.append(pick % 11 == 0 ? 0x0A : 0x20)
    }
    return Array(text.prefix(count))
}

/// Half text, half random, in alternating 64 KiB runs: something like a file system image.
func mixedPayload(count: Int, seed: UInt64) -> [UInt8] {
    let text = seededText(count: count, seed: seed)
    let random = seededBytes(count: count, seed: seed &+ 1)
    return (0..<count).map { index in (index >> 16) & 1 == 0 ? text[index] : random[index] }
}

/// A source that hands out at most `step` bytes per read.
final class TrickleByteSource: ByteSource {
    let sourceName = "trickle"
    private let bytes: [UInt8]
    private let step: Int
    private var position = 0

    init(_ bytes: [UInt8], step: Int) {
        self.bytes = bytes
        self.step = step
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        let count = min(buffer.count, step, bytes.count - position)
        guard count > 0 else { return 0 }
        bytes[position..<(position + count)].withUnsafeBytes { buffer.copyMemory(from: $0) }
        position += count
        return count
    }
}

/// A source of zero bytes that fails with `.io` once `failAfter` bytes have been read.
final class FailingByteSource: ByteSource {
    let sourceName = "failing"
    private var remaining: Int

    init(failAfter: Int) { remaining = failAfter }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        guard remaining > 0 else { throw FerryError(code: .io, message: "read error") }
        let count = min(buffer.count, remaining)
        buffer.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: count)
        remaining -= count
        return count
    }
}

/// `LZMADecoderMemory`: one set of memory for decoder after decoder (a delta's operations).
@Suite struct LZMADecoderMemoryTests {
    /// A stream of 1.1 MiB against a 2 MiB dictionary: a window over 3 MiB, a large request.
    static func stream() throws -> (dictionary: [UInt8], input: [UInt8], compressed: [UInt8]) {
        let dictionary = seededBytes(count: 2 << 20, seed: 5)
        let input = Array(dictionary[(1 << 20)..<(2 << 20)]) + seededBytes(count: 100_000, seed: 6)
        let compressed = try dictionary.withUnsafeBytes { dictionary in
            try input.withUnsafeBytes { try XZDictionaryCodec.encode($0, dictionary: dictionary, preset: 1) }
        }
        return (dictionary, input, compressed)
    }

    static func decode(
        _ stream: (dictionary: [UInt8], input: [UInt8], compressed: [UInt8]), _ memory: LZMADecoderMemory
    )
        throws -> [UInt8]
    {
        var output = [UInt8](repeating: 0, count: stream.input.count)
        try stream.compressed.withUnsafeBytes { compressed in
            try stream.dictionary.withUnsafeBytes { dictionary in
                try output.withUnsafeMutableBytes { output in
                    try XZDictionaryCodec.decode(compressed, dictionary: dictionary, into: output, memory: memory)
                }
            }
        }
        return output
    }

    @Test func theWindowIsKeptAndReused() throws {
        let stream = try Self.stream()
        let memory = LZMADecoderMemory()
        #expect(try Self.decode(stream, memory) == stream.input)
        let kept = memory.keptBytes
        #expect(kept >= stream.dictionary.count + stream.input.count, "kept \(kept)")
        #expect(try Self.decode(stream, memory) == stream.input)
        #expect(memory.keptBytes == kept, "a second decoder of the same size grew the kept block")
    }

    @Test func aLentRegionServesTheWindowWhenItIsBigEnough() throws {
        let stream = try Self.stream()
        let region = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { region.deallocate() }
        let memory = LZMADecoderMemory()
        memory.use(region)
        #expect(try Self.decode(stream, memory) == stream.input)
        #expect(try Self.decode(stream, memory) == stream.input)
        #expect(memory.keptBytes == 0, "the window did not come from the lent region")
        // Too small a region: the kept block serves it instead.
        memory.use(UnsafeMutableRawBufferPointer(rebasing: region[..<(64 << 10)]))
        #expect(try Self.decode(stream, memory) == stream.input)
        #expect(memory.keptBytes >= stream.dictionary.count + stream.input.count)
    }
}
