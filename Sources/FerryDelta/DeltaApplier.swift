import FerryCrypto
import FerrySystem
import FerryXZ

/// Applies a delta read from a stream, in one sequential pass over the target.
///
/// Every operation is checked before its bytes are handed out: it must start where the previous
/// one ended (no gap, overlap or reordering), stay inside the target, read only inside the source,
/// and respect ``DeltaFormat``'s size limits (so memory is bounded: two 4 MiB target buffers (one
/// decoded while the other is written), 21 MiB for an operation's source bytes and LZMA2's window
/// together, 8 MiB of a patch's decoded streams and 4.5 MiB of data, each allocated once per
/// apply). The bytes it produces are compared with its target SHA-256 before `body` sees them. The source extents it reads are compared with the operation's
/// source SHA-256: a copy's before they are used; a diff's or patch's when the bytes it produced
/// (or its data) are found wrong, so that a source that changed since ``verifySource()`` is
/// reported as such. The whole target's SHA-256 is compared at the end.
public struct DeltaApplier {
    public let header: DeltaFormat.Header
    /// The source ranges the delta reads, with their SHA-256 (from the delta's check section).
    public let sourceChecks: [DeltaFormat.SourceCheck]
    private let source: any BlockTarget
    private let sourceName: String

    /// Where an apply stands between two operations: the next operation, where its record
    /// starts in the delta stream, and where it writes in the target. A resumed apply starts
    /// from one of these (recorded at a checkpoint).
    public struct Position: Sendable, Equatable {
        public var operation: Int64
        public var deltaOffset: Int64
        public var targetOffset: Int64

        public init(operation: Int64, deltaOffset: Int64, targetOffset: Int64) {
            self.operation = operation
            self.deltaOffset = deltaOffset
            self.targetOffset = targetOffset
        }
    }

    /// Reads the delta's header and source checks from `delta`.
    /// - Parameters:
    ///   - source: the image the delta was made from (read only, extent by extent).
    ///   - sourceName: names the source in errors ("booted slot 'rootfs_a'", a file).
    /// - Throws: `.bundleInvalid` for a malformed header; `.sourceMismatch` when the source's size differs.
    public init(delta: any ByteSource, source: any BlockTarget, sourceName: String) throws(FerryError) {
        let (header, checks) = try DeltaFormat.readPreamble(delta)
        self.header = header
        self.sourceChecks = checks
        self.source = source
        self.sourceName = sourceName
        guard source.byteCount >= header.sourceSize else {
            throw FerryError(
                code: .sourceMismatch,
                message:
                    "delta needs source sha256 \(header.sourceSHA256) (\(header.sourceSize) bytes), but \(sourceName) has only \(source.byteCount) bytes"
            )
        }
    }

    /// Where the first operation's record starts in the delta stream.
    public var firstOperation: Position {
        Position(
            operation: 0, deltaOffset: Int64(DeltaFormat.headerSize + DeltaFormat.checkRecordSize * sourceChecks.count),
            targetOffset: 0)
    }

    /// Reads every source range the delta uses and compares it with its SHA-256, before anything
    /// is written.
    /// - Throws: `.sourceMismatch` naming the blocks that differ; read errors.
    public func verifySource() throws(FerryError) {
        try Self.verifySource(
            sourceChecks, of: source, named: sourceName, sourceSHA256: header.sourceSHA256,
            sourceSize: header.sourceSize)
    }

    /// The same check for a list of source checks taken from elsewhere (a signed manifest).
    public static func verifySource(
        _ checks: [DeltaFormat.SourceCheck], of source: any BlockTarget, named sourceName: String,
        sourceSHA256: SHA256Digest,
        sourceSize: Int64
    ) throws(FerryError) {
        guard source.byteCount >= sourceSize else {
            throw FerryError(
                code: .sourceMismatch,
                message:
                    "delta needs source sha256 \(sourceSHA256) (\(sourceSize) bytes), but \(sourceName) has only \(source.byteCount) bytes"
            )
        }
        let piece = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        for check in checks {
            let hasher = SHA256Hasher()
            var offset = check.range.lowerBound
            while offset < check.range.upperBound {
                let slice = UnsafeMutableRawBufferPointer(
                    rebasing: buffer[..<Int(min(Int64(piece), check.range.upperBound - offset))])
                try source.read(into: slice, at: offset)
                hasher.update(UnsafeRawBufferPointer(slice))
                offset += Int64(slice.count)
            }
            guard hasher.finalize() == check.sha256 else {
                let block = Int64(DeltaFormat.blockSize)
                throw FerryError(
                    code: .sourceMismatch,
                    message:
                        "delta needs source sha256 \(sourceSHA256) (\(sourceSize) bytes), but \(sourceName) differs at blocks \(check.range.lowerBound / block)-\((check.range.upperBound - 1) / block)"
                )
            }
        }
    }

