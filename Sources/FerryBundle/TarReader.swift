import FerrySystem

/// A regular-file member of a tar archive, as announced by its header.
public struct TarMember: Hashable, Sendable {
    /// The validated relative path (from the header's `prefix` and `name`, or a pax `path` record).
    public var name: String
    /// Content bytes (from the header, or a pax `size` record).
    public var size: Int64
    /// Permission bits.
    public var mode: UInt32
    /// Modification time, seconds since the epoch.
    public var mtime: Int64
    /// Byte offset of the content in the archive (for range requests and resuming).
    public var offset: Int64
    /// Byte offset of the member's first header (its pax header, if it has one).
    public var headerOffset: Int64
    /// What it is; anything but a regular file only where the reader allows it (app archives).
    public var kind: Kind = .file
    /// The link target of a symbolic or hard link, as stored (not checked here).
    public var linkName: String? = nil

    public enum Kind: Hashable, Sendable { case file, directory, symbolicLink, hardLink }

    public init(name: String, size: Int64, mode: UInt32, mtime: Int64, offset: Int64, headerOffset: Int64) {
        self.name = name
        self.size = size
        self.mode = mode
        self.mtime = mtime
        self.offset = offset
        self.headerOffset = headerOffset
    }
}

/// Reads a ustar archive (the bundle container) sequentially from a ``ByteSource``, strictly.
///
/// Only regular files are accepted, optionally preceded by a pax extended header (`'x'`) whose
/// `size` and `path` records apply to the member (`mtime` is applied, `atime`/`ctime` ignored:
/// GNU tar's pax format writes those three for every file). Names must be relative paths without
/// `.`/`..`/empty components, backslashes or control characters. Every malformed header, link,
/// directory, device, GNU or global extension is a `.bundleInvalid` error naming the member;
/// a stream that ends early is `.truncated`; a member above the size limit is `.limitExceeded`.
///
/// Memory stays bounded: content is handed out piecewise through ``readContent(into:)``, and
/// ``nextMember(maximumSize:)`` skips what the caller did not read. Each member's ``TarMember/offset``
/// is its content's absolute position in the archive.
public final class TarReader {
    /// Accept directories, symbolic links and hard links too (app archives, unpacked with their
    /// own checks by the app store); bundles hold regular files only.
    public var allowsDirectoriesAndLinks = false
    /// The archive.
    public let source: any ByteSource
    /// The size limit for members when ``nextMember(maximumSize:)`` is not given one.
    public var maximumMemberSize: Int64
    /// Bytes consumed from the source so far.
    public private(set) var position: Int64 = 0

    /// The member whose content is being read, if any.
    public private(set) var currentMember: TarMember?
    private var remaining: Int64 = 0
    private var pendingPadding = 0
    private var reachedEnd = false
    private var failure: FerryError?
    private var header = [UInt8](repeating: 0, count: TarFormat.blockSize)
    /// Where `header` was read from (for messages).
    private var headerOffset: Int64 = 0

    /// The most zero bytes accepted after the end-of-archive marker (tar pads to whole records).
    public static let maximumTrailingPadding: Int64 = 1 << 20

    /// - Parameters:
    ///   - source: the archive, positioned at its first header.
    ///   - maximumMemberSize: the default size limit for members. The default is no limit.
    public init(source: any ByteSource, maximumMemberSize: Int64 = .max) {
        self.source = source
        self.maximumMemberSize = maximumMemberSize
    }

    /// Reads the next member's header(s), first skipping whatever is left of the current member.
    ///
    /// - Parameter maximumSize: the largest accepted member size; nil uses ``maximumMemberSize``.
    /// - Returns: the member, or nil at the end-of-archive marker (a zero block followed by a second
    ///   zero block or the end of the stream). Later calls return nil again.
    /// - Throws: `.bundleInvalid`, `.limitExceeded`, `.truncated`, or the source's errors. After an
    ///   error, every later call throws it again.
    public func nextMember(maximumSize: Int64? = nil) throws(FerryError) -> TarMember? {
        try guarded { () throws(FerryError) in try readNextMember(maximumSize: maximumSize ?? maximumMemberSize) }
    }

