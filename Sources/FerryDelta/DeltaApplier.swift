import FerryCrypto
import FerrySystem
import FerryXZ

/// Applies a delta read from a stream, in one sequential pass over the target.
///
/// Every operation is checked before its bytes are handed out: it must start where the previous
/// one ended (no gap, overlap or reordering), stay inside the target, read only inside the source,
/// and respect ``DeltaFormat``'s size limits (so memory is bounded, about 32 MiB at most). The
/// source extents it reads are hashed and compared with the operation's source SHA-256 before
/// they are used; the bytes it produces are compared with its target SHA-256 before `body`
/// sees them. The whole target's SHA-256 is compared at the end.
public struct DeltaApplier {
    public let header: DeltaFormat.Header
    private let source: any BlockTarget
    private let sourceName: String

    /// Reads the delta's header from `delta`.
    /// - Parameters:
    ///   - source: the image the delta was made from (read only, extent by extent).
    ///   - sourceName: names the source in errors ("slot rootfs_a", a file).
    /// - Throws: `.bundleInvalid` for a malformed header; `.notCompatible` when the source's size differs.
    public init(delta: any ByteSource, source: any BlockTarget, sourceName: String) throws(FerryError) {
        header = try DeltaFormat.Header.decode(try delta.readExactly(DeltaFormat.headerSize, what: "the delta header"))
        self.source = source
        self.sourceName = sourceName
        guard source.byteCount >= header.sourceSize else {
            throw FerryError(
                code: .notCompatible,
                message: "delta needs source \(header.sourceSHA256) (\(header.sourceSize) bytes), but \(sourceName) has only \(source.byteCount) bytes")
        }
    }