    /// Applies every operation from `start` on; `body` receives each verified target extent in
    /// order, with the position after it.
    ///
    /// The delta stream must stand at `start.deltaOffset` (right after the source checks for a
    /// fresh apply). The whole target's SHA-256 is checked at the end only when the apply starts
    /// at the beginning and `verifyWholeTarget` is set (an install reads the slot back instead).
    /// - Throws: `.sourceMismatch` when a source extent differs from what the delta was made from;
    ///   `.bundleInvalid` / `.limitExceeded` / `.truncated` for a bad delta; `body`'s errors.
    public func apply(
        from delta: any ByteSource, start: Position? = nil, verifyWholeTarget: Bool = true,
        _ body: (_ offset: Int64, _ bytes: UnsafeRawBufferPointer, _ next: Position) throws(FerryError) -> Void
    ) throws(FerryError) {
        let start = start ?? firstOperation
        guard start.operation >= 0, start.operation <= header.operationCount, start.targetOffset >= 0,
            start.targetOffset <= header.targetSize, start.deltaOffset >= firstOperation.deltaOffset
        else {
            throw DeltaFormat.invalid(
                "cannot resume at operation \(start.operation), target byte \(start.targetOffset)")
        }
        let whole = start.operation == 0 && verifyWholeTarget ? SHA256Hasher() : nil
        var position = start
        // Operations are read and decoded on one thread while the caller's `body` writes the
        // previous one (two target buffers): one operation at a time, in order, each checked
        // before it is handed over.
        let producer = Producer(applier: self, delta: delta, start: start)
        try inOrder(
            count: Int(header.operationCount - start.operation), threads: 2, window: 1,
            work: { item in producer.produce(item) }
        ) { (produced) throws(FerryError) in
            let (operation, target) = try produced.get()
            whole?.update(target)
            position = Position(
                operation: position.operation + 1,
                deltaOffset: position.deltaOffset
                    + Int64(DeltaFormat.Operation.encodedSize(sourceExtents: operation.sources.count))
                    + operation.dataLength,
                targetOffset: operation.target.upperBound)
            try body(operation.target.lowerBound, target, position)
        }
        guard position.targetOffset == header.targetSize else {
            throw DeltaFormat.invalid(
                "the operations end at byte \(position.targetOffset) of a \(header.targetSize)-byte target")
        }
        if let whole, whole.finalize() != header.targetSHA256 {
            throw DeltaFormat.invalid("the target does not match its SHA-256 \(header.targetSHA256)")
        }
    }

