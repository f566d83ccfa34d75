import FerrySystem
import FerryXZ

/// The data of a `patch` operation (formatVersion 3, docs/delta-format.md): approximate matches
/// against the operation's source extents, as three LZMA2 streams.
///
/// A 56-byte layout (the six lengths below, then `flags` u64), then the three streams back to back:
///
///     controlLength u64 · controlCompressed u64      control records (below), raw LZMA2
///     diffLength u64 · diffCompressed u64            cover bytes' differences, raw LZMA2
///     literalLength u64 · literalCompressed u64      uncovered bytes, raw LZMA2 (flag 1: whose
///                                                    preset dictionary is the source bytes)
///
/// A stream of length 0 is absent (compressed length 0). The control stream is LEB128 varints:
/// the record count n, then n `cover`s, n `literal`s and n `seek`s (zigzag-signed). The applier
/// keeps a position `p` in the source extents' bytes (concatenated), starting at 0; for each record
/// the next `cover` target bytes are `source[p + i] &+ diff[next]` (so `p + cover` must stay
/// inside the source bytes), then `p += cover`; the next `literal` target bytes are the literal
/// stream's next bytes; then `p += seek`. The records must use the diff and literal streams
/// exactly and produce exactly the operation's target length.
///
/// Compiled code whose addresses moved by a constant differs from its old version in a few bytes
/// of every instruction that refers across the change: as LZ matches that is a new match every few
/// bytes, as differences it is a stream of mostly zeros and repeated small values.
public enum DeltaPatch {
    public static let layoutSize = 56
    /// Layout flag: the literal stream's preset dictionary is the source bytes (allowed only when
    /// they are at most `DeltaFormat.maximumSourceLength`, which bounds the decoder's window).
    public static let literalAgainstSource: UInt64 = 1
    /// The longest control stream an operation may carry (decoded).
    public static let maximumControlLength = DeltaFormat.maximumTargetLength

    public struct Layout: Sendable, Equatable {
        public var controlLength: Int
        public var controlCompressed: Int
        public var diffLength: Int
        public var diffCompressed: Int
        public var literalLength: Int
        public var literalCompressed: Int
        public var flags: UInt64 = 0

        var encoded: [UInt8] {
            var bytes: [UInt8] = []
            for value in [
                controlLength, controlCompressed, diffLength, diffCompressed, literalLength, literalCompressed,
            ] {
                bytes.appendLittleEndian(UInt64(value))
            }
            bytes.appendLittleEndian(flags)
            return bytes
        }
    }

    /// One control record: `cover` bytes from the source plus differences, `literal` bytes from
    /// the literal stream, then the source position moves by `seek`.
    public struct Record: Sendable, Equatable {
        public var cover: Int
        public var literal: Int
        public var seek: Int

        public init(cover: Int, literal: Int, seek: Int) {
            self.cover = cover
            self.literal = literal
            self.seek = seek
        }
    }

