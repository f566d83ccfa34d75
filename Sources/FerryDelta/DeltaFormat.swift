import FerryCrypto
import FerrySystem

/// Ferry's block delta (docs/delta-format.md): a header, then operations, each followed by its
/// data, in target order — so a delta is applied in one sequential pass over the target.
///
/// All integers are little-endian. Header (112 bytes), then `checkCount` source checks:
///
///     magic "FERRYDLT" · formatVersion u32 (3; 2 is read too) · blockSize u32 (4096)
///     sourceSize u64 · sourceSha256 [32] · targetSize u64 · targetSha256 [32]
///     operationCount u64 · checkCount u64
///     checkCount × (offset u64 · length u64 · sha256 [32])   — 48 bytes each
///
/// The source checks cover every source byte an operation reads (sorted, disjoint, block-aligned,
/// each inside one cell of a 4 MiB grid — coarser for sources over 4 GiB — at most 1,024): a
/// device verifies them all before it writes anything.
///
/// Operation (96 + 16 × sourceExtentCount bytes, then dataLength bytes of data):
///
///     kind u8 · reserved [3] (zero) · sourceExtentCount u32
///     targetOffset u64 · targetLength u64 · dataLength u64
///     sourceExtentCount × (offset u64 · length u64)
///     targetSha256 [32] · sourceSha256 [32] (of the source extents' bytes, concatenated; zero when none)
///
/// A `patch` operation's data is laid out as ``DeltaPatch`` describes.
public enum DeltaFormat {
    public static let magic = Array("FERRYDLT".utf8)
    /// The version this Ferry writes; it reads this one and ``readableVersions``.
    public static let formatVersion: UInt32 = 3
    /// Version 2 lacks the `patch` kind; otherwise it is the same format.
    public static let readableVersions: ClosedRange<UInt32> = 2...3
    public static let blockSize = 4096
    public static let headerSize = 112

    /// Limits that bound the applier's memory whatever the delta says.
    public static let maximumTargetLength = 4 << 20
    public static let maximumSourceLength = 8 << 20
    /// A `patch` reads up to this much source (its streams need no window over it).
    public static let maximumPatchSourceLength = 16 << 20

    /// The most source bytes one operation of `kind` reads.
    public static func maximumSourceLength(_ kind: Kind) -> Int {
        kind == .patch ? maximumPatchSourceLength : maximumSourceLength
    }
    public static let maximumSourceExtents = 64
    /// The most data one operation carries (LZMA2's worst case for incompressible target bytes).
    public static let maximumDataLength = maximumTargetLength + maximumTargetLength / 8 + 4096
    /// Source checks: at most this many, each inside one grid cell of at least 4 MiB.
    public static let maximumChecks = 1024
    public static let minimumCheckCell = 4 << 20
    public static let checkRecordSize = 48

    public enum Kind: UInt8, Sendable {
        /// The target extent is zeros.
        case zero = 0
        /// The target extent is the source extents' bytes.
        case copy = 1
        /// The target extent is the data: a raw LZMA2 stream without dictionary.
        case literal = 2
        /// The target extent is the data: a raw LZMA2 stream whose preset dictionary is the source extents' bytes.
        case diff = 3
        /// The target extent is the source extents' bytes with approximate matches: control,
        /// difference and literal streams (``DeltaPatch``). formatVersion 3 on.
        case patch = 4
    }

    public struct Header: Sendable, Equatable {
        /// The version the delta was written in (decoded), or is written in.
        public var formatVersion: UInt32 = DeltaFormat.formatVersion
        public var sourceSize: Int64
        public var sourceSHA256: SHA256Digest
        public var targetSize: Int64
        public var targetSHA256: SHA256Digest
        public var operationCount: Int64
        /// How many source checks follow the header.
        public var checkCount: Int64

        public init(
            sourceSize: Int64, sourceSHA256: SHA256Digest, targetSize: Int64, targetSHA256: SHA256Digest,
            operationCount: Int64,
            checkCount: Int64
        ) {
            self.sourceSize = sourceSize
            self.sourceSHA256 = sourceSHA256
            self.targetSize = targetSize
            self.targetSHA256 = targetSHA256
            self.operationCount = operationCount
            self.checkCount = checkCount
        }

        public func encoded() -> [UInt8] {
            var bytes = DeltaFormat.magic
            bytes.appendLittleEndian(formatVersion)
            bytes.appendLittleEndian(UInt32(DeltaFormat.blockSize))
            bytes.appendLittleEndian(UInt64(sourceSize))
            bytes += sourceSHA256.bytes
            bytes.appendLittleEndian(UInt64(targetSize))
            bytes += targetSHA256.bytes
            bytes.appendLittleEndian(UInt64(operationCount))
            bytes.appendLittleEndian(UInt64(checkCount))
            return bytes
        }

