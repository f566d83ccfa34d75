import FerryCrypto
import FerryDelta
import FerrySystem
import FerryTestSupport
import Testing

/// formatVersion 3's `patch` operations: approximate matches round-trip and shrink deltas of
/// code-like changes; version 2 is still written on request and read; crafted patches are refused.
@Suite struct DeltaPatchTests {
    static let block = 4096

    /// "Compiled code" moved by an insertion: 64 blocks of pseudo-random bytes in which, after a
    /// 13-byte insertion, every 4-byte little-endian word at a multiple of 16 grows by 13 (the
    /// references that cross the insertion), so that no 4 KiB block is unchanged.
    static func shiftedImages() -> (source: [UInt8], target: [UInt8]) {
        let source = seededBytes(count: 64 * block, seed: 11)
        var target = Array(source[..<1000]) + seededBytes(count: 13, seed: 12) + Array(source[1000...])
        for offset in stride(from: 1024, to: target.count - 4, by: 16) {
            var word = UInt32(target[offset]) | UInt32(target[offset + 1]) << 8
            word |= UInt32(target[offset + 2]) << 16 | UInt32(target[offset + 3]) << 24
            word &+= 13
            for byte in 0..<4 { target[offset + byte] = UInt8(truncatingIfNeeded: word >> (8 * byte)) }
        }
        return (source, Array(target[..<(64 * block)]))
    }

    static func makeDelta(
        _ directory: String, source: [UInt8], target: [UInt8], formatVersion: UInt32 = DeltaFormat.formatVersion
    ) throws -> (delta: [UInt8], statistics: DeltaGenerator.Statistics) {
        var options = DeltaGenerator.Options()
        options.preset = 6
        options.extreme = false
        options.formatVersion = formatVersion
        return try DeltaTests.makeDelta(directory, source: source, target: target, options: options)
    }