    /// The control stream of `records`: their count, then every `cover`, every `literal`, every
    /// `seek` (grouped by field, which LZMA2 compresses about 5 % better than record by record).
    public static func control(_ records: [Record]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.count * 6 + 8)
        appendVarint(UInt64(records.count), to: &bytes)
        for record in records { appendVarint(UInt64(record.cover), to: &bytes) }
        for record in records { appendVarint(UInt64(record.literal), to: &bytes) }
        for record in records {
            let seek = Int64(record.seek)
            appendVarint(UInt64(bitPattern: (seek << 1) ^ (seek >> 63)), to: &bytes)
        }
        return bytes
    }

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    /// A patch operation's data: the layout and the three streams, compressed; the literal
    /// stream against `literalDictionary` when one is given (the operation's source bytes), or,
    /// with `orAlone`, against it or alone, whichever is smaller (the other two streams are
    /// compressed once).
    public static func encode(
        control: [UInt8], diff: [UInt8], literal: [UInt8], preset: Int, extreme: Bool,
        literalDictionary: UnsafeRawBufferPointer? = nil, orAlone: Bool = false
    ) throws(FerryError) -> [UInt8] {
        func compress(
            _ bytes: [UInt8], against dictionary: UnsafeRawBufferPointer? = nil, lc: Int = 3, lp: Int = 0, pb: Int = 2
        ) throws(FerryError) -> [UInt8] {
            guard !bytes.isEmpty else { return [] }
            return try bytes.withTypedUnsafeBytes { (input) throws(FerryError) in
                try XZDictionaryCodec.encode(
                    input, dictionary: dictionary ?? UnsafeRawBufferPointer(start: nil, count: 0), preset: preset,
                    extreme: extreme, literalContextBits: lc, literalPositionBits: lp, positionBits: pb)
            }
        }
        // pb=0: differences and literals have no 4-byte structure LZMA's position bits would find
        // (measured: about 1 % smaller on Debian kernel modules).
        let controlData = try compress(control)
        let diffData = try compress(diff, pb: 0)
        var literalData = try compress(literal, against: literalDictionary, pb: 0)
        var againstSource = literalDictionary != nil && !literal.isEmpty
        if againstSource && orAlone {
            let alone = try compress(literal, pb: 0)
            if alone.count <= literalData.count {
                literalData = alone
                againstSource = false
            }
        }
        var layout = Layout(
            controlLength: control.count, controlCompressed: controlData.count, diffLength: diff.count,
            diffCompressed: diffData.count, literalLength: literal.count, literalCompressed: literalData.count)
        if againstSource { layout.flags = literalAgainstSource }
        return layout.encoded + controlData + diffData + literalData
    }

    /// How much scratch memory ``decode(_:source:into:scratch:operation:)`` needs at most.
    public static let scratchSize = maximumControlLength + DeltaFormat.maximumTargetLength

    /// Decodes a patch operation's data against its source bytes into `target` (exactly its
    /// length), using `scratch` (at least ``scratchSize`` bytes).
    /// - Throws: `.bundleInvalid` naming what is inconsistent; `.limitExceeded` for a control
    ///   stream over the limit.
    public static func decode(
        _ data: UnsafeRawBufferPointer, source: UnsafeRawBufferPointer, into target: UnsafeMutableRawBufferPointer,
        scratch: UnsafeMutableRawBufferPointer, operation index: Int64, memory: LZMADecoderMemory? = nil
    ) throws(FerryError) {
        let layout = try readLayout(data, targetLength: target.count, operation: index)
        guard layout.flags & ~literalAgainstSource == 0,
            layout.flags == 0 || (layout.literalLength > 0 && source.count <= DeltaFormat.maximumSourceLength)
        else {
            throw DeltaFormat.invalid(
                "operation \(index) (patch) has layout flags \(layout.flags) that do not fit it (known: 1, with a literal stream and at most \(DeltaFormat.maximumSourceLength) source bytes)"
            )
        }
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        var input = layoutSize
        var output = 0
        var pieces: [UnsafeRawBufferPointer] = []
        let literalDictionary = layout.flags & literalAgainstSource != 0 ? source : none
        for (name, length, compressed, dictionary) in [
            ("control", layout.controlLength, layout.controlCompressed, none),
            ("diff", layout.diffLength, layout.diffCompressed, none),
            ("literal", layout.literalLength, layout.literalCompressed, literalDictionary),
        ] {
            let into = UnsafeMutableRawBufferPointer(rebasing: scratch[output..<(output + length)])
            if length > 0 {
                do throws(FerryError) {
                    try XZDictionaryCodec.decode(
                        UnsafeRawBufferPointer(rebasing: data[input..<(input + compressed)]), dictionary: dictionary,
                        into: into, memory: memory)
                } catch {
                    throw error.prefixed("delta operation \(index) (patch, \(name) stream)")
                }
            }
            pieces.append(UnsafeRawBufferPointer(into))
            input += compressed
            output += length
        }
        try run(control: pieces[0], diff: pieces[1], literal: pieces[2], source: source, into: target, operation: index)
    }

    /// Reads and checks the layout: lengths that add up to the data and to the target.
    static func readLayout(_ data: UnsafeRawBufferPointer, targetLength: Int, operation index: Int64)
        throws(FerryError) -> Layout
    {
        guard data.count >= layoutSize else {
            throw DeltaFormat.invalid(
                "operation \(index) (patch) has \(data.count) bytes of data, less than its layout")
        }
        var reader = LittleEndianReader(Array(data[0..<layoutSize]))
        let values = (0..<6).map { _ in reader.u64() }
        let flags = reader.u64()
        guard values.allSatisfy({ $0 <= UInt64(Int32.max) }) else {
            throw DeltaFormat.invalid("operation \(index) (patch) has absurd stream lengths")
        }
        let layout = Layout(
            controlLength: Int(values[0]), controlCompressed: Int(values[1]), diffLength: Int(values[2]),
            diffCompressed: Int(values[3]), literalLength: Int(values[4]), literalCompressed: Int(values[5]),
            flags: flags)
        guard layout.controlLength <= maximumControlLength else {
            throw FerryError(
                code: .limitExceeded,
                message:
                    "delta: operation \(index) (patch) has a \(layout.controlLength)-byte control stream (at most \(maximumControlLength))"
            )
        }
        let pairs = [
            (layout.controlLength, layout.controlCompressed), (layout.diffLength, layout.diffCompressed),
            (layout.literalLength, layout.literalCompressed),
        ]
        guard layout.controlLength > 0, layout.diffLength + layout.literalLength == targetLength,
            pairs.allSatisfy({ ($0.0 == 0) == ($0.1 == 0) }),
            layoutSize + layout.controlCompressed + layout.diffCompressed + layout.literalCompressed == data.count
        else {
            throw DeltaFormat.invalid(
                "operation \(index) (patch) has stream lengths that do not add up to its data and its \(targetLength)-byte target"
            )
        }
        return layout
    }

    /// Runs the control records.
    static func run(
        control: UnsafeRawBufferPointer, diff: UnsafeRawBufferPointer, literal: UnsafeRawBufferPointer,
        source: UnsafeRawBufferPointer, into target: UnsafeMutableRawBufferPointer, operation index: Int64
    ) throws(FerryError) {
        func bad(_ problem: String) -> FerryError {
            DeltaFormat.invalid("operation \(index) (patch): \(problem)")
        }
        /// Reads the varint at `position` and moves past it.
        func varint(_ position: inout Int) throws(FerryError) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard position < control.count else { throw bad("the control stream is cut short") }
                let byte = control[position]
                position += 1
                guard shift < 63 || (shift == 63 && byte <= 1) else { throw bad("a control varint is too long") }
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
        }
        // The count, then where each field's varints start (each varint ends at a byte below 0x80).
        var coverPosition = 0
        let count = try varint(&coverPosition)
        guard count <= UInt64(control.count) else { throw bad("the control stream claims \(count) records") }
        var literalPosition = coverPosition
        for _ in 0..<count { _ = try varint(&literalPosition) }
        var seekPosition = literalPosition
        for _ in 0..<count { _ = try varint(&seekPosition) }
        var end = seekPosition
        for _ in 0..<count { _ = try varint(&end) }
        guard end == control.count else { throw bad("the control stream has bytes after its records") }
        var sourcePosition: Int64 = 0
        var diffPosition = 0
        var literalBytes = 0
        var out = 0
        for _ in 0..<count {
            let cover = try varint(&coverPosition)
            let literalCount = try varint(&literalPosition)
            let zigzag = try varint(&seekPosition)
            let seek = Int64(bitPattern: zigzag >> 1) ^ -Int64(bitPattern: zigzag & 1)
            guard cover <= UInt64(diff.count - diffPosition), literalCount <= UInt64(literal.count - literalBytes)
            else { throw bad("a control record uses more bytes than its streams hold") }
            let coverLength = Int(cover)
            if coverLength > 0 {
                guard sourcePosition >= 0, sourcePosition <= Int64(source.count) - Int64(coverLength) else {
                    throw bad("a cover reads outside the operation's \(source.count) source bytes")
                }
                let from = Int(sourcePosition)
                for offset in 0..<coverLength {
                    target[out + offset] = source[from + offset] &+ diff[diffPosition + offset]
                }
                out += coverLength
                diffPosition += coverLength
                sourcePosition += Int64(coverLength)
            }
            let literalLength = Int(literalCount)
            if literalLength > 0 {
                UnsafeMutableRawBufferPointer(rebasing: target[out..<(out + literalLength)]).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: literal[literalBytes..<(literalBytes + literalLength)]))
                out += literalLength
                literalBytes += literalLength
            }
            let (moved, overflow) = sourcePosition.addingReportingOverflow(seek)
            guard !overflow else { throw bad("a control record seeks out of range") }
            sourcePosition = moved
        }
        guard diffPosition == diff.count, literalBytes == literal.count, out == target.count else {
            throw bad("the control records produce \(out) of \(target.count) target bytes")
        }
    }
}