        /// - Throws: `.bundleInvalid` naming what is wrong.
        public static func decode(_ bytes: [UInt8]) throws(FerryError) -> Header {
            guard bytes.count == DeltaFormat.headerSize, Array(bytes[0..<8]) == DeltaFormat.magic else {
                throw DeltaFormat.invalid("it does not start with a Ferry delta header")
            }
            var reader = LittleEndianReader(bytes, at: 8)
            let version = reader.u32()
            guard DeltaFormat.readableVersions.contains(version) else {
                throw DeltaFormat.invalid(
                    "formatVersion \(version) is not supported (this Ferry reads \(DeltaFormat.readableVersions.lowerBound) to \(DeltaFormat.readableVersions.upperBound))"
                )
            }
            let blockSize = reader.u32()
            guard blockSize == DeltaFormat.blockSize else {
                throw DeltaFormat.invalid("block size \(blockSize) is not 4096")
            }
            let sourceSize = reader.u64()
            let sourceHash = SHA256Digest(bytes: reader.bytes(32))!
            let targetSize = reader.u64()
            let targetHash = SHA256Digest(bytes: reader.bytes(32))!
            let count = reader.u64()
            let checks = reader.u64()
            guard sourceSize <= UInt64(Int64.max / 2), targetSize <= UInt64(Int64.max / 2) else {
                throw DeltaFormat.invalid("absurd image sizes")
            }
            // Every operation produces at least one byte of the target.
            guard count <= max(targetSize, 1) else {
                throw FerryError(
                    code: .limitExceeded, message: "delta: \(count) operations for a \(targetSize)-byte target")
            }
            guard checks <= UInt64(DeltaFormat.maximumChecks) else {
                throw FerryError(
                    code: .limitExceeded, message: "delta: \(checks) source checks for a \(sourceSize)-byte source")
            }
            var header = Header(
                sourceSize: Int64(sourceSize), sourceSHA256: sourceHash, targetSize: Int64(targetSize),
                targetSHA256: targetHash,
                operationCount: Int64(count), checkCount: Int64(checks))
            header.formatVersion = version
            return header
        }
    }

    /// A source range and the SHA-256 of its bytes in the image the delta was made from.
    public typealias SourceCheck = HashedRange

    public struct Operation: Sendable, Equatable {
        public var kind: Kind
        public var target: Range<Int64>
        public var sources: [Range<Int64>]
        public var dataLength: Int64
        public var targetSHA256: SHA256Digest
        public var sourceSHA256: SHA256Digest?

        public init(
            kind: Kind, target: Range<Int64>, sources: [Range<Int64>] = [], dataLength: Int64 = 0,
            targetSHA256: SHA256Digest,
            sourceSHA256: SHA256Digest? = nil
        ) {
            self.kind = kind
            self.target = target
            self.sources = sources
            self.dataLength = dataLength
            self.targetSHA256 = targetSHA256
            self.sourceSHA256 = sourceSHA256
        }

        public var sourceLength: Int64 { sources.reduce(0) { $0 + Int64($1.count) } }

        public static func encodedSize(sourceExtents: Int) -> Int { 96 + 16 * sourceExtents }

        public func encoded() -> [UInt8] {
            var bytes: [UInt8] = [kind.rawValue, 0, 0, 0]
            bytes.appendLittleEndian(UInt32(sources.count))
            bytes.appendLittleEndian(UInt64(target.lowerBound))
            bytes.appendLittleEndian(UInt64(target.count))
            bytes.appendLittleEndian(UInt64(dataLength))
            for source in sources {
                bytes.appendLittleEndian(UInt64(source.lowerBound))
                bytes.appendLittleEndian(UInt64(source.count))
            }
            bytes += targetSHA256.bytes
            bytes += sourceSHA256?.bytes ?? [UInt8](repeating: 0, count: 32)
            return bytes
        }
    }

    /// Reads a delta's header and source checks (what precedes the operations).
    /// - Throws: `.bundleInvalid`, `.limitExceeded`, `.truncated`.
    public static func readPreamble(_ delta: any ByteSource) throws(FerryError) -> (Header, [SourceCheck]) {
        let header = try Header.decode(try delta.readExactly(headerSize, what: "the delta header"))
        var checks: [SourceCheck] = []
        var after: Int64 = 0
        for index in 0..<header.checkCount {
            let record = try delta.readExactly(checkRecordSize, what: "delta source check \(index)")
            let check = try decodeCheck(record, index: index, after: after, sourceSize: header.sourceSize)
            checks.append(check)
            after = check.range.upperBound
        }
        return (header, checks)
    }

