import FerrySystem

/// Writes a POSIX ustar archive (the bundle container) sequentially to a ``ByteSink``.
///
/// The output is deterministic: owner and group are 0/`root`, the modification time is the one
/// given (default 0), every member is a regular file (typeflag `'0'`), and the archive ends with
/// two zero blocks and no further record padding. A name longer than 100 bytes is split at a `/`
/// into the `prefix` and `name` fields (at most 255 bytes in all). A member larger than the
/// ustar size field can hold (8 GiB − 1) is preceded by a pax extended header (typeflag `'x'`)
/// whose only record is `size`; no other member gets one, so ordinary bundles are plain ustar.
///
/// Use ``beginMember(name:size:mode:mtime:)``, then ``writeContent(_:)`` until exactly `size`
/// bytes are written, then ``endMember()``; or ``addMember(name:bytes:mode:mtime:)`` for small
/// members. ``finish()`` writes the end marker. The sink is not closed: that is the caller's.
public final class TarWriter {
    private let sink: any ByteSink
    private var current: (name: String, size: Int64, written: Int64)?
    private var finished = false

    /// Bytes written to the sink so far (the offset where the next block goes).
    public private(set) var byteCount: Int64 = 0

    public init(sink: any ByteSink) {
        self.sink = sink
    }

    /// Writes the header(s) of a regular-file member and returns the offset of its content.
    ///
    /// - Parameters:
    ///   - name: a relative path without `.`/`..` components, empty components, backslashes or
    ///     control characters; at most 100 bytes, or at most 255 bytes with a `/` where it can be
    ///     split into the 155-byte `prefix` and 100-byte `name` fields.
    ///   - size: the exact number of content bytes that will follow.
    ///   - mode: permission bits (at most `0o7777`). The default is `0o644`.
    ///   - mtime: seconds since the epoch, 0 through 8 589 934 591. The default is 0.
    /// - Returns: the byte offset of the member's content in the archive.
    /// - Throws: `.bundleInvalid` when the name or modification time cannot be stored.
    @discardableResult
    public func beginMember(name: String, size: Int64, mode: UInt32 = 0o644, mtime: Int64 = 0) throws(FerryError)
        -> Int64
    {
        precondition(!finished, "Ferry bug: adding a member to a finished archive")
        precondition(current == nil, "Ferry bug: beginMember(\(name)) before endMember() of the previous member")
        precondition(size >= 0, "Ferry bug: negative size for member '\(name)'")
        precondition(
            mode & ~0o7777 == 0, "Ferry bug: mode \(String(mode, radix: 8)) of '\(name)' is not permission bits")
        let nameBytes = Array(name.utf8)
        if let problem = TarFormat.nameProblem(nameBytes) {
            throw FerryError(
                code: .bundleInvalid,
                message: "cannot add member '\(TarFormat.display(nameBytes))': its name \(problem)")
        }
        guard let fields = TarFormat.splitName(nameBytes) else {
            throw FerryError(
                code: .bundleInvalid,
                message: "cannot add member '\(name)': its \(nameBytes.count)-byte name has no '/' that splits it into "
                    + "a prefix of at most 155 and a name of at most 100 bytes")
        }
        guard (0...TarFormat.maximumOctalValue).contains(mtime) else {
            throw FerryError(
                code: .bundleInvalid, message: "cannot add member '\(name)': modification time \(mtime) is out of range"
            )
        }
        if size > TarFormat.maximumOctalValue {
            let records = PaxRecord.encode([PaxRecord(key: "size", value: String(size))])
            let paxHeader = TarFormat.makeHeader(
                nameField: TarFormat.paxHeaderName(for: nameBytes), prefixField: [], size: Int64(records.count),
                mode: 0o644, mtime: mtime, typeflag: UInt8(ascii: "x"))
            try emit(paxHeader)
            try emit(records)
            try emitPadding(after: Int64(records.count))
        }
        let header = TarFormat.makeHeader(
            nameField: fields.name, prefixField: fields.prefix, size: size > TarFormat.maximumOctalValue ? 0 : size,
            mode: mode, mtime: mtime, typeflag: UInt8(ascii: "0"))
        try emit(header)
        current = (name, size, 0)
        return byteCount
    }

