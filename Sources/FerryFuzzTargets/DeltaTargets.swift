import FerryDelta
import FerrySystem

/// Block deltas, applied to a fixed source the way an install applies them to the booted slot.
public enum DeltaTargets {
    /// The fixed source image the `delta` target applies every input to (64 KiB): 16 KiB of
    /// pseudo-random bytes, 16 KiB of zeros, 32 KiB of repeated text. The seed deltas in the
    /// corpus were made against it (`ferry-fuzz make-seeds`).
    public static let source: [UInt8] = {
        var bytes: [UInt8] = []
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<(16 << 10) {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes.append(UInt8(truncatingIfNeeded: state >> 24))
        }
        bytes += [UInt8](repeating: 0, count: 16 << 10)
        let line = Array("ferry fuzz source: the quick brown fox jumps over the lazy dog 0123456789\n".utf8)
        while bytes.count < 64 << 10 { bytes += line }
        return Array(bytes[..<(64 << 10)])
    }()

    /// Header and source checks, the source checked against them, then every operation applied
    /// (each checked against its hashes) and the whole target's hash. Every target extent handed
    /// out must follow the previous one, inside the declared target size.
    @Sendable static func delta(_ input: UnsafeRawBufferPointer) {
        let delta = MemoryByteSource(Array(input), name: "fuzz.delta")
        let image = MemoryBlockTarget(source)
        do throws(FerryError) {
            let applier = try DeltaApplier(delta: delta, source: image, sourceName: "the fuzz source")
            try applier.verifySource()
            var expected: Int64 = 0
            try applier.apply(from: delta) { (offset, bytes, next) throws(FerryError) in
                guard offset == expected, next.targetOffset == offset + Int64(bytes.count),
                    next.targetOffset <= applier.header.targetSize
                else {
                    violated("delta", "extent at \(offset) (\(bytes.count) bytes) out of order; expected \(expected)")
                }
                expected = next.targetOffset
            }
            guard expected == applier.header.targetSize else {
                violated("delta", "an apply ended at \(expected) of \(applier.header.targetSize)")
            }
        } catch {}
    }
}

/// A read-only image in memory (the delta target's source, the seed generator's images).
public final class MemoryBlockTarget: BlockTarget {
    public private(set) var bytes: [UInt8]
    public var byteCount: Int64 { Int64(bytes.count) }
    public var logicalSectorSize: Int { 512 }

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        guard offset >= 0, offset <= byteCount, Int64(buffer.count) <= byteCount - offset else {
            throw FerryError(
                code: .io,
                message: "memory image: read of \(buffer.count) bytes at \(offset) outside \(byteCount) bytes")
        }
        bytes.withUnsafeBytes { all in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[Int(offset)..<(Int(offset) + buffer.count)]))
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        throw FerryError(code: .permissionDenied, message: "memory image: read-only")
    }

    public func synchronize() throws(FerryError) {}

    public func zeroOut(_ range: Range<Int64>) throws(FerryError) {
        throw FerryError(code: .permissionDenied, message: "memory image: read-only")
    }
}
