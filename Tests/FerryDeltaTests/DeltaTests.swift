import FerryCrypto
import FerryDelta
import FerrySystem
import FerryTestSupport
import Testing

/// Deltas between image files: round trips (moved, changed, zero, grown data) and every bad input
/// the applier must refuse before handing out a byte that does not verify.
@Suite struct DeltaTests {
    static let block = 4096

    /// A source of 96 blocks (random, with a zero stretch) and a target that moves, changes,
    /// zeroes and grows it.
    static func images() -> (source: [UInt8], target: [UInt8]) {
        let random = seededBytes(count: 96 * block, seed: 41)
        var source = random
        source.replaceSubrange((40 * block)..<(48 * block), with: [UInt8](repeating: 0, count: 8 * block))
        var target: [UInt8] = []
        target += source[(10 * block)..<(30 * block)]  // moved to the front
        var changed = Array(source[(60 * block)..<(70 * block)])  // changed in place, a few bytes per block
        for index in stride(from: 100, to: changed.count, by: 4096) { changed[index] ^= 0xFF }
        target += changed
        target += [UInt8](repeating: 0, count: 5 * block)  // zeros
        target += seededBytes(count: 7 * block + 123, seed: 42)  // new data, not block-aligned at the end
        target += source[(0)..<(10 * block)]  // moved to the back
        return (source, target)
    }

    static func makeDelta(_ directory: String, source: [UInt8], target: [UInt8]) throws -> [UInt8] {
        var options = DeltaGenerator.Options()
        options.preset = 1
        return try makeDelta(directory, source: source, target: target, options: options).delta
    }

    /// The delta from `source` to `target` (written as old.img and new.img in `directory`).
    static func makeDelta(_ directory: String, source: [UInt8], target: [UInt8], options: DeltaGenerator.Options)
        throws -> (delta: [UInt8], statistics: DeltaGenerator.Statistics)
    {
        try makeFile("\(directory)/old.img", bytes: source)
        try makeFile("\(directory)/new.img", bytes: target)
        var delta: [UInt8] = []
        let statistics = try DeltaGenerator(
            source: try BlockDevice.openForReading("\(directory)/old.img"),
            target: try BlockDevice.openForReading("\(directory)/new.img"),
            options: options
        ).create { (bytes) throws(FerryError) in delta += bytes }
        #expect(statistics.deltaBytes == Int64(delta.count))
        return (delta, statistics)
    }

    static func apply(_ delta: [UInt8], source: String) throws -> [UInt8] {
        let input = MemoryByteSource(delta)
        let applier = try DeltaApplier(
            delta: input, source: try BlockDevice.openForReading(source), sourceName: "the source")
        var output: [UInt8] = []
        try applier.verifySource()
        try applier.apply(from: input) { (offset, bytes, _) throws(FerryError) in
            #expect(offset == Int64(output.count))
            output += bytes
        }
        return output
    }

