import Dispatch
import FerryCrypto
import FerrySystem
import FerryXZ

#if canImport(Glibc)
import Glibc
#endif

/// Makes a delta from a source image to a target image (host side).
///
/// 1. Every 4 KiB block of the source goes into an index by content; content-defined anchors
///    (a rolling hash over every byte, sampled where its low bits are zero) go into a second one.
/// 2. Every block of the target is a zero block, a copy of a source block with the same content
///    wherever it lies (moved data: ext4 rarely keeps a file's blocks where they were), or changed.
/// 3. Each run of changed blocks gets the source regions its anchors point to (a changed file's
///    old version, wherever it lies now).
/// 4. formatVersion 3: neighbouring runs (all but long zeros and long copies) merge into segments
///    of up to 4 MiB whose source regions fit the operation limits, and each segment becomes a
///    `patch`: approximate matches against its regions (``PatchMatcher``), as difference, literal
///    and control streams, each LZMA2. formatVersion 2: each changed run is compressed with LZMA2
///    against a dictionary of its regions (a `diff`), or alone (a `literal`). On all cores.
///
/// Memory: both indexes (about 40 bytes per source block and per anchor), one operation being
/// encoded per core (up to 4 MiB of target and 16 MiB of source, the matcher's hash chains over
/// the source, and liblzma's encoder), and up to 4 encoded operations per core waiting to be
/// written in order.
///
/// `@unchecked Sendable`: the workers only read the two images with positional reads and the
/// index after it was built.
public struct DeltaGenerator: @unchecked Sendable {
    public struct Options: Sendable {
        /// xz level for changed data (0–9), and whether to use `--extreme`.
        public var preset = 9
        public var extreme = true
        /// Worker threads for compression.
        public var threads = ProcessEnvironment.processorCount
        /// The longest run of changed target bytes compressed as one operation.
        public var changedRunLength = 1 << 20
        /// The format version to write: 3, or 2 (no `patch` operations) for devices whose Ferry
        /// reads only that.
        public var formatVersion = DeltaFormat.formatVersion {
            didSet {
                precondition(
                    DeltaFormat.readableVersions.contains(formatVersion), "Ferry bug: delta format \(formatVersion)")
            }
        }

        public init() {}
    }

    public struct Statistics: Sendable {
        public var operations: [DeltaFormat.Kind: Int] = [:]
        public var targetBytes: [DeltaFormat.Kind: Int64] = [:]
        public var deltaBytes: Int64 = 0
    }

    /// One planned operation before compression.
    struct Run {
        var kind: DeltaFormat.Kind
        var target: Range<Int64>
        var sources: [Range<Int64>] = []
    }

    let source: any BlockTarget
    let target: any BlockTarget
    let options: Options

    public init(source: any BlockTarget, target: any BlockTarget, options: Options = Options()) {
        self.source = source
        self.target = target
        self.options = options
    }

    /// Writes the delta through `write`, in order.
    public func create(_ write: ([UInt8]) throws(FerryError) -> Void) throws(FerryError) -> Statistics {
        let sourceSize = source.byteCount
        let targetSize = target.byteCount
        let index = try SourceIndex(source, anchorMask: Self.anchorMask(for: sourceSize))
        var (runs, targetHash) = try plan(index)
        try chooseDictionaries(&runs, index: index)
        if options.formatVersion >= 3 { runs = Self.segments(runs) }
        let checks = try sourceChecks(for: runs, sourceSize: sourceSize)
        var header = DeltaFormat.Header(
            sourceSize: sourceSize, sourceSHA256: index.wholeHash, targetSize: targetSize, targetSHA256: targetHash,
            operationCount: Int64(runs.count), checkCount: Int64(checks.count))
        header.formatVersion = options.formatVersion
        var statistics = Statistics()
        var headerBytes = header.encoded()
        for check in checks { headerBytes += DeltaFormat.encoded(check) }
        try write(headerBytes)
        statistics.deltaBytes += Int64(headerBytes.count)

        // Compress on all cores; write in order.
        let planned = runs
        try inOrder(
            count: planned.count, threads: max(1, options.threads), window: max(1, options.threads) * 4,
            work: { item in Result { () throws(FerryError) in try encode(planned[item], index: index) } }
        ) { (result) throws(FerryError) in
            let (operation, data) = try result.get()
            let record = operation.encoded()
            try write(record)
            if !data.isEmpty { try write(data) }
            statistics.operations[operation.kind, default: 0] += 1
            statistics.targetBytes[operation.kind, default: 0] += Int64(operation.target.count)
            statistics.deltaBytes += Int64(record.count + data.count)
        }
        return statistics
    }