    /// Reads up to `buffer.count` bytes of the current member's content; 0 at its end (or when
    /// there is no current member).
    /// - Throws: `.truncated` if the stream ends inside the content; the source's errors.
    public func readContent(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        try guarded { () throws(FerryError) in
            guard let member = currentMember, remaining > 0, buffer.count > 0 else { return 0 }
            let wanted = Int(min(Int64(buffer.count), remaining))
            let count = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<wanted]))
            if count == 0 {
                throw FerryError(
                    code: .truncated,
                    message: "\(source.sourceName) ends early: the content of member '\(member.name)' is cut after "
                        + "\(member.size - remaining) of \(member.size) bytes")
            }
            remaining -= Int64(count)
            position += Int64(count)
            return count
        }
    }

    /// Reads the rest of the current member's content into memory (small members such as the manifest).
    /// - Throws: `.limitExceeded` if more than `maximumCount` bytes remain, before reading any.
    public func readRemainingContent(maximumCount: Int) throws(FerryError) -> [UInt8] {
        guard let member = currentMember else { return [] }
        guard remaining <= Int64(maximumCount) else {
            throw FerryError(
                code: .limitExceeded,
                message:
                    "\(source.sourceName): member '\(member.name)' has \(remaining) bytes, more than the \(maximumCount) allowed"
            )
        }
        var bytes = [UInt8](repeating: 0, count: Int(remaining))
        var done = 0
        while done < bytes.count {
            let count = try bytes.withTypedUnsafeMutableBytes { (buffer) throws(FerryError) in
                try readContent(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            }
            done += count
        }
        return bytes
    }

    /// Skips the rest of the current member's content and its padding.
    public func skipContent() throws(FerryError) {
        try guarded { () throws(FerryError) in try skipRemainder() }
    }

    /// Skips `count` bytes of the current member's content (at most what remains of it) without
    /// reading them where the source can seek (a file, a range request).
    public func skipContent(_ count: Int64) throws(FerryError) {
        try guarded { () throws(FerryError) in
            let skipped = min(max(count, 0), remaining)
            try source.skip(skipped)
            remaining -= skipped
            position += skipped
        }
    }

    /// Checks that the archive ends properly and nothing but zero padding follows.
    ///
    /// Call after the last expected member: reads the end-of-archive marker if ``nextMember(maximumSize:)``
    /// has not yet returned nil, then the rest of the stream, which may hold up to
    /// ``maximumTrailingPadding`` zero bytes (tar pads archives to whole 10 KiB records).
    /// - Throws: `.bundleInvalid` if another member follows, a non-zero byte follows the end marker,
    ///   or the padding is too long; `.truncated`; the source's errors.
    public func finishAndCheckEnd() throws(FerryError) {
        try guarded { () throws(FerryError) in
            if !reachedEnd, let member = try readNextMember(maximumSize: .max) {
                throw FerryError(
                    code: .bundleInvalid,
                    message:
                        "\(source.sourceName): unexpected member '\(member.name)' at offset \(member.headerOffset) "
                        + "where the archive should end")
            }
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
            defer { chunk.deallocate() }
            var trailing: Int64 = 0
            while true {
                let count = try source.read(into: chunk)
                if count == 0 { return }
                if let index = chunk[..<count].firstIndex(where: { $0 != 0 }) {
                    throw FerryError(
                        code: .bundleInvalid,
                        message: "\(source.sourceName): trailing data after the archive end (a non-zero byte at offset "
                            + "\(position + Int64(index)))")
                }
                trailing += Int64(count)
                position += Int64(count)
                if trailing > Self.maximumTrailingPadding {
                    throw FerryError(
                        code: .bundleInvalid,
                        message: "\(source.sourceName): trailing data after the archive end (more than "
                            + "\(Self.maximumTrailingPadding) bytes of padding)")
                }
            }
        }
    }

    // MARK: - Internals

    /// Runs `body`, remembering its error so the reader refuses to go on from an unknown position.
    private func guarded<T>(_ body: () throws(FerryError) -> T) throws(FerryError) -> T {
        if let failure { throw failure }
        do {
            return try body()
        } catch {
            failure = error
            throw error
        }
    }

    private func skipRemainder() throws(FerryError) {
        guard let member = currentMember else { return }
        if remaining > 0 {
            // A skip does not notice the end of the stream; the padding read below does.
            try source.skip(remaining)
            position += remaining
            remaining = 0
        }
        if pendingPadding > 0 {
            var padding = [UInt8](repeating: 0, count: pendingPadding)
            try padding.withTypedUnsafeMutableBytes { (buffer) throws(FerryError) in
                try source.readExactly(into: buffer, what: "the padding after member '\(member.name)'")
            }
            position += Int64(pendingPadding)
            pendingPadding = 0
        }
        currentMember = nil
    }

    /// Fills `header` with the next block. The caller names what it expected there.
    private func readBlock(what: String) throws(FerryError) {
        try header.withTypedUnsafeMutableBytes { (buffer) throws(FerryError) in
            try source.readExactly(into: buffer, what: what)
        }
        position += Int64(TarFormat.blockSize)
    }

    private func readNextMember(maximumSize: Int64) throws(FerryError) -> TarMember? {
        if reachedEnd { return nil }
        try skipRemainder()
        var pax: PaxOverrides?
        var firstHeaderOffset = position
        while true {
            headerOffset = position
            try readBlock(what: "the header at offset \(headerOffset)")
            if header.allSatisfy({ $0 == 0 }) {
                if pax != nil {
                    throw invalid(
                        "the pax header at offset \(firstHeaderOffset) is followed by the end of the archive, not a member"
                    )
                }
                try readSecondEndBlock()
                reachedEnd = true
                return nil
            }
            let rawName = TarFormat.display(Self.cString(header[TarFormat.Field.name]))
            try checkHeader(rawName: rawName, at: headerOffset)
            let typeflag = header[TarFormat.Field.typeflag]
            let size = try octal(TarFormat.Field.size, "size", rawName)
            switch typeflag {
            case UInt8(ascii: "x"):
                if pax != nil {
                    throw invalid("two pax headers in a row at offsets \(firstHeaderOffset) and \(headerOffset)")
                }
                guard size <= TarFormat.maximumPaxHeaderSize else {
                    throw FerryError(
                        code: .limitExceeded,
                        message: "\(source.sourceName): the pax header at offset \(headerOffset) has \(size) bytes, "
                            + "more than the \(TarFormat.maximumPaxHeaderSize) allowed")
                }
                pax = try readPaxHeader(size: Int(size), at: headerOffset)
                firstHeaderOffset = headerOffset
            case UInt8(ascii: "0"), 0:
                return try makeMember(
                    size: size, rawName: rawName, pax: pax, memberOffset: pax == nil ? headerOffset : firstHeaderOffset,
                    maximumSize: maximumSize)
            // `where` binds to one pattern only: each needs its own.
            case UInt8(ascii: "5") where allowsDirectoriesAndLinks, UInt8(ascii: "2") where allowsDirectoriesAndLinks,
                UInt8(ascii: "1") where allowsDirectoriesAndLinks:
                guard size == 0 else {
                    throw invalid(
                        "member '\(rawName)' at offset \(headerOffset) is \(Self.describe(typeflag)) with content")
                }
                var member = try makeMember(
                    size: 0, rawName: rawName, pax: pax, memberOffset: pax == nil ? headerOffset : firstHeaderOffset,
                    maximumSize: maximumSize, isDirectory: typeflag == UInt8(ascii: "5"))
                if typeflag != UInt8(ascii: "5") {
                    var stored = pax?.linkPath.map { Array($0.utf8) } ?? Self.cString(header[TarFormat.Field.linkname])
                    // A hard link names an archive member: './' prefixes as for names.
                    if typeflag == UInt8(ascii: "1") { stored = Self.droppingDotSlash(stored) }
                    guard !stored.isEmpty, !stored.contains(0), let target = String(validating: stored, as: UTF8.self)
                    else {
                        throw invalid(
                            "member '\(member.name)' at offset \(headerOffset): its link target is empty or not UTF-8")
                    }
                    member.linkName = target
                }
                member.kind =
                    typeflag == UInt8(ascii: "5")
                    ? .directory : typeflag == UInt8(ascii: "2") ? .symbolicLink : .hardLink
                currentMember = member
                return member
            default:
                throw invalid(
                    "member '\(rawName)' at offset \(headerOffset) is \(Self.describe(typeflag)); bundles hold regular files only"
                )
            }
        }
    }

    /// Checksum, magic and the numeric fields every header has.
    private func checkHeader(rawName: String, at offset: Int64) throws(FerryError) {
        guard let stored = TarFormat.parseOctal(header[TarFormat.Field.checksum]) else {
            throw invalid("member '\(rawName)' at offset \(offset): the header's checksum field is not an octal number")
        }
        let computed = TarFormat.checksum(of: header)
        guard stored == computed else {
            throw invalid(
                "member '\(rawName)' at offset \(offset): header checksum mismatch (stored octal \(String(stored, radix: 8)), "
                    + "computed \(String(computed, radix: 8)))")
        }
        guard isPOSIXMagic || isGNUMagic else {
            throw invalid(
                "member '\(rawName)' at offset \(offset): not a ustar header (magic \(TarFormat.display(header[257..<265])))"
            )
        }
        _ = try octal(TarFormat.Field.mode, "mode", rawName)
        _ = try octal(TarFormat.Field.uid, "uid", rawName)
        _ = try octal(TarFormat.Field.gid, "gid", rawName)
        _ = try octal(TarFormat.Field.mtime, "mtime", rawName)
    }

    /// `"ustar\0"` and version `"00"` (POSIX).
    private var isPOSIXMagic: Bool {
        header[257..<265].elementsEqual(Array("ustar".utf8) + [0] + Array("00".utf8))
    }

    /// `"ustar  \0"` (GNU tar's old format; its bytes 345… are not a prefix).
    private var isGNUMagic: Bool {
        header[257..<265].elementsEqual(Array("ustar  ".utf8) + [0])
    }

    private func makeMember(
        size headerSize: Int64, rawName: String, pax: PaxOverrides?, memberOffset: Int64, maximumSize: Int64,
        isDirectory: Bool = false
    ) throws(FerryError) -> TarMember {
        var nameBytes = Self.cString(header[TarFormat.Field.name])
        if isPOSIXMagic {
            let prefix = Self.cString(header[TarFormat.Field.prefix])
            try checkNoHiddenBytes(TarFormat.Field.prefix, rawName: rawName, at: memberOffset)
            if !prefix.isEmpty { nameBytes = prefix + [UInt8(ascii: "/")] + nameBytes }
        }
        try checkNoHiddenBytes(TarFormat.Field.name, rawName: rawName, at: memberOffset)
        if let path = pax?.path { nameBytes = Array(path.utf8) }
        // A directory's name ends with '/'.
        while isDirectory, nameBytes.count > 1, nameBytes.last == UInt8(ascii: "/") { nameBytes.removeLast() }
        // Archives made with `tar -C dir .` name everything './…', and the folder itself '.'.
        if allowsDirectoriesAndLinks { nameBytes = Self.droppingDotSlash(nameBytes) }
        let isRoot = allowsDirectoriesAndLinks && isDirectory && nameBytes == [UInt8(ascii: ".")]
        if !isRoot, let problem = TarFormat.nameProblem(nameBytes) {
            throw invalid("member '\(TarFormat.display(nameBytes))' at offset \(memberOffset): its name \(problem)")
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        let size = pax?.size ?? headerSize
        guard size <= maximumSize else {
            throw FerryError(
                code: .limitExceeded,
                message:
                    "\(source.sourceName): member '\(name)' has \(size) bytes, more than the \(maximumSize) allowed")
        }
        guard size <= Int64.max - position - Int64(TarFormat.blockSize) else {
            throw FerryError(
                code: .limitExceeded, message: "\(source.sourceName): member '\(name)' has an impossible size \(size)")
        }
        let mode = try octal(TarFormat.Field.mode, "mode", rawName)
        let headerMtime = try octal(TarFormat.Field.mtime, "mtime", rawName)
        let member = TarMember(
            name: name, size: size, mode: UInt32(truncatingIfNeeded: mode & 0o7777), mtime: pax?.mtime ?? headerMtime,
            offset: position, headerOffset: memberOffset)
        currentMember = member
        remaining = size
        pendingPadding = TarFormat.paddingCount(size)
        return member
    }

    /// A name field whose first NUL is followed by anything but NULs hides bytes from C-string readers.
    private func checkNoHiddenBytes(_ field: Range<Int>, rawName: String, at offset: Int64) throws(FerryError) {
        let bytes = header[field]
        if let nul = bytes.firstIndex(of: 0), bytes[nul...].contains(where: { $0 != 0 }) {
            throw invalid("member '\(rawName)' at offset \(offset): its name contains a NUL byte")
        }
    }

    private struct PaxOverrides {
        var size: Int64?
        var path: String?
        var mtime: Int64?
        var linkPath: String?
    }

    private func readPaxHeader(size: Int, at offset: Int64) throws(FerryError) -> PaxOverrides {
        let content = try source.readExactly(size, what: "the pax header at offset \(offset)")
        position += Int64(size)
        let padding = TarFormat.paddingCount(Int64(size))
        if padding > 0 {
            _ = try source.readExactly(padding, what: "the padding of the pax header at offset \(offset)")
            position += Int64(padding)
        }
        let records: [PaxRecord]
        do { records = try PaxRecord.decode(content) } catch {
            throw invalid("the pax header at offset \(offset): \(error.message)")
        }
        var overrides = PaxOverrides()
        var seen = Set<String>()
        for record in records {
            guard seen.insert(record.key).inserted else {
                throw invalid(
                    "the pax header at offset \(offset) repeats the key '\(TarFormat.display(record.key.utf8))'")
            }
            switch record.key {
            case "size":
                guard let value = Self.decimal(record.value) else {
                    throw invalid(
                        "the pax header at offset \(offset) has a bad size '\(TarFormat.display(record.value.utf8))'")
                }
                overrides.size = value
            case "path":
                overrides.path = record.value
            case "linkpath" where allowsDirectoriesAndLinks:
                overrides.linkPath = record.value
            case "mtime", "atime", "ctime":
                // Decimal seconds with an optional fraction and sign (GNU tar writes all three).
                let parts = record.value.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
                let whole = parts[0].hasPrefix("-") ? parts[0].dropFirst() : parts[0]
                guard let seconds = Self.decimal(String(whole)),
                    parts.count == 1 || Self.decimal(String(parts[1])) != nil
                else {
                    throw invalid(
                        "the pax header at offset \(offset) has a bad \(record.key) '\(TarFormat.display(record.value.utf8))'"
                    )
                }
                if record.key == "mtime" { overrides.mtime = parts[0].hasPrefix("-") ? -seconds : seconds }
            default:
                throw invalid(
                    "the pax header at offset \(offset) has the unsupported key '\(TarFormat.display(record.key.utf8))' "
                        + "(only size, path and time stamps are accepted)")
            }
        }
        return overrides
    }

    /// After the first zero block: a second one, or the end of the stream.
    private func readSecondEndBlock() throws(FerryError) {
        var done = 0
        while done < header.count {
            let count = try header.withTypedUnsafeMutableBytes { (buffer) throws(FerryError) in
                try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            }
            if count == 0 { break }
            done += count
        }
        position += Int64(done)
        if header[..<done].contains(where: { $0 != 0 }) {
            throw invalid(
                "trailing data after the archive end (a non-zero block follows the zero block at offset \(position - Int64(done) - 512))"
            )
        }
        if done != 0 && done != header.count {
            throw FerryError(
                code: .truncated,
                message:
                    "\(source.sourceName) ends early: the end-of-archive marker is cut after \(512 + done) of 1024 bytes"
            )
        }
    }

    private func octal(_ field: Range<Int>, _ fieldName: String, _ rawName: String) throws(FerryError) -> Int64 {
        guard let value = TarFormat.parseOctal(header[field]) else {
            throw invalid(
                "member '\(rawName)' at offset \(headerOffset): the header field '\(fieldName)' is not an octal number")
        }
        return value
    }

    private func invalid(_ message: String) -> FerryError {
        FerryError(code: .bundleInvalid, message: "\(source.sourceName): \(message)")
    }

    /// The bytes of a field up to its first NUL.
    private static func cString(_ field: ArraySlice<UInt8>) -> [UInt8] {
        Array(field.prefix(while: { $0 != 0 }))
    }

    /// A non-negative decimal number of at most 18 digits.
    /// `./a/b` → `a/b` (repeatedly).
    static func droppingDotSlash(_ bytes: [UInt8]) -> [UInt8] {
        var result = bytes[...]
        while result.count > 2, result.starts(with: [UInt8(ascii: "."), UInt8(ascii: "/")]) {
            result = result.dropFirst(2)
        }
        return Array(result)
    }

    private static func decimal(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 18,
            bytes.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return nil }
        return bytes.reduce(0) { $0 * 10 + Int64($1 - UInt8(ascii: "0")) }
    }

    private static func describe(_ typeflag: UInt8) -> String {
        switch typeflag {
        case UInt8(ascii: "1"): "a hard link"
        case UInt8(ascii: "2"): "a symbolic link"
        case UInt8(ascii: "3"): "a character device"
        case UInt8(ascii: "4"): "a block device"
        case UInt8(ascii: "5"): "a directory"
        case UInt8(ascii: "6"): "a FIFO"
        case UInt8(ascii: "7"): "a contiguous file"
        case UInt8(ascii: "g"): "a global pax header"
        case UInt8(ascii: "L"): "a GNU long name"
        case UInt8(ascii: "K"): "a GNU long link name"
        case UInt8(ascii: "S"): "a GNU sparse file"
        case UInt8(ascii: "D"): "a GNU directory dump"
        case UInt8(ascii: "M"): "a GNU multi-volume continuation"
        case UInt8(ascii: "V"): "a GNU volume label"
        case 0x21...0x7e: "of unknown type '\(Character(Unicode.Scalar(typeflag)))'"
        default: "of unknown type 0x\(String(typeflag, radix: 16))"
        }
    }
}