    @Test func aRoundTripFindsMovedZeroAndChangedData() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.images()
            let delta = try Self.makeDelta(directory, source: source, target: target)
            #expect(try Self.apply(delta, source: "\(directory)/old.img") == target)
            // Moved and zero blocks cost records only; the new data dominates.
            #expect(delta.count < 7 * Self.block + 20_000, "delta of \(delta.count) bytes")
        }
    }

    @Test func theCommandLineRoundTrips() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.images()
            try makeFile("\(directory)/old.img", bytes: source)
            try makeFile("\(directory)/new.img", bytes: target)
            let ferry = TestEnvironment.ferryBinary
            let created = try Shell.run([
                ferry, "delta", "create", "--from", "\(directory)/old.img", "--to", "\(directory)/new.img", "-o",
                "\(directory)/d.delta",
            ])
            #expect(created.status == 0, "\(created.output)")
            let applied = try Shell.run([
                ferry, "delta", "apply", "--from", "\(directory)/old.img", "--delta", "\(directory)/d.delta", "-o",
                "\(directory)/out.img",
            ])
            #expect(applied.status == 0, "\(applied.output)")
            #expect(try readFile("\(directory)/out.img") == target)
            // A wrong source: a clear error, no output file.
            try makeFile("\(directory)/other.img", bytes: seededBytes(count: source.count, seed: 99))
            let wrong = try Shell.run([
                ferry, "delta", "apply", "--from", "\(directory)/other.img", "--delta", "\(directory)/d.delta", "-o",
                "\(directory)/bad.img",
            ])
            #expect(wrong.status == FerryError.Code.sourceMismatch.exitStatus, "\(wrong.output)")
            #expect(wrong.output.hasPrefix("ferry: error: delta needs source"))
            #expect(!TextFile.exists("\(directory)/bad.img") && !TextFile.exists("\(directory)/bad.img.partial"))
        }
    }

    @Test func aSourceWithOneBlockChangedIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.images()
            let delta = try Self.makeDelta(directory, source: source, target: target)
            var modified = source
            modified[15 * Self.block + 7] ^= 1
            try makeFile("\(directory)/old.img", bytes: modified)
            expectFerryError(.sourceMismatch) { try Self.apply(delta, source: "\(directory)/old.img") }
        }
    }

    /// A source that changes after its checks passed (a diff's or patch's source is compared
    /// only when its output is wrong): still named as a changed source, with the operation, and
    /// nothing of that operation is handed out.
    @Test func aSourceChangedAfterItsChecksIsNamed() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.images()
            let delta = try Self.makeDelta(directory, source: source, target: target)
            let old = "\(directory)/old.img"
            let input = MemoryByteSource(delta)
            let applier = try DeltaApplier(delta: input, source: try BlockDevice.openForReading(old), sourceName: "old")
            try applier.verifySource()
            // Block 65 is read by the operation that makes the changed blocks 60-69 (target blocks 20-29).
            var changed = source
            changed[65 * Self.block + 9] ^= 0x01
            try makeFile(old, bytes: changed)
            var handedOut: [Range<Int64>] = []
            let error = #expect(throws: FerryError.self) {
                try applier.apply(from: input) { (offset, bytes, _) throws(FerryError) in
                    handedOut.append(offset..<(offset + Int64(bytes.count)))
                }
            }
            #expect(error?.code == .sourceMismatch, "\(error?.message ?? "")")
            #expect(error?.message.contains("but old differs at block") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("(operation ") == true)
            let changedTarget = Int64(25 * Self.block)
            #expect(!handedOut.contains { $0.contains(changedTarget) }, "\(handedOut)")
        }
    }

    @Test func aCorruptOrTruncatedDeltaIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let (source, target) = Self.images()
            let delta = try Self.makeDelta(directory, source: source, target: target)
            let old = "\(directory)/old.img"
            var corrupt = delta
            corrupt[corrupt.count - 50] ^= 0x40  // inside the last operation's data
            expectFerryError(.bundleInvalid) { try Self.apply(corrupt, source: old) }
            expectFerryError(.truncated) { try Self.apply(Array(delta.prefix(delta.count - 10)), source: old) }
            expectFerryError(.truncated) { try Self.apply(Array(delta.prefix(50)), source: old) }
            var magic = delta
            magic[0] = UInt8(ascii: "X")
            expectFerryError(.bundleInvalid) { try Self.apply(magic, source: old) }
        }
    }

    // MARK: - Crafted operations

    /// A delta with the given operations over a 4-block source of `0x11` and a target they claim.
    static func crafted(
        _ directory: String, operationCount: Int64? = nil, targetSize: Int64 = 2 * 4096, checks: [Range<Int64>] = [],
        targetByte: UInt8 = 0, _ operations: [DeltaFormat.Operation]
    ) throws -> (delta: [UInt8], source: String) {
        let source = [UInt8](repeating: 0x11, count: 4 * block)
        try makeFile("\(directory)/old.img", bytes: source)
        let zeros = SHA256Hasher.hash([UInt8](repeating: targetByte, count: Int(targetSize)))
        var delta = DeltaFormat.Header(
            sourceSize: Int64(source.count), sourceSHA256: SHA256Hasher.hash(source), targetSize: targetSize,
            targetSHA256: zeros,
            operationCount: operationCount ?? Int64(operations.count), checkCount: Int64(checks.count)
        ).encoded()
        for range in checks {
            delta += DeltaFormat.encoded(
                HashedRange(range: range, sha256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: range.count))))
        }
        for operation in operations { delta += operation.encoded() }
        return (delta, "\(directory)/old.img")
    }

    static func zero(_ range: Range<Int64>) -> DeltaFormat.Operation {
        DeltaFormat.Operation(
            kind: .zero, target: range, targetSHA256: SHA256Hasher.hash([UInt8](repeating: 0, count: range.count)))
    }

    @Test func craftedZerosApply() async throws {
        try await withTemporaryDirectory { directory in
            let (delta, source) = try Self.crafted(directory, [Self.zero(0..<4096), Self.zero(4096..<8192)])
            #expect(try Self.apply(delta, source: source) == [UInt8](repeating: 0, count: 8192))
        }
    }

    @Test(arguments: [
        ("a gap", [zero(0..<4096), zero(4100..<8192)], FerryError.Code.bundleInvalid),
        ("an overlap", [zero(0..<4096), zero(4000..<8192)], .bundleInvalid),
        ("out of order", [zero(4096..<8192), zero(0..<4096)], .bundleInvalid),
        ("outside the target", [zero(0..<4096), zero(4096..<12288)], .bundleInvalid),
        ("too long an operation", [zero(0..<Int64(DeltaFormat.maximumTargetLength + 4096))], .limitExceeded),
        ("ending early", [zero(0..<4096)], .bundleInvalid),
    ])
    func badOperationOrderIsRefused(_ name: String, _ operations: [DeltaFormat.Operation], _ code: FerryError.Code)
        async throws
    {
        try await withTemporaryDirectory { directory in
            let count: Int64? = name == "ending early" ? 1 : nil
            let (delta, source) = try Self.crafted(directory, operationCount: count, operations)
            expectFerryError(code) { try Self.apply(delta, source: source) }
        }
    }

    @Test func readingOutsideTheSourceIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let copy = DeltaFormat.Operation(
                kind: .copy, target: 0..<8192, sources: [12288..<20480],
                targetSHA256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: 8192)),
                sourceSHA256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: 8192)))
            let (delta, source) = try Self.crafted(directory, [copy])
            expectFerryError(.bundleInvalid) { try Self.apply(delta, source: source) }
        }
    }

    static let copyOfTwoBlocks = DeltaFormat.Operation(
        kind: .copy, target: 0..<8192, sources: [4096..<12288],
        targetSHA256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: 8192)),
        sourceSHA256: SHA256Hasher.hash([UInt8](repeating: 0x11, count: 8192)))

    @Test func aCopyInsideTheSourceChecksApplies() async throws {
        try await withTemporaryDirectory { directory in
            let (delta, source) = try Self.crafted(
                directory, targetSize: 8192, checks: [4096..<12288], targetByte: 0x11, [Self.copyOfTwoBlocks])
            #expect(try Self.apply(delta, source: source) == [UInt8](repeating: 0x11, count: 8192))
        }
    }

    @Test(arguments: [
        ("no check", [Range<Int64>]()),
        ("a check short of the extent", [4096..<8192]),
        ("a check over other blocks", [0..<4096]),
    ])
    func aReadOutsideTheSourceChecksIsRefused(_ name: String, _ checks: [Range<Int64>]) async throws {
        try await withTemporaryDirectory { directory in
            let (delta, source) = try Self.crafted(directory, targetSize: 8192, checks: checks, [Self.copyOfTwoBlocks])
            expectFerryError(.bundleInvalid) { try Self.apply(delta, source: source) }
        }
    }

    static let badChecks: [(String, [Range<Int64>])] = [
        ("overlapping", [0..<8192, 4096..<12288]),
        ("out of order", [8192..<12288, 0..<4096]),
        ("unaligned", [100..<4196]),
        ("outside the source", [12288..<20480]),
    ]

    @Test(arguments: badChecks)
    func badSourceChecksAreRefused(_ name: String, _ checks: [Range<Int64>]) async throws {
        try await withTemporaryDirectory { directory in
            let (delta, source) = try Self.crafted(directory, targetSize: 8192, checks: checks, [Self.zero(0..<8192)])
            expectFerryError(.bundleInvalid) { try Self.apply(delta, source: source) }
        }
    }

    @Test func sourceChecksAreCutAtCellsAndBounded() {
        let mib: Int64 = 1 << 20
        // Touching extents merge; a range crossing a 4 MiB cell is cut there; blocks are aligned.
        let extents: [Range<Int64>] = [mib..<(5 * mib), 100..<200, (5 * mib)..<(5 * mib + 10)]
        let expected: [Range<Int64>] = [0..<4096, mib..<(4 * mib), (4 * mib)..<(5 * mib + 4096)]
        #expect(DeltaFormat.checkRanges(coveredBy: extents, sourceSize: 8 * mib) == expected)
        // Too many scattered extents: one span per cell, never more than maximumChecks.
        var scattered: [Range<Int64>] = []
        for index in 0..<Int64(3000) { scattered.append((index * 8192)..<(index * 8192 + 4096)) }
        let spans = DeltaFormat.checkRanges(coveredBy: scattered, sourceSize: 3000 * 2 * 4096)
        #expect(spans.count <= DeltaFormat.maximumChecks)
        let firstSpan: Range<Int64> = 0..<(4 * mib - 4096)
        #expect(spans.first == firstSpan)
        // Sources over 4 GiB use larger cells so that the count stays bounded.
        #expect(DeltaFormat.cellLength(sourceSize: 64 << 30) == 64 * mib)
    }

    @Test func aChangeTheDeltaDoesNotReadIsAccepted() async throws {
        try await withTemporaryDirectory { directory in
            // The source checks cover what the delta reads, not the whole image.
            var (source, target) = Self.images()
            target.replaceSubrange(0..<(20 * Self.block), with: seededBytes(count: 20 * Self.block, seed: 7))
            let delta = try Self.makeDelta(directory, source: source, target: target)
            source[92 * Self.block] ^= 1  // block 92 is neither copied nor near a changed run
            try makeFile("\(directory)/old.img", bytes: source)
            #expect(try Self.apply(delta, source: "\(directory)/old.img") == target)
        }
    }

    @Test func anAbsurdOperationCountIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let (delta, source) = try Self.crafted(directory, operationCount: 1 << 40, [Self.zero(0..<8192)])
            expectFerryError(.limitExceeded) { try Self.apply(delta, source: source) }
        }
    }
}