    /// Writes the next piece of the current member's content.
    /// - Throws: `.bundleInvalid` when the content would exceed the size given to `beginMember`;
    ///   errors of the sink.
    public func writeContent(_ bytes: UnsafeRawBufferPointer) throws(FerryError) {
        guard var member = current else { preconditionFailure("Ferry bug: writeContent() outside a member") }
        guard Int64(bytes.count) <= member.size - member.written else {
            throw FerryError(
                code: .bundleInvalid,
                message: "member '\(member.name)': \(member.written + Int64(bytes.count)) bytes of content, "
                    + "but its header declares \(member.size)")
        }
        try sink.write(bytes)
        byteCount += Int64(bytes.count)
        member.written += Int64(bytes.count)
        current = member
    }

    /// Writes the next piece of the current member's content.
    public func writeContent(_ bytes: [UInt8]) throws(FerryError) {
        try bytes.withTypedUnsafeBytes { (buffer) throws(FerryError) in try writeContent(buffer) }
    }

    /// Ends the current member, padding its content to a whole block.
    /// - Throws: `.bundleInvalid` when less content was written than declared; errors of the sink.
    public func endMember() throws(FerryError) {
        guard let member = current else { preconditionFailure("Ferry bug: endMember() outside a member") }
        guard member.written == member.size else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "member '\(member.name)': only \(member.written) bytes of content, but its header declares \(member.size)"
            )
        }
        current = nil
        try emitPadding(after: member.size)
    }

    /// Adds a whole member from memory and returns the offset of its content.
    @discardableResult
    public func addMember(name: String, bytes: [UInt8], mode: UInt32 = 0o644, mtime: Int64 = 0) throws(FerryError)
        -> Int64
    {
        let offset = try beginMember(name: name, size: Int64(bytes.count), mode: mode, mtime: mtime)
        try writeContent(bytes)
        try endMember()
        return offset
    }

    /// Writes the end-of-archive marker (two zero blocks). Nothing may be added afterwards.
    public func finish() throws(FerryError) {
        precondition(current == nil, "Ferry bug: finish() inside member '\(current?.name ?? "")'")
        precondition(!finished, "Ferry bug: finish() called twice")
        finished = true
        try emit([UInt8](repeating: 0, count: 2 * TarFormat.blockSize))
    }

    private func emit(_ bytes: [UInt8]) throws(FerryError) {
        try sink.write(bytes)
        byteCount += Int64(bytes.count)
    }

    private func emitPadding(after size: Int64) throws(FerryError) {
        let count = TarFormat.paddingCount(size)
        if count > 0 { try emit([UInt8](repeating: 0, count: count)) }
    }
}

/// One `key=value` record of a pax extended header (POSIX `pax`, "pax Extended Header").
///
/// A record is `"<length> <key>=<value>\n"`, where `<length>` is the decimal byte count of the
/// whole record, its own digits included.
public struct PaxRecord: Hashable, Sendable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }

    /// The encoded record, with its self-inclusive length.
    public var encoded: [UInt8] {
        let body = Array(" \(key)=\(value)\n".utf8)
        // The length counts its own digits: grow the digit count until it is stable.
        var length = body.count + String(body.count).utf8.count
        while String(length).utf8.count + body.count != length {
            length = String(length).utf8.count + body.count
        }
        return Array(String(length).utf8) + body
    }

    /// Encodes records one after the other.
    public static func encode(_ records: [PaxRecord]) -> [UInt8] {
        records.flatMap(\.encoded)
    }

    /// Decodes the content of a pax extended header: well-formed records filling it exactly.
    ///
    /// Keys must be non-empty and both keys and values valid UTF-8. The records are returned in
    /// order (repeated keys are kept; the caller decides).
    /// - Throws: `.bundleInvalid` naming the first malformed record.
    public static func decode(_ bytes: [UInt8]) throws(FerryError) -> [PaxRecord] {
        var records: [PaxRecord] = []
        var start = 0
        while start < bytes.count {
            func malformed(_ problem: String) -> FerryError {
                FerryError(code: .bundleInvalid, message: "pax record \(records.count + 1) at byte \(start) \(problem)")
            }
            var index = start
            var length = 0
            while index < bytes.count, index - start < 10,
                (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index])
            {
                length = length * 10 + Int(bytes[index] - UInt8(ascii: "0"))
                index += 1
            }
            let digits = index - start
            guard digits > 0, index < bytes.count, bytes[index] == UInt8(ascii: " ") else {
                throw malformed("does not start with a decimal length and a space")
            }
            guard length >= digits + 4 else { throw malformed("has an impossible length \(length)") }
            guard length <= bytes.count - start else {
                throw malformed("declares \(length) bytes, but only \(bytes.count - start) remain")
            }
            let end = start + length
            guard bytes[end - 1] == UInt8(ascii: "\n") else {
                throw malformed("does not end with a newline at its length")
            }
            let body = bytes[(index + 1)..<(end - 1)]
            guard let equals = body.firstIndex(of: UInt8(ascii: "=")), equals > body.startIndex else {
                throw malformed("has no 'key=value'")
            }
            guard let key = String(validating: body[..<equals], as: UTF8.self),
                let value = String(validating: body[(equals + 1)...], as: UTF8.self)
            else { throw malformed("is not valid UTF-8") }
            records.append(PaxRecord(key: key, value: value))
            start = end
        }
        return records
    }
}