    @Test func shiftedCodeBecomesPatchesThatRoundTripAndBeatVersion2() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.shiftedImages()
            let (patched, statistics) = try Self.makeDelta(directory, source: source, target: target)
            #expect((statistics.operations[.patch] ?? 0) > 0, "\(statistics.operations)")
            #expect(try DeltaTests.apply(patched, source: "\(directory)/old.img") == target)
            let (version2, statistics2) = try Self.makeDelta(
                directory, source: source, target: target, formatVersion: 2)
            #expect(statistics2.operations[.patch] == nil)
            let applier = try DeltaApplier(
                delta: MemoryByteSource(version2), source: try BlockDevice.openForReading("\(directory)/old.img"),
                sourceName: "the source")
            #expect(applier.header.formatVersion == 2)
            // Version 2 is still read: devices keep applying deltas from an older build host.
            #expect(try DeltaTests.apply(version2, source: "\(directory)/old.img") == target)
            // Every 16th word changed: an LZ dictionary pays a match per 12 bytes, differences do not.
            #expect(patched.count * 2 < version2.count, "patch \(patched.count) bytes, version 2 \(version2.count)")
        }
    }

    @Test func anUnknownFormatVersionIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.shiftedImages()
            for version: UInt32 in [1, 4, 0xFFFF_FFFF] {
                var (delta, _) = try Self.makeDelta(directory, source: source, target: target)
                for byte in 0..<4 { delta[8 + byte] = UInt8(truncatingIfNeeded: version >> (8 * byte)) }
                expectFerryError(.bundleInvalid) { try DeltaTests.apply(delta, source: "\(directory)/old.img") }
            }
        }
    }

    // MARK: - Crafted patch operations

    /// The crafted deltas' source: 4 blocks of 0x11, all checked. A valid patch makes 2 blocks of 0x12.
    static let source = [UInt8](repeating: 0x11, count: 4 * block)
    static let target = [UInt8](repeating: 0x12, count: 2 * block)

    /// A delta of one patch operation over 2 source blocks, with `data` (default: valid) and the
    /// header's `formatVersion`.
    static func crafted(
        _ directory: String, data: [UInt8]? = nil, sources: [Range<Int64>] = [0..<8192], formatVersion: UInt32 = 3
    ) throws -> [UInt8] {
        try makeFile("\(directory)/old.img", bytes: source)
        var header = DeltaFormat.Header(
            sourceSize: Int64(source.count), sourceSHA256: SHA256Hasher.hash(source),
            targetSize: Int64(target.count), targetSHA256: SHA256Hasher.hash(target), operationCount: 1, checkCount: 1)
        header.formatVersion = formatVersion
        var delta = header.encoded()
        delta += DeltaFormat.encoded(HashedRange(range: 0..<Int64(source.count), sha256: SHA256Hasher.hash(source)))
        let sourceBytes = sources.reduce(0) { $0 + $1.count }
        let data =
            try data ?? patchData([.init(cover: 8192, literal: 0, seek: 0)], diff: [UInt8](repeating: 1, count: 8192))
        delta += DeltaFormat.Operation(
            kind: .patch, target: 0..<Int64(target.count), sources: sources, dataLength: Int64(data.count),
            targetSHA256: SHA256Hasher.hash(target),
            sourceSHA256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: sourceBytes))
        ).encoded()
        return delta + data
    }

    static func patchData(_ records: [DeltaPatch.Record], diff: [UInt8], literal: [UInt8] = []) throws -> [UInt8] {
        try DeltaPatch.encode(
            control: DeltaPatch.control(records), diff: diff, literal: literal, preset: 1, extreme: false)
    }

    @Test func aCraftedPatchApplies() async throws {
        try await withTemporaryDirectory { directory in
            let delta = try Self.crafted(directory)
            #expect(try DeltaTests.apply(delta, source: "\(directory)/old.img") == Self.target)
            // Literals compressed against the source bytes (layout flag 1).
            let against = try [UInt8](repeating: 0x11, count: 8192).withUnsafeBytes { (source) throws(FerryError) in
                try DeltaPatch.encode(
                    control: DeltaPatch.control([.init(cover: 4096, literal: 4096, seek: 0)]),
                    diff: [UInt8](repeating: 1, count: 4096), literal: [UInt8](repeating: 0x12, count: 4096), preset: 1,
                    extreme: false, literalDictionary: source)
            }
            #expect(against[48] == 1)
            #expect(
                try DeltaTests.apply(try Self.crafted(directory, data: against), source: "\(directory)/old.img")
                    == Self.target)
            // Covers and literals mixed, with a seek back to reuse the same source bytes.
            let mixed = try Self.patchData(
                [.init(cover: 100, literal: 50, seek: -100), .init(cover: 8000, literal: 42, seek: 0)],
                diff: [UInt8](repeating: 1, count: 8100), literal: [UInt8](repeating: 0x12, count: 92))
            let delta2 = try Self.crafted(directory, data: mixed)
            #expect(try DeltaTests.apply(delta2, source: "\(directory)/old.img") == Self.target)
        }
    }

    static let badPatches: [(String, [DeltaPatch.Record], Int, Int, FerryError.Code)] = [
        (
            "a cover past the source bytes",
            [.init(cover: 100, literal: 0, seek: 8000), .init(cover: 8092, literal: 0, seek: 0)], 8192, 0,
            .bundleInvalid
        ),
        (
            "a cover before the source bytes",
            [.init(cover: 0, literal: 0, seek: -1), .init(cover: 8192, literal: 0, seek: 0)], 8192, 0, .bundleInvalid
        ),
        ("records short of the streams", [.init(cover: 4096, literal: 0, seek: 0)], 8192, 0, .bundleInvalid),
        ("records past the streams", [.init(cover: 8192, literal: 1, seek: 0)], 8192, 0, .bundleInvalid),
        ("streams short of the target", [.init(cover: 4096, literal: 0, seek: 0)], 4096, 0, .bundleInvalid),
        (
            "a huge seek", [.init(cover: 1, literal: 0, seek: Int.max), .init(cover: 8191, literal: 0, seek: Int.max)],
            8192, 0, .bundleInvalid
        ),
    ]

    @Test(arguments: badPatches)
    func aCraftedPatchIsRefused(
        _ name: String, _ records: [DeltaPatch.Record], _ diff: Int, _ literal: Int, _ code: FerryError.Code
    ) async throws {
        try await withTemporaryDirectory { directory in
            let data = try Self.patchData(
                records, diff: [UInt8](repeating: 1, count: diff), literal: [UInt8](repeating: 0x12, count: literal))
            expectFerryError(code) {
                try DeltaTests.apply(try Self.crafted(directory, data: data), source: "\(directory)/old.img")
            }
        }
    }

    @Test func aPatchWithABadLayoutIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let valid = try Self.patchData(
                [.init(cover: 8192, literal: 0, seek: 0)], diff: [UInt8](repeating: 1, count: 8192))
            let old = "\(directory)/old.img"
            // A control stream over the limit (its length field, bytes 0-7).
            var huge = valid
            huge.replaceSubrange(0..<8, with: [0, 0, 0x40, 0x01, 0, 0, 0, 0])
            expectFerryError(.limitExceeded) {
                try DeltaTests.apply(try Self.crafted(directory, data: huge), source: old)
            }
            // Compressed lengths that do not add up to the data.
            var long = valid
            long[8] &+= 1
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, data: long), source: old)
            }
            // Shorter than its layout; a corrupt stream.
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, data: Array(valid[..<40])), source: old)
            }
            var corrupt = valid
            corrupt[DeltaPatch.layoutSize + 2] ^= 0xFF
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, data: corrupt), source: old)
            }
            // A control stream that claims more records than it holds, or has bytes after them.
            for control: [UInt8] in [
                [5, 1, 1, 1], DeltaPatch.control([.init(cover: 8192, literal: 0, seek: 0)]) + [0],
            ] {
                let data = try DeltaPatch.encode(
                    control: control, diff: [UInt8](repeating: 1, count: 8192), literal: [], preset: 1, extreme: false)
                expectFerryError(.bundleInvalid) {
                    try DeltaTests.apply(try Self.crafted(directory, data: data), source: old)
                }
            }
            // Layout flags: an unknown one; the literal dictionary flag without literals.
            var unknownFlag = valid
            unknownFlag[48] = 2
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, data: unknownFlag), source: old)
            }
            var noLiterals = valid
            noLiterals[48] = 1
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, data: noLiterals), source: old)
            }
            // A patch without source extents; a patch in a formatVersion 2 delta.
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, sources: []), source: old)
            }
            expectFerryError(.bundleInvalid) {
                try DeltaTests.apply(try Self.crafted(directory, formatVersion: 2), source: old)
            }
        }
    }

    @Test func aPatchWhoseSourceChangedIsRefusedBeforeItIsUsed() async throws {
        try await withTemporaryDirectory { directory in
            let delta = try Self.crafted(directory)
            var changed = Self.source
            changed[100] = 0x22
            try makeFile("\(directory)/old.img", bytes: changed)
            expectFerryError(.sourceMismatch) { try DeltaTests.apply(delta, source: "\(directory)/old.img") }
        }
    }
}