    /// Applies every operation; `body` receives each verified target extent in order.
    /// - Throws: `.notCompatible` when a source extent differs from what the delta was made from;
    ///   `.bundleInvalid` / `.limitExceeded` / `.truncated` for a bad delta; `body`'s errors.
    public func apply(
        from delta: any ByteSource, _ body: (_ offset: Int64, _ bytes: UnsafeRawBufferPointer) throws(FerryError) -> Void
    ) throws(FerryError) {
        let targetBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DeltaFormat.maximumTargetLength, alignment: 4096)
        let sourceBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DeltaFormat.maximumSourceLength, alignment: 4096)
        defer {
            targetBuffer.deallocate()
            sourceBuffer.deallocate()
        }
        let whole = SHA256Hasher()
        var next: Int64 = 0
        for index in 0..<header.operationCount {
            let operation = try readOperation(delta, index: index, expectedStart: next)
            let target = UnsafeMutableRawBufferPointer(rebasing: targetBuffer[..<operation.target.count])
            let sourceBytes = try readSources(operation, into: sourceBuffer, index: index)
            switch operation.kind {
            case .zero:
                target.initializeMemory(as: UInt8.self, repeating: 0)
            case .copy:
                guard sourceBytes.count == target.count else {
                    throw DeltaFormat.invalid("operation \(index) copies \(sourceBytes.count) bytes into \(target.count)")
                }
                target.copyMemory(from: UnsafeRawBufferPointer(sourceBytes))
            case .literal, .diff:
                let data = try delta.readExactly(Int(operation.dataLength), what: "the data of delta operation \(index)")
                try data.withTypedUnsafeBytes { (compressed) throws(FerryError) in
                    do throws(FerryError) {
                        try XZDictionaryCodec.decode(
                            compressed, dictionary: operation.kind == .diff ? UnsafeRawBufferPointer(sourceBytes) : UnsafeRawBufferPointer(start: nil, count: 0),
                            into: target)
                    } catch {
                        throw error.prefixed("delta operation \(index) (target bytes \(operation.target))")
                    }
                }
            }
            guard SHA256Hasher.hash(UnsafeRawBufferPointer(target)) == operation.targetSHA256 else {
                throw DeltaFormat.invalid("operation \(index) produces target bytes \(operation.target) that do not match their SHA-256")
            }
            whole.update(UnsafeRawBufferPointer(target))
            try body(operation.target.lowerBound, UnsafeRawBufferPointer(target))
            next = operation.target.upperBound
        }
        guard next == header.targetSize else {
            throw DeltaFormat.invalid("the operations end at byte \(next) of a \(header.targetSize)-byte target")
        }
        guard whole.finalize() == header.targetSHA256 else {
            throw DeltaFormat.invalid("the target does not match its SHA-256 \(header.targetSHA256)")
        }
    }

    private func readOperation(_ delta: any ByteSource, index: Int64, expectedStart: Int64) throws(FerryError) -> DeltaFormat.Operation {
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
            throw FerryError(code: .limitExceeded, message: "delta: operation \(index) reads \(extentCount) source extents (at most \(DeltaFormat.maximumSourceExtents))")
        }
        guard targetLength > 0, targetLength <= UInt64(DeltaFormat.maximumTargetLength) else {
            throw FerryError(code: .limitExceeded, message: "delta: operation \(index) writes \(targetLength) bytes (1 to \(DeltaFormat.maximumTargetLength))")
        }
        guard targetOffset == UInt64(expectedStart) else {
            throw DeltaFormat.invalid(
                "operation \(index) starts at target byte \(targetOffset), not \(expectedStart): operations must follow each other without gaps or overlaps")
        }
        guard targetOffset + targetLength <= UInt64(header.targetSize) else {
            throw DeltaFormat.invalid("operation \(index) writes past the end of the \(header.targetSize)-byte target")
        }
        guard dataLength <= UInt64(DeltaFormat.maximumTargetLength + DeltaFormat.maximumTargetLength / 8 + 4096) else {
            throw FerryError(code: .limitExceeded, message: "delta: operation \(index) carries \(dataLength) bytes of data")
        }
        let rest = try delta.readExactly(16 * extentCount + 64, what: "delta operation \(index)")
        reader = LittleEndianReader(rest)
        var sources: [Range<Int64>] = []
        var total: UInt64 = 0
        for _ in 0..<extentCount {
            let offset = reader.u64()
            let length = reader.u64()
            guard length > 0, length <= UInt64(DeltaFormat.maximumSourceLength), offset <= UInt64(header.sourceSize),
                offset + length <= UInt64(header.sourceSize)
            else {
                throw DeltaFormat.invalid("operation \(index) reads outside the \(header.sourceSize)-byte source")
            }
            total += length
            sources.append(Int64(offset)..<Int64(offset + length))
        }
        guard total <= UInt64(DeltaFormat.maximumSourceLength) else {
            throw FerryError(code: .limitExceeded, message: "delta: operation \(index) reads \(total) source bytes (at most \(DeltaFormat.maximumSourceLength))")
        }
        let targetHash = SHA256Digest(bytes: reader.bytes(32))!
        let sourceHashBytes = reader.bytes(32)
        let operation = DeltaFormat.Operation(
            kind: kind, target: Int64(targetOffset)..<Int64(targetOffset + targetLength), sources: sources, dataLength: Int64(dataLength),
            targetSHA256: targetHash, sourceSHA256: sources.isEmpty ? nil : SHA256Digest(bytes: sourceHashBytes))
        switch kind {
        case .zero, .literal:
            guard sources.isEmpty else { throw DeltaFormat.invalid("operation \(index) (\(kind)) names source extents") }
        case .copy:
            guard !sources.isEmpty, dataLength == 0 else { throw DeltaFormat.invalid("operation \(index) (copy) is malformed") }
        case .diff:
            guard !sources.isEmpty else { throw DeltaFormat.invalid("operation \(index) (diff) names no source extent") }
        }
        if kind == .zero, dataLength != 0 { throw DeltaFormat.invalid("operation \(index) (zero) carries data") }
        if (kind == .literal || kind == .diff) && dataLength == 0 { throw DeltaFormat.invalid("operation \(index) carries no data") }
        return operation
    }

    /// Reads and checks an operation's source extents.
    private func readSources(_ operation: DeltaFormat.Operation, into buffer: UnsafeMutableRawBufferPointer, index: Int64) throws(FerryError)
        -> UnsafeMutableRawBufferPointer
    {
        var filled = 0
        for extent in operation.sources {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + extent.count)])
            try source.read(into: slice, at: extent.lowerBound)
            filled += extent.count
        }
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<filled])
        if let expected = operation.sourceSHA256, SHA256Hasher.hash(UnsafeRawBufferPointer(bytes)) != expected {
            let block = operation.sources[0].lowerBound / Int64(DeltaFormat.blockSize)
            throw FerryError(
                code: .notCompatible,
                message: "delta needs source \(header.sourceSHA256), but \(sourceName) differs (operation \(index) reads from block \(block))")
        }
        return bytes
    }
}