/// Layout and rules of the ustar header shared by the reader and the writer (POSIX `pax`,
/// "ustar Interchange Format").
enum TarFormat {
    static let blockSize = 512
    /// The largest value of an 11-digit octal field (size, mtime): 8 GiB − 1.
    static let maximumOctalValue: Int64 = 0o77777777777
    /// The longest member name accepted, from the header fields or a pax `path` record.
    static let maximumNameLength = 255
    /// The largest pax extended header accepted.
    static let maximumPaxHeaderSize: Int64 = 64 * 1024

    /// Byte ranges of the header fields.
    enum Field {
        static let name = 0..<100
        static let mode = 100..<108
        static let uid = 108..<116
        static let gid = 116..<124
        static let size = 124..<136
        static let mtime = 136..<148
        static let checksum = 148..<156
        static let typeflag = 156
        static let linkname = 157..<257
        static let magic = 257..<263
        static let version = 263..<265
        static let uname = 265..<297
        static let gname = 297..<329
        static let devmajor = 329..<337
        static let devminor = 337..<345
        static let prefix = 345..<500
    }

    /// Bytes of zero padding after `size` bytes of content.
    static func paddingCount(_ size: Int64) -> Int {
        Int((Int64(blockSize) - size % Int64(blockSize)) % Int64(blockSize))
    }

    /// The header checksum: the unsigned sum of all bytes, the checksum field counted as spaces.
    static func checksum(of header: [UInt8]) -> Int {
        var sum = 0
        for index in 0..<blockSize {
            sum += Field.checksum.contains(index) ? Int(UInt8(ascii: " ")) : Int(header[index])
        }
        return sum
    }

    /// An octal number field: optional leading spaces, at least one octal digit, then only NUL
    /// or space to the end of the field. Nil otherwise (including GNU base-256 numbers).
    static func parseOctal(_ field: ArraySlice<UInt8>) -> Int64? {
        var index = field.startIndex
        while index < field.endIndex, field[index] == UInt8(ascii: " ") { index += 1 }
        var value: Int64 = 0
        var digits = 0
        while index < field.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(field[index]) {
            value = value * 8 + Int64(field[index] - UInt8(ascii: "0"))
            digits += 1
            index += 1
        }
        guard digits > 0 else { return nil }
        while index < field.endIndex {
            guard field[index] == 0 || field[index] == UInt8(ascii: " ") else { return nil }
            index += 1
        }
        return value
    }

    /// `value` as zero-filled octal digits filling `width - 1` bytes, then a NUL.
    static func octalField(_ value: Int64, width: Int) -> [UInt8] {
        let digits = Array(String(value, radix: 8).utf8)
        precondition(digits.count < width, "Ferry bug: \(value) does not fit an octal field of \(width) bytes")
        return [UInt8](repeating: UInt8(ascii: "0"), count: width - 1 - digits.count) + digits + [0]
    }