/// The dictionary of a diff tried for a segment whose sources are more than a diff may read.
@Suite struct BusiestSourcesTests {
    static let mib = 1 << 20

    @Test func thePiecesTheCoversDrewFromWithinTheLimits() {
        let mib = Int64(Self.mib)
        // 12 MiB of sources in two extents; covers draw 1 MiB at the start, 3 MiB across the
        // boundary between the extents (concatenated 5 MiB to 8 MiB), and 4 KiB near the end.
        let sources = [(100 * mib)..<(106 * mib), (200 * mib)..<(206 * mib)]
        let records = [
            DeltaPatch.Record(cover: Self.mib, literal: 10, seek: 4 * Self.mib),
            DeltaPatch.Record(cover: 3 * Self.mib, literal: 0, seek: 3 * Self.mib),
            DeltaPatch.Record(cover: 4096, literal: 0, seek: 0),
        ]
        let chosen = DeltaGenerator.busiestSources(sources, records: records)
        #expect(
            chosen == [
                (100 * mib)..<(101 * mib), (105 * mib)..<(106 * mib), (200 * mib)..<(202 * mib),
                (205 * mib)..<(205 * mib + 65536),
            ])
        #expect(chosen.reduce(0) { $0 + $1.count } <= DeltaFormat.maximumSourceLength)
    }

    @Test func atMostTheLimitWhenCoversDrawFromEverywhere() {
        let mib = Int64(Self.mib)
        let sources = [0..<(16 * mib)]
        // A 4 KiB cover in every 64 KiB piece, more in the later ones: 16 MiB of pieces drawn from.
        var records: [DeltaPatch.Record] = []
        for piece in 0..<256 {
            records.append(DeltaPatch.Record(cover: 4096 + piece, literal: 0, seek: 65536 - 4096 - piece))
        }
        let chosen = DeltaGenerator.busiestSources(sources, records: records)
        #expect(chosen == [(8 * mib)..<(16 * mib)])
    }

    @Test func atMostAGivenLimit() {
        let mib = Int64(Self.mib)
        // The same covers as above, with a 5 MiB limit (a 4 MiB segment's diff): the 80 busiest
        // pieces, the last 5 MiB.
        var records: [DeltaPatch.Record] = []
        for piece in 0..<256 {
            records.append(DeltaPatch.Record(cover: 4096 + piece, literal: 0, seek: 65536 - 4096 - piece))
        }
        let limit = DeltaGenerator.diffDictionaryLimit(targetLength: 4 << 20)
        #expect(limit == 5 << 20)
        #expect(
            DeltaGenerator.busiestSources([0..<(16 * mib)], records: records, limit: limit) == [(11 * mib)..<(16 * mib)]
        )
        // A small segment's limit is 1 MiB; a limit under a piece still keeps the busiest piece.
        #expect(DeltaGenerator.diffDictionaryLimit(targetLength: 4096) == 1 << 20)
        #expect(
            DeltaGenerator.busiestSources([0..<(16 * mib)], records: records, limit: 1000) == [
                (16 * mib - 65536)..<(16 * mib)
            ])
    }

    @Test func atMostSixtyFourExtents() {
        // 200 extents of 64 KiB, each drawn from: the pieces kept fit in 64 extents.
        let sources = (0..<200).map { Int64($0) * (1 << 20)..<(Int64($0) * (1 << 20) + 65536) }
        let records = (0..<200).map { _ in DeltaPatch.Record(cover: 1000, literal: 0, seek: 65536 - 1000) }
        let chosen = DeltaGenerator.busiestSources(sources, records: records)
        #expect(chosen.count <= DeltaFormat.maximumSourceExtents)
        #expect(chosen.count >= 32)
        #expect(
            chosen.allSatisfy { extent in
                sources.contains { $0.contains(extent.lowerBound) && $0.upperBound >= extent.upperBound }
            })
    }

    @Test func noCoversNoDictionary() {
        #expect(
            DeltaGenerator.busiestSources([0..<(9 << 20)], records: [DeltaPatch.Record(cover: 0, literal: 5, seek: 0)])
                .isEmpty)
    }
}