    // MARK: - Planning

    /// Classifies every target block and merges them into runs; also hashes the whole target.
    func plan(_ index: SourceIndex) throws(FerryError) -> ([Run], SHA256Digest) {
        let blockSize = Int64(DeltaFormat.blockSize)
        let targetSize = target.byteCount
        let whole = SHA256Hasher()
        var runs: [Run] = []
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        let sourceBlock = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(blockSize), alignment: 4096)
        defer {
            buffer.deallocate()
            sourceBlock.deallocate()
        }
        var previousCopyEnd: Int64?
        var offset: Int64 = 0
        while offset < targetSize {
            let count = Int(min(Int64(chunk), targetSize - offset))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try target.read(into: slice, at: offset)
            whole.update(UnsafeRawBufferPointer(slice))
            var position = 0
            while position < count {
                let length = min(Int(blockSize), count - position)
                let block = UnsafeRawBufferPointer(rebasing: slice[position..<(position + length)])
                let blockStart = offset + Int64(position)
                let range = blockStart..<(blockStart + Int64(length))
                var kind = DeltaFormat.Kind.literal
                var from: Int64?
                if block.allSatisfy({ $0 == 0 }) {
                    kind = .zero
                } else if length == Int(blockSize) {
                    // A copy: the continuation of the previous copy first (keeps runs long), then the index.
                    var candidates: [Int64] = []
                    if let previousCopyEnd, previousCopyEnd + blockSize <= index.size {
                        candidates.append(previousCopyEnd)
                    }
                    if let hit = index.block(SourceIndex.key(block)) { candidates.append(hit) }
                    for candidate in candidates {
                        try source.read(into: sourceBlock, at: candidate)
                        if memcmp(sourceBlock.baseAddress!, block.baseAddress!, length) == 0 {
                            kind = .copy
                            from = candidate
                            break
                        }
                    }
                }
                append(kind, range, from: from, to: &runs)
                previousCopyEnd = from.map { $0 + blockSize }
                position += length
            }
            offset += Int64(count)
        }
        return (runs, whole.finalize())
    }

    private func append(_ kind: DeltaFormat.Kind, _ range: Range<Int64>, from: Int64?, to runs: inout [Run]) {
        if var last = runs.last, last.kind == kind, last.target.upperBound == range.lowerBound {
            let limit = kind == .literal ? options.changedRunLength : DeltaFormat.maximumTargetLength
            let fits = last.target.count + range.count <= limit
            switch kind {
            case .zero, .literal:
                if fits {
                    last.target = last.target.lowerBound..<range.upperBound
                    runs[runs.count - 1] = last
                    return
                }
            case .copy:
                if fits, let from, let previous = last.sources.last, previous.upperBound == from {
                    last.target = last.target.lowerBound..<range.upperBound
                    last.sources[last.sources.count - 1] = previous.lowerBound..<(from + Int64(range.count))
                    runs[runs.count - 1] = last
                    return
                }
            case .diff, .patch:
                break
            }
        }
        runs.append(Run(kind: kind, target: range, sources: from.map { [$0..<($0 + Int64(range.count))] } ?? []))
    }

    // MARK: - Encoding one run

    /// The operation and its data for one run: zeros and copies as they are; a segment as a
    /// patch (or, were its control stream over the limit, a diff); formatVersion 2's changed data
    /// compressed against the source regions it resembles (a diff) or alone (a literal).
    func encode(_ run: Run, index: SourceIndex) throws(FerryError) -> (DeltaFormat.Operation, [UInt8]) {
        let bytes = try target.read(at: run.target.lowerBound, count: run.target.count)
        let targetHash = SHA256Hasher.hash(bytes)
        switch run.kind {
        case .zero:
            return (DeltaFormat.Operation(kind: .zero, target: run.target, targetSHA256: targetHash), [])
        case .copy:
            return (
                DeltaFormat.Operation(
                    kind: .copy, target: run.target, sources: run.sources, targetSHA256: targetHash,
                    sourceSHA256: targetHash), []
            )
        case .literal, .diff, .patch:
            var dictionary: [UInt8] = []
            for region in run.sources { dictionary += try source.read(at: region.lowerBound, count: region.count) }
            if run.kind == .patch || (run.kind == .diff && options.formatVersion >= 3) {
                let chosen = try patchOrDiff(bytes, sources: run.sources, dictionary: dictionary)
                if let patch = chosen.patch {
                    return (
                        DeltaFormat.Operation(
                            kind: .patch, target: run.target, sources: patch.sources,
                            dataLength: Int64(patch.data.count), targetSHA256: targetHash,
                            sourceSHA256: SHA256Hasher.hash(patch.dictionary)), patch.data
                    )
                }
                if let diff = chosen.diff {
                    return (
                        DeltaFormat.Operation(
                            kind: .diff, target: run.target, sources: diff.sources, dataLength: Int64(diff.data.count),
                            targetSHA256: targetHash, sourceSHA256: SHA256Hasher.hash(diff.dictionary)), diff.data
                    )
                }
            }
            // A patch over the limits falls back to a diff, or to a literal when its source is more
            // than a diff may read.
            var kind = run.kind == .patch ? DeltaFormat.Kind.diff : run.kind
            if dictionary.count > DeltaFormat.maximumSourceLength(kind) {
                kind = .literal
                dictionary = []
            }
            let data = try compressed(bytes, against: dictionary)
            return (
                DeltaFormat.Operation(
                    kind: kind, target: run.target, sources: kind == .literal ? [] : run.sources,
                    dataLength: Int64(data.count),
                    targetSHA256: targetHash,
                    sourceSHA256: kind == .literal ? nil : SHA256Hasher.hash(dictionary)), data
            )
        }
    }

    // MARK: - Segments (formatVersion 3)

    /// Zeros at least this long stay operations of their own.
    static let standaloneZeros: Int64 = 64 << 10
    /// Copies at least this long stay operations of their own.
    static let standaloneCopy: Int64 = 1 << 20

    /// Merges neighbouring runs into `patch` segments of up to `maximumTargetLength` target bytes
    /// whose source extents (the runs' own, merged) stay within the operation limits: one set of
    /// compression contexts for a whole stretch of changed files, and one operation record instead
    /// of many. Long zero and copy runs stay as they are.
    static func segments(_ runs: [Run]) -> [Run] {
        var merged: [Run] = []
        var current: [Run] = []
        var sources: [Range<Int64>] = []
        func flush() {
            defer {
                current = []
                sources = []
            }
            guard let first = current.first, let last = current.last else { return }
            if current.count == 1 && first.kind != .diff {
                merged.append(first)
            } else if current.count == 1 || !sources.isEmpty {
                merged.append(
                    Run(kind: .patch, target: first.target.lowerBound..<last.target.upperBound, sources: sources))
            } else {
                merged.append(Run(kind: .literal, target: first.target.lowerBound..<last.target.upperBound))
            }
        }
        for run in runs {
            let length = Int64(run.target.count)
            if (run.kind == .zero && length >= standaloneZeros) || (run.kind == .copy && length >= standaloneCopy) {
                flush()
                merged.append(run)
                continue
            }
            let union = mergedExtents(sources + run.sources)
            let total = union.reduce(0) { $0 + $1.count }
            let span = current.first.map { run.target.upperBound - $0.target.lowerBound } ?? length
            if !current.isEmpty
                && (span > Int64(DeltaFormat.maximumTargetLength) || total > DeltaFormat.maximumPatchSourceLength
                    || union.count > DeltaFormat.maximumSourceExtents)
            {
                flush()
                sources = mergedExtents(run.sources)
            } else {
                sources = union
            }
            current.append(run)
        }
        flush()
        return merged
    }

    /// Extents sorted, with overlapping and touching ones merged.
    static func mergedExtents(_ extents: [Range<Int64>]) -> [Range<Int64>] {
        extents.sorted { $0.lowerBound < $1.lowerBound }.reduce(into: []) { merged, extent in
            if let last = merged.last, last.upperBound >= extent.lowerBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, extent.upperBound)
            } else {
                merged.append(extent)
            }
        }
    }

    /// An operation's data, the source extents it reads and their bytes.
    struct Encoded {
        var data: [UInt8]
        var sources: [Range<Int64>]
        var dictionary: [UInt8]
    }

    /// A segment's data as a `patch`, or as a `diff` where that is smaller (at most one of the
    /// two; neither when the patch is over the limits and no diff was tried).
    ///
    /// A diff is tried where the patch is over 5 % of the bytes (approximate matches found
    /// little: another build of a library, say, where LZ matches of any length anywhere in the old
    /// bytes do better). Its dictionary is the segment's source bytes, or, where they are more
    /// than ``diffDictionaryLimit(targetLength:)``, the 64 KiB pieces of them the patch's covers
    /// drew most from, up to that limit (``busiestSources(_:records:limit:)``). Where the matches leave 8 % or more of the bytes as
    /// literals, the diff goes first, and when it is at most 70 % of those literal bytes the patch
    /// is not encoded at all: its literals alone would hardly compress better than the whole
    /// segment does as a diff. (On the small and debian benchmark pairs, every segment this skips
    /// was 10-20 % smaller as a diff, and every segment where the patch won had a diff over 70 % of
    /// its literals; it saves about half the encoding time of the small pair. From 15 % down to
    /// 8 % of literals it also skips the patch of three segments of the files pair, 2 to 3 s of
    /// CPU, and changes no byte of the four pairs' deltas.) That diff is
    /// compressed without `--extreme`: a whole segment against up to 8 MiB of preset dictionary is
    /// where `-9e` costs most (a quarter of the small pair's generation time) and gains least
    /// (0.07 % there; the patch streams keep `-9e`, which is worth 2.9 % on the debian pair).
    func patchOrDiff(
        _ bytes: [UInt8], sources: [Range<Int64>], dictionary: [UInt8]
    ) throws(FerryError) -> (patch: Encoded?, diff: Encoded?) {
        let matched = bytes.withUnsafeBytes { target in
            dictionary.withUnsafeBytes { PatchMatcher(source: $0).match(target) }
        }
        func makeDiff() throws(FerryError) -> Encoded? {
            let limit = Self.diffDictionaryLimit(targetLength: bytes.count)
            let busiest = Self.busiestSources(sources, records: matched.records, limit: limit)
            if busiest.isEmpty || dictionary.count <= limit {
                guard dictionary.count <= DeltaFormat.maximumSourceLength else { return nil }
                return Encoded(
                    data: try compressed(bytes, against: dictionary, extreme: false), sources: sources,
                    dictionary: dictionary)
            }
            var smaller: [UInt8] = []
            for region in busiest { smaller += try source.read(at: region.lowerBound, count: region.count) }
            return Encoded(
                data: try compressed(bytes, against: smaller, extreme: false), sources: busiest, dictionary: smaller)
        }
        var diff: Encoded?
        if matched.literal.count * 25 >= bytes.count * 2, let first = try makeDiff() {
            if first.data.count * 10 <= matched.literal.count * 7 { return (nil, first) }
            diff = first
        }
        guard let patch = try patch(matched, count: bytes.count, sources: sources, dictionary: dictionary) else {
            return (nil, diff)
        }
        if diff == nil && patch.data.count * 20 >= bytes.count { diff = try makeDiff() }
        if let diff, diff.data.count < patch.data.count { return (nil, diff) }
        return (patch, nil)
    }

    /// The most source bytes a segment's diff is compressed against: 1.25 × its target bytes (at
    /// least 1 MiB). liblzma reads a preset dictionary through its match finder, which costs
    /// about half as much per byte as compressing; on the files benchmark pair a segment's regions
    /// were up to twice its length, and the pieces its covers drew most from, up to this limit,
    /// made the delta 0.04 % larger and its diffs a fifth faster to compress (1.0 × was 0.5 %
    /// larger).
    public static func diffDictionaryLimit(targetLength: Int) -> Int {
        max(1 << 20, targetLength + targetLength / 4)
    }

    /// The 64 KiB pieces of `sources` (as concatenated) that `records`' covers drew most bytes
    /// from, as source extents in source order: at most `limit` bytes (and at most
    /// `DeltaFormat.maximumSourceLength`; at least one piece) in at most
    /// `DeltaFormat.maximumSourceExtents` extents, within `sources`. A diff's dictionary where
    /// all of `sources` is more than ``diffDictionaryLimit(targetLength:)``.
    public static func busiestSources(
        _ sources: [Range<Int64>], records: [DeltaPatch.Record], limit: Int = DeltaFormat.maximumSourceLength
    ) -> [Range<Int64>] {
        let piece = 64 << 10
        let total = sources.reduce(0) { $0 + $1.count }
        var drawn = [Int](repeating: 0, count: (total + piece - 1) / piece)
        var position = 0
        for record in records {
            var start = position
            var remaining = record.cover
            while remaining > 0 && start >= 0 && start < total {
                let count = min(remaining, (start / piece + 1) * piece - start)
                drawn[start / piece] += count
                start += count
                remaining -= count
            }
            position += record.cover + record.seek
        }
        let ranked = drawn.indices.filter { drawn[$0] > 0 }.sorted {
            drawn[$0] != drawn[$1] ? drawn[$0] > drawn[$1] : $0 < $1
        }
        var take = min(ranked.count, max(1, min(limit, DeltaFormat.maximumSourceLength) / piece))
        while true {
            let extents = mergedExtents(
                ranked.prefix(take).flatMap { index in
                    extentsOf(index * piece..<min(total, (index + 1) * piece), within: sources)
                })
            if extents.count <= DeltaFormat.maximumSourceExtents || take == 0 { return extents }
            take -= max(1, take / 8)
        }
    }

    /// Where bytes `range` of the concatenation of `sources` lie in the source.
    static func extentsOf(_ range: Range<Int>, within sources: [Range<Int64>]) -> [Range<Int64>] {
        var result: [Range<Int64>] = []
        var start = 0
        for extent in sources {
            let end = start + extent.count
            let lower = max(start, range.lowerBound)
            let upper = min(end, range.upperBound)
            if lower < upper {
                result.append((extent.lowerBound + Int64(lower - start))..<(extent.lowerBound + Int64(upper - start)))
            }
            start = end
        }
        return result
    }

    /// `bytes` as raw LZMA2 with `dictionary` as its preset dictionary (a diff, or a literal when
    /// empty), at the options' preset, `--extreme` unless told otherwise.
    func compressed(_ bytes: [UInt8], against dictionary: [UInt8], extreme: Bool? = nil) throws(FerryError) -> [UInt8] {
        try bytes.withTypedUnsafeBytes { (input) throws(FerryError) in
            try dictionary.withTypedUnsafeBytes { (dictionary) throws(FerryError) in
                try XZDictionaryCodec.encode(
                    input, dictionary: dictionary, preset: options.preset, extreme: extreme ?? options.extreme)
            }
        }
    }

    /// A `patch` operation for `count` bytes matched against `dictionary` (the bytes of
    /// `sources`), or nil when its control stream or its data would be over the limits.
    ///
    /// The operation reads only the 64 KiB pieces of `sources` its covers draw from
    /// (``trimmed(_:sources:)``): the applier reads and hashes every byte of an operation's
    /// sources, and a segment's regions (each changed run's old version with 64 KiB around it, at
    /// every shift its anchors voted for) are several times what the covers use.
    func patch(
        _ matched: PatchMatcher.Result, count: Int, sources: [Range<Int64>], dictionary: [UInt8]
    ) throws(FerryError) -> Encoded? {
        var matched = matched
        var sources = sources
        var dictionary = dictionary
        if let trimmed = Self.trimmed(matched.records, sources: sources) {
            matched.records = trimmed.records
            sources = trimmed.sources
            dictionary = []
            for region in sources { dictionary += try source.read(at: region.lowerBound, count: region.count) }
        }
        let control = DeltaPatch.control(matched.records)
        guard control.count <= DeltaPatch.maximumControlLength else { return nil }
        let data = try dictionary.withTypedUnsafeBytes { (dictionary) throws(FerryError) -> [UInt8] in
            // Where matches cover little (another build of a library, say), the literals are also
            // tried against the source, as a diff would be: LZ matches of any length, anywhere in it.
            let tryAgainst = matched.literal.count * 4 >= count && dictionary.count <= DeltaFormat.maximumSourceLength
            return try DeltaPatch.encode(
                control: control, diff: matched.diff, literal: matched.literal, preset: options.preset,
                extreme: options.extreme, literalDictionary: tryAgainst ? dictionary : nil, orAlone: true)
        }
        guard data.count <= DeltaFormat.maximumDataLength else { return nil }
        return Encoded(data: data, sources: sources, dictionary: dictionary)
    }

    /// `records` against only the 64 KiB pieces of `sources` (as concatenated) their covers draw
    /// from, with the seeks recomputed for the shorter concatenation, and those pieces as source
    /// extents; nil when that would not be shorter, would need more than
    /// `DeltaFormat.maximumSourceExtents` extents, or no cover draws from the sources at all.
    /// A cover's pieces are all kept and stay in order, so each cover still reads one stretch.
    public static func trimmed(
        _ records: [DeltaPatch.Record], sources: [Range<Int64>]
    ) -> (records: [DeltaPatch.Record], sources: [Range<Int64>])? {
        let piece = 64 << 10
        let total = sources.reduce(0) { $0 + $1.count }
        var kept = [Bool](repeating: false, count: (total + piece - 1) / piece)
        var position = 0
        for record in records {
            if record.cover > 0 {
                guard position >= 0 && position + record.cover <= total else { return nil }
                for index in (position / piece)...((position + record.cover - 1) / piece) { kept[index] = true }
            }
            position += record.cover + record.seek
        }
        // Where each kept piece starts in the new concatenation.
        var newStart = [Int](repeating: -1, count: kept.count)
        var length = 0
        for index in kept.indices where kept[index] {
            newStart[index] = length
            length += min(piece, total - index * piece)
        }
        guard length > 0 && length < total else { return nil }
        let extents = mergedExtents(
            kept.indices.filter { kept[$0] }.flatMap {
                extentsOf($0 * piece..<min(total, ($0 + 1) * piece), within: sources)
            })
        guard extents.count <= DeltaFormat.maximumSourceExtents else { return nil }
        // Each record's cover starts where the previous record's seek ends; a record without a
        // cover stays where it is, and the next cover's start is reached by the seek before it.
        var result = records
        var old = 0
        var new = 0
        var lastWithSeek: Int?
        for (number, record) in records.enumerated() {
            if record.cover > 0 {
                let start = newStart[old / piece] + old % piece
                if let lastWithSeek { result[lastWithSeek].seek += start - new } else { precondition(start == new) }
                new = start + record.cover
            }
            result[number].seek = 0
            lastWithSeek = number
            old += record.cover + record.seek
        }
        return (result, extents)
    }

    /// Chooses, for every changed run, the source regions it resembles (on all cores): those runs
    /// become diffs against them; runs that resemble nothing stay literals. Done before anything
    /// is written, because the delta's header lists every source range it reads.
    func chooseDictionaries(_ runs: inout [Run], index: SourceIndex) throws(FerryError) {
        let changed = runs.indices.filter { runs[$0].kind == .literal }
        let snapshot = runs
        let results = RegionBox(count: changed.count)
        let work = { @Sendable (slot: Int) in
            let run = snapshot[changed[slot]]
            results.set(
                slot,
                Result { () throws(FerryError) in
                    let bytes = try target.read(at: run.target.lowerBound, count: run.target.count)
                    return dictionaryRegions(for: bytes, at: run.target.lowerBound, index: index)
                })
        }
        if changed.count == 1 {
            work(0)
        } else if !changed.isEmpty {
            DispatchQueue.concurrentPerform(iterations: changed.count, execute: work)
        }
        for (slot, position) in changed.enumerated() {
            let regions = try results.get(slot).get()
            if !regions.isEmpty {
                runs[position].kind = .diff
                runs[position].sources = regions
            }
        }
    }

    /// The source checks of the header: every range the operations read, with its SHA-256.
    func sourceChecks(for runs: [Run], sourceSize: Int64) throws(FerryError) -> [DeltaFormat.SourceCheck] {
        let ranges = DeltaFormat.checkRanges(coveredBy: runs.flatMap(\.sources), sourceSize: sourceSize)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var checks: [DeltaFormat.SourceCheck] = []
        for range in ranges {
            let hasher = SHA256Hasher()
            var offset = range.lowerBound
            while offset < range.upperBound {
                let slice = UnsafeMutableRawBufferPointer(
                    rebasing: buffer[..<Int(min(Int64(buffer.count), range.upperBound - offset))])
                try source.read(into: slice, at: offset)
                hasher.update(UnsafeRawBufferPointer(slice))
                offset += Int64(slice.count)
            }
            checks.append(DeltaFormat.SourceCheck(range: range, sha256: hasher.finalize()))
        }
        return checks
    }

    /// Source regions worth using as a dictionary for changed target bytes: where their anchors
    /// occur in the source (each vote is a shift between target and source), widest-voted first,
    /// and around the copies next to them.
    func dictionaryRegions(for bytes: [UInt8], at offset: Int64, index: SourceIndex) -> [Range<Int64>] {
        var votes: [Int64: Int] = [:]
        bytes.withUnsafeBytes { raw in
            SourceIndex.forEachAnchor(raw, mask: index.anchorMask) { position, key in
                if let at = index.anchor(key) {
                    // Shift, rounded to 4 KiB so that nearby anchors of one file agree.
                    let shift = (at - (offset + Int64(position))) & ~4095
                    votes[shift, default: 0] += 1
                }
            }
        }
        let margin: Int64 = 64 << 10
        let budget = Int64(DeltaFormat.maximumSourceLength(options.formatVersion >= 3 ? .patch : .diff))
        var regions: [Range<Int64>] = []
        var used: Int64 = 0
        for (shift, count) in votes.sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key })
        where count >= 2 || votes.count == 1 {
            let lower = max(0, offset + shift - margin)
            let upper = min(index.size, offset + shift + Int64(bytes.count) + margin)
            guard lower < upper else { continue }
            var region = lower..<upper
            // Merge with overlapping regions; stay within the dictionary budget and extent count.
            if let overlapping = regions.firstIndex(where: {
                $0.overlaps(region) || $0.upperBound == region.lowerBound || region.upperBound == $0.lowerBound
            }) {
                let merged =
                    min(
                        regions[overlapping].lowerBound, region.lowerBound)..<max(
                        regions[overlapping].upperBound, region.upperBound)
                let growth = Int64(merged.count - regions[overlapping].count)
                guard used + growth <= budget else { continue }
                used += growth
                regions[overlapping] = merged
                continue
            }
            if used + Int64(region.count) > budget {
                region = region.lowerBound..<(region.lowerBound + (budget - used))
            }
            guard region.count >= 4096, regions.count < DeltaFormat.maximumSourceExtents else { break }
            used += Int64(region.count)
            regions.append(region)
            if used >= budget { break }
        }
        return regions.sorted { $0.lowerBound < $1.lowerBound }.reduce(into: []) { merged, region in
            if let last = merged.last, last.upperBound >= region.lowerBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, region.upperBound)
            } else {
                merged.append(region)
            }
        }
    }

    /// Anchors every 2^k bytes on average, k chosen so that the index stays near a million entries.
    static func anchorMask(for size: Int64) -> UInt64 {
        var bits = 8
        while bits < 16 && (size >> bits) > 1 << 22 { bits += 1 }
        return (1 << UInt64(bits)) - 1
    }
}