    static func makeHeader(
        nameField: [UInt8], prefixField: [UInt8], size: Int64, mode: UInt32, mtime: Int64, typeflag: UInt8
    ) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: blockSize)
        func put(_ bytes: [UInt8], _ field: Range<Int>) {
            precondition(bytes.count <= field.count, "Ferry bug: header field overflow")
            header.replaceSubrange(field.lowerBound..<(field.lowerBound + bytes.count), with: bytes)
        }
        put(nameField, Field.name)
        put(octalField(Int64(mode), width: Field.mode.count), Field.mode)
        put(octalField(0, width: Field.uid.count), Field.uid)
        put(octalField(0, width: Field.gid.count), Field.gid)
        put(octalField(size, width: Field.size.count), Field.size)
        put(octalField(mtime, width: Field.mtime.count), Field.mtime)
        header[Field.typeflag] = typeflag
        put(Array("ustar".utf8) + [0], Field.magic)
        put(Array("00".utf8), Field.version)
        put(Array("root".utf8), Field.uname)
        put(Array("root".utf8), Field.gname)
        put(octalField(0, width: Field.devmajor.count), Field.devmajor)
        put(octalField(0, width: Field.devminor.count), Field.devminor)
        put(prefixField, Field.prefix)
        // Six digits, NUL, space: the customary form of the checksum field.
        put(octalField(Int64(checksum(of: header)), width: 7) + [UInt8(ascii: " ")], Field.checksum)
        return header
    }

    /// Splits a name into the `prefix` and `name` fields, or nil if no `/` allows it.
    static func splitName(_ bytes: [UInt8]) -> (prefix: [UInt8], name: [UInt8])? {
        if bytes.count <= Field.name.count { return ([], bytes) }
        for index in bytes.indices
        where bytes[index] == UInt8(ascii: "/") && index <= Field.prefix.count
            && bytes.count - index - 1 <= Field.name.count
        {
            return (Array(bytes[..<index]), Array(bytes[(index + 1)...]))
        }
        return nil
    }

    /// The name of the pax header preceding `member`: `PaxHeaders/<last component>`, at most 100 bytes.
    static func paxHeaderName(for member: [UInt8]) -> [UInt8] {
        let last = member.split(separator: UInt8(ascii: "/")).last.map(Array.init) ?? []
        var result = Array("PaxHeaders/".utf8)
        for scalar in String(decoding: last, as: UTF8.self).unicodeScalars {
            let encoded = Array(String(scalar).utf8)
            guard result.count + encoded.count <= Field.name.count else { break }
            result += encoded
        }
        return result
    }

    /// Why `bytes` is not an acceptable member name, or nil if it is.
    ///
    /// Accepted names are relative paths of at most 255 bytes of UTF-8 without empty, `.` or `..`
    /// components, backslashes, NUL or other control characters: nothing that could leave the
    /// directory a bundle is unpacked into, or be read differently by another tool.
    static func nameProblem(_ bytes: [UInt8]) -> String? {
        if bytes.isEmpty { return "is empty" }
        if bytes.count > maximumNameLength { return "is longer than \(maximumNameLength) bytes" }
        if bytes.contains(0) { return "contains a NUL byte" }
        if bytes.contains(UInt8(ascii: "\\")) { return "contains a backslash" }
        if bytes.contains(where: { $0 < 0x20 || $0 == 0x7f }) { return "contains a control character" }
        if bytes.first == UInt8(ascii: "/") { return "is an absolute path" }
        for component in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if component.isEmpty { return "has an empty path component" }
            if component.elementsEqual([UInt8(ascii: ".")]) { return "has a '.' path component" }
            if component.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) { return "has a '..' path component" }
        }
        if String(validating: bytes, as: UTF8.self) == nil { return "is not valid UTF-8" }
        return nil
    }

    /// A name for messages: at most 100 characters, control characters shown as `?`.
    static func display(_ bytes: some Collection<UInt8>) -> String {
        let text = String(decoding: bytes.prefix(100), as: UTF8.self)
        let cleaned = String(
            String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : $0 }))
        return bytes.count > 100 ? cleaned + "…" : cleaned
    }
}
