import FerrySystem
import FerryTestSupport
import FerryZstd
import Testing

/// zstd chunks through encode and decode, against the real `zstd` tool in both directions, and
/// every way a chunk can be bad.
@Suite struct ZstdChunkCodecTests {
    static let inputs: [(String, [UInt8])] = [
        ("empty", []), ("one byte", [0x42]), ("text 4 MiB", seededText(count: 4 << 20, seed: 1)),
        ("random 1 MiB", seededBytes(count: 1 << 20, seed: 2)),
        ("text 100 KiB", seededText(count: 100 << 10 + 7, seed: 3)),
        ("zeros 2 MiB", [UInt8](repeating: 0, count: 2 << 20)),
    ]

    static func encoded(_ bytes: [UInt8], level: Int = 3) throws -> [UInt8] {
        let output = UnsafeMutableRawBufferPointer.allocate(
            byteCount: ZstdChunkCodec.maximumEncodedSize(bytes.count), alignment: 16)
        defer { output.deallocate() }
        let count = try bytes.withUnsafeBytes { input in
            Result { () throws(FerryError) in try ZstdChunkCodec.encode(input, level: level, into: output) }
        }.get()
        return Array(output[..<count])
    }

    static func decoded(_ frame: [UInt8], size: Int) throws(FerryError) -> [UInt8] {
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 16)
        defer { output.deallocate() }
        let target = UnsafeMutableRawBufferPointer(rebasing: output[..<size])
        try frame.withUnsafeBytes { input in
            Result { () throws(FerryError) in try ZstdChunkCodec.decode(input, into: target) }
        }.get()
        return Array(target)
    }

    @Test func framesRoundTripAndInteroperateWithTheZstdTool() async throws {
        try await withTemporaryDirectory { dir in
            var file: [UInt8] = []
            var whole: [UInt8] = []
            for (name, bytes) in Self.inputs {
                let frame = try Self.encoded(bytes, level: 19)
                #expect(try Self.decoded(frame, size: bytes.count) == bytes, "\(name)")
                #expect(try Self.encoded(bytes, level: 19) == frame, "\(name): not deterministic")
                file += frame
                whole += bytes
                // The zstd tool's own frame of the same bytes decodes in Ferry.
                try makeFile("\(dir)/in", bytes: bytes)
                try Shell.check(["zstd", "-q", "-f", "-3", "\(dir)/in", "-o", "\(dir)/in.zst"])
                #expect(try Self.decoded(try readFile("\(dir)/in.zst"), size: bytes.count) == bytes, "\(name)")
            }
            // The chunks of a payload, concatenated, are a .zst file the tool decodes.
            try makeFile("\(dir)/payload.zst", bytes: file)
            try Shell.check(["zstd", "-q", "-d", "-f", "\(dir)/payload.zst", "-o", "\(dir)/payload"])
            #expect(try readFile("\(dir)/payload") == whole)
            // And Ferry's stream reader decodes the tool's multi-frame files.
            let source = try ZstdStreamSource(source: FileByteSource(path: "\(dir)/payload.zst"))
            var read: [UInt8] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_001, alignment: 16)
            defer { buffer.deallocate() }
            while true {
                let count = try source.read(into: buffer)
                if count == 0 { break }
                read += buffer[..<count]
            }
            #expect(read == whole)
        }
    }

    @Test func everyBadChunkIsRefused() throws {
        let bytes = seededText(count: 300_000, seed: 4)
        let frame = try Self.encoded(bytes)
        func refused(_ frame: [UInt8], size: Int, _ what: String) {
            let error = #expect(throws: FerryError.self, "\(what)") { _ = try Self.decoded(frame, size: size) }
            #expect(error?.code == .bundleInvalid, "\(what): \(error?.message ?? "")")
        }
        refused(Array(frame.prefix(frame.count - 5)), size: bytes.count, "truncated")
        refused(frame + [0], size: bytes.count, "a byte after the frame")
        refused(frame + frame, size: bytes.count, "two frames")
        refused(frame, size: bytes.count - 1, "another size than recorded")
        refused(seededBytes(count: 1000, seed: 5), size: 1000, "not zstd")
        refused([], size: 0, "empty")
        // A corrupt block either fails or decodes to other bytes (the chunk's SHA-256 then refuses it).
        var flipped = frame
        flipped[frame.count / 2] ^= 0x20
        if let decoded = try? Self.decoded(flipped, size: bytes.count) { #expect(decoded != bytes) }
    }

    @Test func aTruncatedZstdFileIsRefusedByTheStreamReader() async throws {
        try await withTemporaryDirectory { dir in
            let frame = try Self.encoded(seededText(count: 200_000, seed: 6))
            try makeFile("\(dir)/cut.zst", bytes: Array(frame.prefix(frame.count - 3)))
            let source = try ZstdStreamSource(source: FileByteSource(path: "\(dir)/cut.zst"))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
            defer { buffer.deallocate() }
            let error = #expect(throws: FerryError.self) {
                while try source.read(into: buffer) > 0 {}
            }
            #expect(error?.code == .bundleInvalid)
        }
    }
}