/// The source's blocks and anchors, by content.
final class SourceIndex: @unchecked Sendable {
    let size: Int64
    let anchorMask: UInt64
    let wholeHash: SHA256Digest
    private let blocks: [UInt64: Int64]
    private let anchors: [UInt64: Int64]

    init(_ source: any BlockTarget, anchorMask: UInt64) throws(FerryError) {
        let size = source.byteCount
        self.size = size
        self.anchorMask = anchorMask
        let whole = SHA256Hasher()
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var blocks: [UInt64: Int64] = [:]
        var anchors: [UInt64: Int64] = [:]
        var offset: Int64 = 0
        while offset < size {
            let count = Int(min(Int64(chunk), size - offset))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try source.read(into: slice, at: offset)
            whole.update(UnsafeRawBufferPointer(slice))
            var position = 0
            while position + DeltaFormat.blockSize <= count {
                let block = UnsafeRawBufferPointer(rebasing: slice[position..<(position + DeltaFormat.blockSize)])
                if !block.allSatisfy({ $0 == 0 }) {
                    let key = Self.key(block)
                    if blocks[key] == nil { blocks[key] = offset + Int64(position) }
                }
                position += DeltaFormat.blockSize
            }
            let base = offset
            Self.forEachAnchor(UnsafeRawBufferPointer(slice), mask: anchorMask) { position, key in
                if anchors[key] == nil { anchors[key] = base + Int64(position) }
            }
            offset += Int64(count)
        }
        self.blocks = blocks
        self.anchors = anchors
        wholeHash = whole.finalize()
    }