    /// Reads, decodes and checks operations one after the other (``inOrder(count:threads:window:work:body:)``
    /// with a window of one runs them strictly in turn, whichever thread takes each): operation
    /// `item` lands in target buffer `item % 2`, which the caller is done with by then (item
    /// starts only once item − 1 was taken, which follows `body`'s return for item − 2). After a
    /// failure it reads nothing more.
    ///
    /// `@unchecked Sendable`: its state is touched by one operation at a time, in order; the
    /// window's mutex orders one after the next.
    private final class Producer: @unchecked Sendable {
        let applier: DeltaApplier
        let delta: any ByteSource
        let first: Int64
        var nextTarget: Int64
        let targets = (0..<2).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: DeltaFormat.maximumTargetLength, alignment: 4096)
        }
        /// An operation's source bytes, then (page-aligned after them) LZMA2's window: what one
        /// operation needs of both is at most 20 MiB (a patch's 16 MiB of source and a window of
        /// at most its 4 MiB of target; or 8 MiB of source and a window over them and the
        /// target), where two separate buffers would hold up to 16 + 12 MiB; 1 MiB more for
        /// liblzma's rounding.
        let arena = UnsafeMutableRawBufferPointer.allocate(
            byteCount: DeltaFormat.maximumPatchSourceLength + DeltaFormat.maximumTargetLength + (1 << 20),
            alignment: 4096)
        let buffers = Buffers()
        var zeroDigests: [Int: SHA256Digest] = [:]
        var failed = false

        init(applier: DeltaApplier, delta: any ByteSource, start: Position) {
            self.applier = applier
            self.delta = delta
            first = start.operation
            nextTarget = start.targetOffset
        }

        deinit {
            for target in targets { target.deallocate() }
            arena.deallocate()
        }

        func produce(_ item: Int) -> Result<(DeltaFormat.Operation, UnsafeRawBufferPointer), FerryError> {
            guard !failed else {
                return .failure(FerryError(code: .internal, message: "delta: an earlier operation failed"))
            }
            do throws(FerryError) {
                let index = first + Int64(item)
                let operation = try applier.readOperation(delta, index: index, expectedStart: nextTarget)
                nextTarget = operation.target.upperBound
                let target = UnsafeMutableRawBufferPointer(rebasing: targets[item % 2][..<operation.target.count])
                // A copy's source is checked as it is read. A diff or patch's source is checked
                // only when its data or output is found wrong (its target SHA-256 is checked
                // before anything is handed out either way), so that a changed source is still
                // named as such: decoding against wrong bytes is harmless, and each source byte
                // is hashed once (by the source checks) instead of twice.
                let sourceBytes = UnsafeRawBufferPointer(
                    try applier.readSources(operation, into: arena, index: index, check: operation.kind == .copy))
                let windowStart = (sourceBytes.count + 4095) / 4096 * 4096
                buffers.memory.use(UnsafeMutableRawBufferPointer(rebasing: arena[windowStart...]))
                do throws(FerryError) {
                    try applier.produce(
                        operation, index: index, from: delta, source: sourceBytes, into: target, buffers: buffers,
                        zeroDigests: &zeroDigests)
                } catch {
                    try applier.checkSources(operation, sourceBytes, index: index)
                    throw error
                }
                return .success((operation, UnsafeRawBufferPointer(target)))
            } catch {
                failed = true
                return .failure(error)
            }
        }
    }

    /// The buffers one apply reuses from operation to operation.
    private final class Buffers {
        // An operation's data, and LZMA2's window: allocated once, kept from one operation to the next.
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: DeltaFormat.maximumDataLength, alignment: 16)
        let memory = LZMADecoderMemory()
        // Patch operations' decoded streams; allocated at the first one (formatVersion 3).
        var scratch: UnsafeMutableRawBufferPointer?

        deinit {
            data.deallocate()
            scratch?.deallocate()
        }
    }

    /// Produces an operation's target bytes into `target` and checks them against its target SHA-256.
    private func produce(
        _ operation: DeltaFormat.Operation, index: Int64, from delta: any ByteSource,
        source sourceBytes: UnsafeRawBufferPointer,
        into target: UnsafeMutableRawBufferPointer, buffers: Buffers, zeroDigests: inout [Int: SHA256Digest]
    ) throws(FerryError) {
        switch operation.kind {
        case .zero:
            target.initializeMemory(as: UInt8.self, repeating: 0)
        case .copy:
            guard sourceBytes.count == target.count else {
                throw DeltaFormat.invalid(
                    "operation \(index) copies \(sourceBytes.count) bytes into \(target.count)")
            }
            target.copyMemory(from: sourceBytes)
        case .literal, .diff:
            let compressed = try readData(delta, operation, into: buffers.data, index: index)
            do throws(FerryError) {
                try XZDictionaryCodec.decode(
                    compressed,
                    dictionary: operation.kind == .diff ? sourceBytes : UnsafeRawBufferPointer(start: nil, count: 0),
                    into: target, memory: buffers.memory)
            } catch {
                throw error.prefixed("delta operation \(index) (target bytes \(operation.target))")
            }
        case .patch:
            let data = try readData(delta, operation, into: buffers.data, index: index)
            let buffer =
                buffers.scratch
                ?? UnsafeMutableRawBufferPointer.allocate(byteCount: DeltaPatch.scratchSize, alignment: 16)
            buffers.scratch = buffer
            try DeltaPatch.decode(
                data, source: sourceBytes, into: target, scratch: buffer, operation: index, memory: buffers.memory)
        }
        // A copy whose source hash is its target hash was checked when its source was read.
        // Zeros of one length always hash alike: once per length.
        var alreadyChecked = operation.kind == .copy && operation.sourceSHA256 == operation.targetSHA256
        if operation.kind == .zero {
            let digest = zeroDigests[target.count] ?? SHA256Hasher.hash(UnsafeRawBufferPointer(target))
            zeroDigests[target.count] = digest
            alreadyChecked = digest == operation.targetSHA256
        }
        guard alreadyChecked || SHA256Hasher.hash(UnsafeRawBufferPointer(target)) == operation.targetSHA256 else {
            throw DeltaFormat.invalid(
                "operation \(index) produces target bytes \(operation.target) that do not match their SHA-256")
        }
    }

    private func readOperation(_ delta: any ByteSource, index: Int64, expectedStart: Int64) throws(FerryError)
        -> DeltaFormat.Operation
    {
        let fixed = try delta.readExactly(32, what: "delta operation \(index)")
        var reader = LittleEndianReader(fixed)
        guard let kind = DeltaFormat.Kind(rawValue: fixed[0]), fixed[1] == 0, fixed[2] == 0, fixed[3] == 0 else {
            throw DeltaFormat.invalid("operation \(index) has an unknown kind \(fixed[0])")
        }
        reader.position = 4
        let extentCount = Int(reader.u32())
        let targetOffset = reader.u64()
        let targetLength = reader.u64()
        let dataLength = reader.u64()
        guard extentCount <= DeltaFormat.maximumSourceExtents else {
            throw FerryError(
                code: .limitExceeded,
                message:
                    "delta: operation \(index) reads \(extentCount) source extents (at most \(DeltaFormat.maximumSourceExtents))"
            )
        }
        guard targetLength > 0, targetLength <= UInt64(DeltaFormat.maximumTargetLength) else {
            throw FerryError(
                code: .limitExceeded,
                message:
                    "delta: operation \(index) writes \(targetLength) bytes (1 to \(DeltaFormat.maximumTargetLength))")
        }
        guard targetOffset == UInt64(expectedStart) else {
            throw DeltaFormat.invalid(
                "operation \(index) starts at target byte \(targetOffset), not \(expectedStart): operations must follow each other without gaps or overlaps"
            )
        }
        guard targetOffset + targetLength <= UInt64(header.targetSize) else {
            throw DeltaFormat.invalid("operation \(index) writes past the end of the \(header.targetSize)-byte target")
        }
        guard dataLength <= UInt64(DeltaFormat.maximumDataLength) else {
            throw FerryError(
                code: .limitExceeded, message: "delta: operation \(index) carries \(dataLength) bytes of data")
        }
        let rest = try delta.readExactly(16 * extentCount + 64, what: "delta operation \(index)")
        reader = LittleEndianReader(rest)
        var sources: [Range<Int64>] = []
        var total: UInt64 = 0
        let sourceLimit = UInt64(DeltaFormat.maximumSourceLength(kind))
        for _ in 0..<extentCount {
            let offset = reader.u64()
            let length = reader.u64()
            guard length > 0, length <= sourceLimit, offset <= UInt64(header.sourceSize),
                offset + length <= UInt64(header.sourceSize)
            else {
                throw DeltaFormat.invalid("operation \(index) reads outside the \(header.sourceSize)-byte source")
            }
            total += length
            sources.append(Int64(offset)..<Int64(offset + length))
        }
        guard total <= sourceLimit else {
            throw FerryError(
                code: .limitExceeded,
                message: "delta: operation \(index) (\(kind)) reads \(total) source bytes (at most \(sourceLimit))"
            )
        }
        for extent in sources where !isChecked(extent) {
            throw DeltaFormat.invalid(
                "operation \(index) reads source bytes \(extent) that the delta's source checks do not cover")
        }
        let targetHash = SHA256Digest(bytes: reader.bytes(32))!
        let sourceHashBytes = reader.bytes(32)
        let operation = DeltaFormat.Operation(
            kind: kind, target: Int64(targetOffset)..<Int64(targetOffset + targetLength), sources: sources,
            dataLength: Int64(dataLength),
            targetSHA256: targetHash, sourceSHA256: sources.isEmpty ? nil : SHA256Digest(bytes: sourceHashBytes))
        switch kind {
        case .zero, .literal:
            guard sources.isEmpty else {
                throw DeltaFormat.invalid("operation \(index) (\(kind)) names source extents")
            }
        case .copy:
            guard !sources.isEmpty, dataLength == 0 else {
                throw DeltaFormat.invalid("operation \(index) (copy) is malformed")
            }
        case .diff, .patch:
            guard !sources.isEmpty else {
                throw DeltaFormat.invalid("operation \(index) (\(kind)) names no source extent")
            }
        }
        if kind == .patch && header.formatVersion < 3 {
            throw DeltaFormat.invalid(
                "operation \(index) is a patch, which formatVersion \(header.formatVersion) lacks")
        }
        if kind == .zero, dataLength != 0 { throw DeltaFormat.invalid("operation \(index) (zero) carries data") }
        if (kind == .literal || kind == .diff || kind == .patch) && dataLength == 0 {
            throw DeltaFormat.invalid("operation \(index) carries no data")
        }
        return operation
    }

    /// Whether the source checks cover `extent` completely (checks are sorted and disjoint; an
    /// extent may span several that touch).
    private func isChecked(_ extent: Range<Int64>) -> Bool {
        var low = 0
        var high = sourceChecks.count
        while low < high {
            let middle = (low + high) / 2
            if sourceChecks[middle].range.upperBound <= extent.lowerBound { low = middle + 1 } else { high = middle }
        }
        var covered = extent.lowerBound
        var index = low
        while covered < extent.upperBound, index < sourceChecks.count, sourceChecks[index].range.lowerBound <= covered {
            covered = sourceChecks[index].range.upperBound
            index += 1
        }
        return covered >= extent.upperBound
    }

    /// Reads an operation's data into `buffer` (``DeltaFormat/maximumDataLength`` bytes, which
    /// ``readOperation(_:index:expectedStart:)`` checked the length against).
    private func readData(
        _ delta: any ByteSource, _ operation: DeltaFormat.Operation, into buffer: UnsafeMutableRawBufferPointer,
        index: Int64
    ) throws(FerryError) -> UnsafeRawBufferPointer {
        let data = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(operation.dataLength)])
        try delta.readExactly(into: data, what: "the data of delta operation \(index)")
        return UnsafeRawBufferPointer(data)
    }

    /// Reads and checks an operation's source extents.
    private func readSources(
        _ operation: DeltaFormat.Operation, into buffer: UnsafeMutableRawBufferPointer, index: Int64, check: Bool
    ) throws(FerryError)
        -> UnsafeMutableRawBufferPointer
    {
        var filled = 0
        for extent in operation.sources {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + extent.count)])
            try source.read(into: slice, at: extent.lowerBound)
            filled += extent.count
        }
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<filled])
        if check { try checkSources(operation, UnsafeRawBufferPointer(bytes), index: index) }
        return bytes
    }

    /// Compares an operation's source bytes with its source SHA-256.
    /// - Throws: `.sourceMismatch` naming the first block of the operation's source.
    private func checkSources(_ operation: DeltaFormat.Operation, _ bytes: UnsafeRawBufferPointer, index: Int64)
        throws(FerryError)
    {
        if let expected = operation.sourceSHA256, SHA256Hasher.hash(bytes) != expected {
            let block = operation.sources[0].lowerBound / Int64(DeltaFormat.blockSize)
            throw FerryError(
                code: .sourceMismatch,
                message:
                    "delta needs source sha256 \(header.sourceSHA256) (\(header.sourceSize) bytes), but \(sourceName) differs at block \(block) (operation \(index))"
            )
        }
    }
}