    static func invalid(_ problem: String) -> FerryError {
        FerryError(code: .bundleInvalid, message: "delta: \(problem)")
    }
}

extension [UInt8] {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

struct LittleEndianReader {
    let bytes: [UInt8]
    var position: Int

    init(_ bytes: [UInt8], at position: Int = 0) {
        self.bytes = bytes
        self.position = position
    }

    mutating func u32() -> UInt32 {
        defer { position += 4 }
        return (0..<4).reduce(0) { $0 | UInt32(bytes[position + $1]) << (8 * $1) }
    }

    mutating func u64() -> UInt64 {
        defer { position += 8 }
        return (0..<8).reduce(0) { $0 | UInt64(bytes[position + $1]) << (8 * $1) }
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }
}

extension DeltaFormat {
    /// One source check record: offset, length, SHA-256.
    public static func encoded(_ check: SourceCheck) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLittleEndian(UInt64(check.range.lowerBound))
        bytes.appendLittleEndian(UInt64(check.range.count))
        return bytes + check.sha256.bytes
    }

    /// The length of the grid cells checks are cut at for a source of `sourceSize` bytes:
    /// 4 MiB, or longer for sources over 4 GiB, so that there are at most `maximumChecks`.
    public static func cellLength(sourceSize: Int64) -> Int64 {
        let unit = Int64(DeltaFormat.minimumCheckCell)
        let needed = (sourceSize + Int64(DeltaFormat.maximumChecks) - 1) / Int64(DeltaFormat.maximumChecks)
        return max(unit, (needed + unit - 1) / unit * unit)
    }

    /// The source ranges to check for a set of extents the operations read: the extents,
    /// block-aligned, merged where they touch, cut at the grid cells of
    /// ``cellLength(sourceSize:)``. When that makes more than `maximumChecks`, each cell's
    /// ranges become one span from its first to its last byte read (which then also covers
    /// blocks the delta does not read: they belong to the same image and must match as well).
    public static func checkRanges(coveredBy extents: [Range<Int64>], sourceSize: Int64) -> [Range<Int64>] {
        let block = Int64(DeltaFormat.blockSize)
        let cell = cellLength(sourceSize: sourceSize)
        let aligned = extents.filter { !$0.isEmpty }
            .map { ($0.lowerBound / block * block)..<min(sourceSize, ($0.upperBound + block - 1) / block * block) }
            .sorted { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int64>] = []
        for extent in aligned {
            if let last = merged.last, last.upperBound >= extent.lowerBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, extent.upperBound)
            } else {
                merged.append(extent)
            }
        }
        var pieces: [Range<Int64>] = []
        for range in merged {
            var start = range.lowerBound
            while start < range.upperBound {
                let end = min(range.upperBound, (start / cell + 1) * cell)
                pieces.append(start..<end)
                start = end
            }
        }
        guard pieces.count > DeltaFormat.maximumChecks else { return pieces }
        var spans: [Range<Int64>] = []
        for piece in pieces {
            if let last = spans.last, last.lowerBound / cell == piece.lowerBound / cell {
                spans[spans.count - 1] = last.lowerBound..<piece.upperBound
            } else {
                spans.append(piece)
            }
        }
        return spans
    }

    /// Reads and checks one record; `after` is where the previous check ended.
    /// - Throws: `.bundleInvalid` for a check outside the source, unaligned, too long, or out of order.
    public static func decodeCheck(_ bytes: [UInt8], index: Int64, after: Int64, sourceSize: Int64) throws(FerryError)
        -> SourceCheck
    {
        var reader = LittleEndianReader(bytes)
        let offset = reader.u64()
        let length = reader.u64()
        let block = UInt64(DeltaFormat.blockSize)
        let cell = UInt64(cellLength(sourceSize: sourceSize))
        // Inside the source first: only then can offset + length not overflow.
        guard length > 0, offset % block == 0, offset >= UInt64(after), offset <= UInt64(sourceSize),
            length <= UInt64(sourceSize) - offset, offset / cell == (offset + length - 1) / cell,
            length % block == 0 || offset + length == UInt64(sourceSize)
        else {
            throw DeltaFormat.invalid(
                "source check \(index) (bytes \(offset) + \(length)) is not an aligned range after the previous one inside the \(sourceSize)-byte source"
            )
        }
        return SourceCheck(
            range: Int64(offset)..<Int64(offset + length), sha256: SHA256Digest(bytes: reader.bytes(32))!)
    }
}