    func block(_ key: UInt64) -> Int64? { blocks[key] }
    func anchor(_ key: UInt64) -> Int64? { anchors[key] }

    /// A block's key: the first 8 bytes of its SHA-256 (collisions are caught by comparing bytes).
    static func key(_ block: UnsafeRawBufferPointer) -> UInt64 {
        SHA256Hasher.hash(block).bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Calls `body` at each content-defined anchor of `bytes`: positions where a gear rolling hash
    /// (over the last 64 bytes) has its `mask` bits zero. The key is the hash itself.
    static func forEachAnchor(_ bytes: UnsafeRawBufferPointer, mask: UInt64, _ body: (Int, UInt64) -> Void) {
        var hash: UInt64 = 0
        var index = 0
        for byte in bytes {
            hash = (hash << 1) &+ gear[Int(byte)]
            index += 1
            // Skip long runs of one byte value (zeros, padding): they anchor everywhere alike.
            if index >= 64 && hash & mask == 0 && bytes[index - 1] != bytes[index - 33] {
                body(index, hash)
            }
        }
    }

    /// 256 fixed pseudo-random 64-bit values (splitmix64 from a constant seed).
    static let gear: [UInt64] = {
        var state: UInt64 = 0x4665_7272_7944_6C74
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()
}

/// Results of one batch, written by the workers, each to its own slot, and read after they all ended.
private final class SlotResults<Value>: @unchecked Sendable {
    private let results: UnsafeMutableBufferPointer<Result<Value, FerryError>?>

    init(count: Int) {
        results = .allocate(capacity: max(count, 1))
        results.initialize(repeating: nil)
    }

    deinit { results.deinitialize().deallocate() }

    func set(_ slot: Int, _ result: Result<Value, FerryError>) { results[slot] = result }

    func get(_ slot: Int) -> Result<Value, FerryError> { results[slot]! }
}

private typealias RegionBox = SlotResults<[Range<Int64>]>
