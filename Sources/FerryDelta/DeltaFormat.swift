import FerryCrypto
import FerrySystem

/// Ferry's block delta (docs/delta-format.md): a header, then operations, each followed by its
/// data, in target order — so a delta is applied in one sequential pass over the target.
///
/// All integers are little-endian. Header (112 bytes):
///
///     magic "FERRYDLT" · formatVersion u32 (1) · blockSize u32 (4096)
///     sourceSize u64 · sourceSha256 [32] · targetSize u64 · targetSha256 [32]
///     operationCount u64 · reserved [8] (zero)
///
/// Operation (96 + 16 × sourceExtentCount bytes, then dataLength bytes of data):
///
///     kind u8 · reserved [3] (zero) · sourceExtentCount u32
///     targetOffset u64 · targetLength u64 · dataLength u64
///     sourceExtentCount × (offset u64 · length u64)
///     targetSha256 [32] · sourceSha256 [32] (of the source extents' bytes, concatenated; zero when none)
public enum DeltaFormat {
    public static let magic = Array("FERRYDLT".utf8)
    public static let formatVersion: UInt32 = 1
    public static let blockSize = 4096
    public static let headerSize = 112

    /// Limits that bound the applier's memory whatever the delta says.
    public static let maximumTargetLength = 4 << 20
    public static let maximumSourceLength = 8 << 20
    public static let maximumSourceExtents = 64

    public enum Kind: UInt8, Sendable {
        /// The target extent is zeros.
        case zero = 0
        /// The target extent is the source extents' bytes.
        case copy = 1
        /// The target extent is the data: a raw LZMA2 stream without dictionary.
        case literal = 2
        /// The target extent is the data: a raw LZMA2 stream whose preset dictionary is the source extents' bytes.
        case diff = 3
    }

    public struct Header: Sendable, Equatable {
        public var sourceSize: Int64
        public var sourceSHA256: SHA256Digest
        public var targetSize: Int64
        public var targetSHA256: SHA256Digest
        public var operationCount: Int64

        public init(sourceSize: Int64, sourceSHA256: SHA256Digest, targetSize: Int64, targetSHA256: SHA256Digest, operationCount: Int64) {
            self.sourceSize = sourceSize
            self.sourceSHA256 = sourceSHA256
            self.targetSize = targetSize
            self.targetSHA256 = targetSHA256
            self.operationCount = operationCount
        }

        public func encoded() -> [UInt8] {
            var bytes = DeltaFormat.magic
            bytes.appendLittleEndian(DeltaFormat.formatVersion)
            bytes.appendLittleEndian(UInt32(DeltaFormat.blockSize))
            bytes.appendLittleEndian(UInt64(sourceSize))
            bytes += sourceSHA256.bytes
            bytes.appendLittleEndian(UInt64(targetSize))
            bytes += targetSHA256.bytes
            bytes.appendLittleEndian(UInt64(operationCount))
            bytes += [UInt8](repeating: 0, count: 8)
            return bytes
        }

        /// - Throws: `.bundleInvalid` naming what is wrong.
        public static func decode(_ bytes: [UInt8]) throws(FerryError) -> Header {
            guard bytes.count == DeltaFormat.headerSize, Array(bytes[0..<8]) == DeltaFormat.magic else {
                throw DeltaFormat.invalid("it does not start with a Ferry delta header")
            }
            var reader = LittleEndianReader(bytes, at: 8)
            let version = reader.u32()
            guard version == DeltaFormat.formatVersion else {
                throw DeltaFormat.invalid("formatVersion \(version) is not supported (this Ferry reads \(DeltaFormat.formatVersion))")
            }
            let blockSize = reader.u32()
            guard blockSize == DeltaFormat.blockSize else { throw DeltaFormat.invalid("block size \(blockSize) is not 4096") }
            let sourceSize = reader.u64()
            let sourceHash = SHA256Digest(bytes: reader.bytes(32))!
            let targetSize = reader.u64()
            let targetHash = SHA256Digest(bytes: reader.bytes(32))!
            let count = reader.u64()
            guard reader.bytes(8).allSatisfy({ $0 == 0 }) else { throw DeltaFormat.invalid("reserved header bytes are not zero") }
            guard sourceSize <= UInt64(Int64.max / 2), targetSize <= UInt64(Int64.max / 2) else {
                throw DeltaFormat.invalid("absurd image sizes")
            }
            // Every operation produces at least one byte of the target.
            guard count <= max(targetSize, 1) else {
                throw FerryError(code: .limitExceeded, message: "delta: \(count) operations for a \(targetSize)-byte target")
            }
            return Header(
                sourceSize: Int64(sourceSize), sourceSHA256: sourceHash, targetSize: Int64(targetSize), targetSHA256: targetHash,
                operationCount: Int64(count))
        }
    }

    public struct Operation: Sendable, Equatable {
        public var kind: Kind
        public var target: Range<Int64>
        public var sources: [Range<Int64>]
        public var dataLength: Int64
        public var targetSHA256: SHA256Digest
        public var sourceSHA256: SHA256Digest?

        public init(
            kind: Kind, target: Range<Int64>, sources: [Range<Int64>] = [], dataLength: Int64 = 0, targetSHA256: SHA256Digest,
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