/// A patch's records moved onto only the source pieces their covers read.
@Suite struct TrimmedSourcesTests {
    /// The absolute source offsets each cover reads, in order, as (start, length).
    static func reads(_ records: [DeltaPatch.Record], _ sources: [Range<Int64>]) -> [(Int64, Int)] {
        var position = 0
        var result: [(Int64, Int)] = []
        for record in records {
            if record.cover > 0 {
                var start = 0
                for extent in sources {
                    if position >= start && position < start + extent.count {
                        result.append((extent.lowerBound + Int64(position - start), record.cover))
                    }
                    start += extent.count
                }
            }
            position += record.cover + record.seek
        }
        return result
    }

    @Test func coversReadTheSameBytesFromFewerSources() throws {
        let mib = Int64(1 << 20)
        let sources = [(10 * mib)..<(14 * mib), (30 * mib)..<(38 * mib)]
        // Covers in the first extent, a literal-only record, a cover across the extents'
        // boundary, one far into the second extent, and a backward jump.
        let records = [
            DeltaPatch.Record(cover: 5000, literal: 3, seek: 100_000),
            DeltaPatch.Record(cover: 0, literal: 7, seek: 0),
            DeltaPatch.Record(cover: 20000, literal: 0, seek: (4 << 20) - 10000 - 125_000),
            DeltaPatch.Record(cover: 30000, literal: 1, seek: 5 << 20),
            DeltaPatch.Record(cover: 4096, literal: 0, seek: -(6 << 20)),
            DeltaPatch.Record(cover: 100, literal: 2, seek: 0),
        ]
        let before = Self.reads(records, sources)
        let trimmed = try #require(DeltaGenerator.trimmed(records, sources: sources))
        #expect(trimmed.sources.reduce(0) { $0 + $1.count } < 1 << 20)
        #expect(
            trimmed.sources.allSatisfy { part in
                sources.contains { $0.lowerBound <= part.lowerBound && part.upperBound <= $0.upperBound }
            })
        let after = Self.reads(trimmed.records, trimmed.sources)
        #expect(after.map(\.0) == before.map(\.0))
        #expect(after.map(\.1) == before.map(\.1))
        #expect(trimmed.records.map(\.cover) == records.map(\.cover))
        #expect(trimmed.records.map(\.literal) == records.map(\.literal))
    }

    @Test func nothingToTrim() {
        // Covers that read every piece, or none: nil (the sources stay as they are).
        let everything = [DeltaPatch.Record(cover: 1 << 20, literal: 0, seek: 0)]
        #expect(DeltaGenerator.trimmed(everything, sources: [0..<(1 << 20)]) == nil)
        let none = [DeltaPatch.Record(cover: 0, literal: 10, seek: 0)]
        #expect(DeltaGenerator.trimmed(none, sources: [0..<(1 << 20)]) == nil)
    }
}
