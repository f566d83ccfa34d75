import FerryBundle
import FerrySystem
import FerryTestSupport
import Testing

/// The bundle container: TarWriter and TarReader against each other, against GNU tar in both
/// directions, and against hand-built headers for every rejection.
@Suite struct TarTests {
    static let sizes = [0, 1, 511, 512, 513, (1 << 20) + 7]

    // MARK: - Helpers

    /// An archive written by `TarWriter` into memory.
    func archive(_ members: [(String, [UInt8])]) throws -> [UInt8] {
        let sink = MemoryByteSink()
        let writer = TarWriter(sink: sink)
        for (name, bytes) in members { try writer.addMember(name: name, bytes: bytes) }
        try writer.finish()
        #expect(writer.byteCount == Int64(sink.bytes.count))
        return sink.bytes
    }

    /// Every member with its content, read in odd-sized pieces, then the end checked.
    func readAll(_ reader: TarReader, chunk: Int = 4099) throws -> [(member: TarMember, content: [UInt8])] {
        var result: [(member: TarMember, content: [UInt8])] = []
        var buffer = [UInt8](repeating: 0, count: chunk)
        while let member = try reader.nextMember() {
            var content: [UInt8] = []
            while true {
                let count = try buffer.withUnsafeMutableBytes { try reader.readContent(into: $0) }
                if count == 0 { break }
                content += buffer[..<count]
            }
            result.append((member, content))
        }
        try reader.finishAndCheckEnd()
        return result
    }

    func readAll(_ bytes: [UInt8]) throws -> [(member: TarMember, content: [UInt8])] {
        try readAll(TarReader(source: MemoryByteSource(bytes)))
    }

    /// Walks the archive by headers only (content skipped by `nextMember`), then checks the end.
    func skimAll(_ bytes: [UInt8]) throws -> [TarMember] {
        let reader = TarReader(source: MemoryByteSource(bytes))
        var members: [TarMember] = []
        while let member = try reader.nextMember() { members.append(member) }
        try reader.finishAndCheckEnd()
        return members
    }

    /// A ustar header built by hand from the POSIX layout (independently of `TarWriter`), with a
    /// correct checksum unless `edit` spoils it afterwards via `afterChecksum`.
    func header(
        name: [UInt8], size: Int64 = 0, typeflag: UInt8 = UInt8(ascii: "0"), prefix: [UInt8] = [],
        edit: (inout [UInt8]) -> Void = { _ in }, afterChecksum: (inout [UInt8]) -> Void = { _ in }
    ) -> [UInt8] {
        func octal(_ value: Int64, _ width: Int) -> [UInt8] {
            let digits = Array(String(value, radix: 8).utf8)
            return [UInt8](repeating: UInt8(ascii: "0"), count: width - 1 - digits.count) + digits + [0]
        }
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], at offset: Int) {
            block.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        }
        put(name, at: 0)
        put(octal(0o644, 8), at: 100)
        put(octal(0, 8), at: 108)
        put(octal(0, 8), at: 116)
        put(octal(size, 12), at: 124)
        put(octal(0, 12), at: 136)
        block[156] = typeflag
        put(Array("ustar\0".utf8) + Array("00".utf8), at: 257)
        put(Array("root".utf8), at: 265)
        put(Array("root".utf8), at: 297)
        put(prefix, at: 345)
        edit(&block)
        put([UInt8](repeating: UInt8(ascii: " "), count: 8), at: 148)
        let sum = block.reduce(0) { $0 + Int($1) }
        put(octal(Int64(sum), 7) + [UInt8(ascii: " ")], at: 148)
        afterChecksum(&block)
        return block
    }

    func header(name: String, size: Int64 = 0, typeflag: UInt8 = UInt8(ascii: "0")) -> [UInt8] {
        header(name: Array(name.utf8), size: size, typeflag: typeflag)
    }

    /// `bytes` padded with zeros to whole 512-byte blocks.
    func padded(_ bytes: [UInt8]) -> [UInt8] {
        bytes + [UInt8](repeating: 0, count: (512 - bytes.count % 512) % 512)
    }

    let endMarker = [UInt8](repeating: 0, count: 1024)

    /// A one-member archive with a hand-built header and `size` seeded content bytes.
    func handBuilt(_ block: [UInt8], size: Int = 10) -> [UInt8] {
        block + padded(seededBytes(count: size, seed: 5)) + endMarker
    }

    // MARK: - Round trips

    @Test(arguments: sizes)
    func roundTrip(size: Int) throws {
        let manifest = Array(#"{"formatVersion":1}"#.utf8)
        let payload = seededBytes(count: size, seed: UInt64(size) + 1)
        let bytes = try archive([("manifest.json", manifest), ("payloads/rootfs.img", payload)])
        let expectedLength = 512 + 512 + 512 + (size + 511) / 512 * 512 + 1024
        #expect(bytes.count == expectedLength)

        let members = try readAll(bytes)
        #expect(members.map(\.member.name) == ["manifest.json", "payloads/rootfs.img"])
        #expect(members.map(\.member.size) == [Int64(manifest.count), Int64(size)])
        #expect(members[0].content == manifest)
        #expect(members[1].content == payload)
        #expect(members.allSatisfy { $0.member.mode == 0o644 && $0.member.mtime == 0 })
        #expect(members.map(\.member.offset) == [512, 1536])
        #expect(members.map(\.member.headerOffset) == [0, 1024])
        for (member, content) in members {
            #expect(Array(bytes[Int(member.offset)..<(Int(member.offset) + content.count)]) == content)
        }
    }

    @Test func contentCanBeWrittenInPiecesAndReadOneByteAtATime() throws {
        let payload = seededBytes(count: 100_000, seed: 9)
        let sink = MemoryByteSink()
        let writer = TarWriter(sink: sink)
        let offset = try writer.beginMember(name: "big", size: Int64(payload.count), mode: 0o600, mtime: 1_700_000_000)
        var start = 0
        for piece in [0, 1, 4095, 7, 60_000] {
            try writer.writeContent(Array(payload[start..<(start + piece)]))
            start += piece
        }
        try writer.writeContent(Array(payload[start...]))
        try writer.endMember()
        try writer.finish()
        #expect(offset == 512)

        let members = try readAll(TarReader(source: TrickleByteSource(sink.bytes)), chunk: 3)
        #expect(members.count == 1)
        #expect(members[0].content == payload)
        #expect(members[0].member.mode == 0o600)
        #expect(members[0].member.mtime == 1_700_000_000)
    }

    @Test func theWriterChecksTheDeclaredSize() throws {
        let writer = TarWriter(sink: MemoryByteSink())
        try writer.beginMember(name: "a", size: 10)
        try writer.writeContent([UInt8](repeating: 1, count: 6))
        expectFerryError(.bundleInvalid) { try writer.writeContent([UInt8](repeating: 1, count: 5)) }

        let short = TarWriter(sink: MemoryByteSink())
        try short.beginMember(name: "a", size: 10)
        try short.writeContent([UInt8](repeating: 1, count: 9))
        expectFerryError(.bundleInvalid) { try short.endMember() }
    }

    @Test func theSinksWriteFilesAndMemory() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/bundle.tar"
            let sink = try FileByteSink(path: path)
            let writer = TarWriter(sink: sink)
            try writer.addMember(name: "x", bytes: [1, 2, 3])
            try writer.finish()
            try sink.finish()
            try sink.finish()  // twice is fine
            #expect(sink.byteCount == 2048)
            let bytes = try readFile(path)
            #expect(bytes == (try archive([("x", [1, 2, 3])])))
            let members = try readAll(TarReader(source: try FileByteSource(path: path)))
            #expect(members.map(\.content) == [[1, 2, 3]])
            expectFerryError(.deviceNotFound) { try FileByteSink(path: "\(dir)/missing/bundle.tar") }
        }
    }

    // MARK: - GNU tar interoperability

    @Test func gnuTarListsAndExtractsWhatTarWriterWrites() async throws {
        try await withTemporaryDirectory { dir in
            let longName = String(repeating: "d", count: 90) + "/" + String(repeating: "e", count: 60) + "/file.bin"
            var members: [(String, [UInt8])] = Self.sizes.enumerated().map { index, size in
                ("sizes/member-\(size).bin", seededBytes(count: size, seed: UInt64(index) + 100))
            }
            members.append((longName, seededBytes(count: 700, seed: 77)))
            let path = "\(dir)/bundle.tar"
            let sink = try FileByteSink(path: path)
            let writer = TarWriter(sink: sink)
            for (name, bytes) in members { try writer.addMember(name: name, bytes: bytes) }
            try writer.finish()
            try sink.finish()

            let listing = try Shell.check(["tar", "-tvf", path])
            let rows = listing.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
            #expect(rows.count == members.count)
            for (row, (name, bytes)) in zip(rows, members) {
                #expect(row.first == "-rw-r--r--")
                #expect(row[1] == "root/root")
                #expect(row[2] == "\(bytes.count)")
                #expect(row.last.map(String.init) == name)
            }

            try Shell.check(["mkdir", "\(dir)/out"])
            let output = try Shell.check(["tar", "-xf", path, "-C", "\(dir)/out"])
            #expect(output.isEmpty, "tar warned: \(output)")
            for (name, bytes) in members {
                #expect(try readFile("\(dir)/out/\(name)") == bytes, "\(name)")
            }
        }
    }

    @Test(arguments: [("ustar", true), ("pax", true), ("gnu", false)])
    func tarReaderReadsGNUTarArchives(format: String, withLongName: Bool) async throws {
        try await withTemporaryDirectory { dir in
            var names = Self.sizes.map { "files/size-\($0).bin" }
            if withLongName {
                names.append(
                    String(repeating: "p", count: 80) + "/" + String(repeating: "q", count: 50) + "/long-name.bin")
            }
            try Shell.check([
                "mkdir", "-p", "\(dir)/src/files",
                "\(dir)/src/" + String(repeating: "p", count: 80) + "/" + String(repeating: "q", count: 50),
            ])
            var contents: [String: [UInt8]] = [:]
            for (index, name) in names.enumerated() {
                let size = index < Self.sizes.count ? Self.sizes[index] : 1234
                contents[name] = seededBytes(count: size, seed: UInt64(index) + 7)
                try makeFile("\(dir)/src/\(name)", bytes: contents[name]!)
            }
            let path = "\(dir)/gnu.tar"
            try Shell.check(["tar", "--format=\(format)", "-cf", path, "-C", "\(dir)/src"] + names)

            let members = try readAll(TarReader(source: try FileByteSource(path: path)))
            #expect(members.map(\.member.name) == names)
            let file = try readFile(path)
            for (member, content) in members {
                #expect(content == contents[member.name])
                #expect(member.size == Int64(content.count))
                #expect(member.mode == 0o644)
                #expect(member.mtime > 1_000_000_000)
                #expect(Array(file[Int(member.offset)..<(Int(member.offset + member.size))]) == content)
            }
        }
    }

    // MARK: - Names

    @Test func longNamesAreSplitIntoPrefixAndName() throws {
        let prefix = String(repeating: "a", count: 100) + "/" + String(repeating: "b", count: 54)  // 155 bytes
        let last = String(repeating: "c", count: 100)
        let longest = prefix + "/" + last  // 256 bytes: one too many
        expectFerryError(.bundleInvalid) { try archive([(longest, [1])]) }

        let name = String(repeating: "a", count: 100) + "/" + String(repeating: "b", count: 53) + "/" + last  // 255 bytes
        let bytes = try archive([(name, [1, 2])])
        #expect(Array(bytes[0..<100]) == Array(last.utf8))
        #expect(
            Array(bytes[345..<499])
                == Array((String(repeating: "a", count: 100) + "/" + String(repeating: "b", count: 53)).utf8))
        #expect(try readAll(bytes).map(\.member.name) == [name])

        let exactly100 = String(repeating: "n", count: 100)
        let plain = try archive([(exactly100, [])])
        #expect(Array(plain[0..<100]) == Array(exactly100.utf8))
        #expect(plain[345] == 0)
        #expect(try readAll(plain).map(\.member.name) == [exactly100])
    }

    @Test(arguments: [
        String(repeating: "x", count: 101),  // no '/' to split at
        "dir/" + String(repeating: "x", count: 101),  // last component too long
        String(repeating: "x", count: 156) + "/y",  // prefix too long
    ])
    func namesThatDoNotFitAreRefusedByTheWriter(name: String) {
        expectFerryError(.bundleInvalid) { try archive([(name, [])]) }
    }

    static let oddNames = [
        "../x", "/etc/passwd", "a/../../b", "./x", "a/./b", "x/..", "a\\b", "a//b", "dir/", "", "a\nb",
    ]

    @Test(arguments: oddNames)
    func oddNamesAreRefusedByTheWriter(name: String) {
        expectFerryError(.bundleInvalid) { try archive([(name, [1])]) }
    }

    @Test(arguments: oddNames)
    func oddNamesAreRejectedByTheReader(name: String) {
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(header(name: name, size: 10))) }
    }

    @Test func oddNamesHiddenInThePrefixOrBehindANULAreRejected() {
        let dotdot = header(name: Array("x".utf8), size: 10, prefix: Array("../..".utf8))
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(dotdot)) }
        let absolute = header(name: Array("passwd".utf8), size: 10, prefix: Array("/etc".utf8))
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(absolute)) }
        let nul = header(name: Array("a\0b".utf8), size: 10)
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(nul)) }
        let invalidUTF8 = header(name: [0x61, 0xff, 0x62], size: 10)
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(invalidUTF8)) }
        // The same shapes with harmless names are fine.
        #expect(
            (try? skimAll(handBuilt(header(name: Array("x".utf8), size: 10, prefix: Array("a/b".utf8)))))?.map(\.name)
                == ["a/b/x"])
    }

    // MARK: - Types, checksums, fields

    @Test(arguments: ["1", "2", "3", "4", "5", "6", "7", "L", "K", "g", "S", "V", "A"])
    func nonRegularMembersAreRejected(typeflag: String) {
        let block = header(
            name: "link", size: typeflag == "5" ? 0 : 10, typeflag: UInt8(ascii: Unicode.Scalar(typeflag)!))
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(block)) }
    }

    @Test func typeflagNULIsARegularFile() throws {
        let members = try readAll(handBuilt(header(name: "old", size: 10, typeflag: 0)))
        #expect(members.map(\.member.name) == ["old"])
        #expect(members[0].content == seededBytes(count: 10, seed: 5))
    }

    @Test func aBadChecksumIsRejected() {
        let flipped = header(name: Array("a".utf8), size: 10, afterChecksum: { $0[0] = UInt8(ascii: "b") })
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(flipped)) }
        let garbage = header(name: Array("a".utf8), size: 10, afterChecksum: { $0[148] = UInt8(ascii: "9") })
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(garbage)) }
        let blank = header(
            name: Array("a".utf8), size: 10,
            afterChecksum: { $0.replaceSubrange(148..<156, with: [UInt8](repeating: 0, count: 8)) })
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(blank)) }
    }

    static let badOctalFields: [(offset: Int, field: [UInt8])] = [
        (124, Array("0000000001x\0".utf8)),  // size: not octal
        (124, [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  // size: GNU base-256
        (124, [UInt8](repeating: 0, count: 12)),  // size: empty
        (100, Array("0000648\0".utf8)),  // mode: 8 is not octal
        (108, Array("-000001\0".utf8)),  // uid
        (136, Array("1700000000x\0".utf8)),  // mtime
    ]

    @Test(arguments: badOctalFields)
    func badOctalFieldsAreRejected(offset: Int, field: [UInt8]) {
        let block = header(
            name: Array("a".utf8), size: 10, edit: { $0.replaceSubrange(offset..<(offset + field.count), with: field) })
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(block)) }
    }

    @Test func octalFieldsMayUseSpacesAndFullWidth() throws {
        let block = header(
            name: Array("a".utf8), size: 10,
            edit: {
                $0.replaceSubrange(124..<136, with: Array("         12 ".utf8))  // 10, space-filled
                $0.replaceSubrange(100..<108, with: Array("00000644".utf8))  // no terminator
            })
        #expect(try skimAll(handBuilt(block)).map(\.size) == [10])
    }

    @Test(arguments: [
        Array("ustar\0".utf8) + Array("01".utf8),
        Array("ustaR\0".utf8) + Array("00".utf8),
        [UInt8](repeating: 0, count: 8),  // a pre-POSIX (v7) header
        Array("ustar ".utf8) + [0, 0],
    ])
    func otherMagicIsRejected(magic: [UInt8]) {
        let block = header(name: Array("a".utf8), size: 10, edit: { $0.replaceSubrange(257..<265, with: magic) })
        expectFerryError(.bundleInvalid) { try skimAll(handBuilt(block)) }
    }

    @Test func gnuMagicIsAcceptedWithoutAPrefix() throws {
        let block = header(
            name: Array("gnu.bin".utf8), size: 10,
            edit: {
                $0.replaceSubrange(257..<265, with: Array("ustar  ".utf8) + [0])
                $0.replaceSubrange(345..<357, with: Array("14567654321\0".utf8))  // GNU atime, not a prefix
            })
        #expect(try skimAll(handBuilt(block)).map(\.name) == ["gnu.bin"])
    }

    // MARK: - pax

    @Test func paxRecordsEncodeWithASelfInclusiveLength() throws {
        #expect(PaxRecord(key: "size", value: "8589934592").encoded == Array("19 size=8589934592\n".utf8))
        #expect(PaxRecord(key: "path", value: "abc").encoded == Array("12 path=abc\n".utf8))
        #expect(PaxRecord(key: "k", value: "vvvv").encoded == Array("9 k=vvvv\n".utf8))  // 9: one digit
        #expect(PaxRecord(key: "k", value: "vvvvv").encoded == Array("11 k=vvvvv\n".utf8))  // 10 would need two
        let ninetyEight = String(repeating: "v", count: 94)  // " k=" + 94 + "\n" = 98 bytes of body
        #expect(PaxRecord(key: "k", value: ninetyEight).encoded == Array("101 k=\(ninetyEight)\n".utf8))
        for length in 0..<1100 {
            let record = PaxRecord(
                key: "path",
                value: String(repeating: "é", count: length / 2) + String(repeating: "x", count: length % 2))
            let encoded = record.encoded
            let declared = Int(String(decoding: encoded.prefix(while: { $0 != UInt8(ascii: " ") }), as: UTF8.self))
            #expect(declared == encoded.count)
            #expect(try PaxRecord.decode(encoded) == [record])
        }
        let several = [
            PaxRecord(key: "size", value: "12"), PaxRecord(key: "path", value: "a=b/c"), PaxRecord(key: "x", value: ""),
        ]
        #expect(try PaxRecord.decode(PaxRecord.encode(several)) == several)
        #expect(try PaxRecord.decode([]) == [])
    }

    @Test(arguments: [
        "12 path=abc", "13 path=abc\n", "11 path=abc\n\n", "x path=abc\n", "12path=abcd\n", "11 pathabc\n", "6 =ab\n",
        "0 \n", "3 \n", "12 path=abc\nxx", "00000000012 path=abc\n",
    ])
    func malformedPaxRecordsAreRejected(text: String) {
        expectFerryError(.bundleInvalid) { try PaxRecord.decode(Array(text.utf8)) }
    }

    @Test func paxRecordsMustBeUTF8() {
        expectFerryError(.bundleInvalid) { try PaxRecord.decode(Array("10 path=".utf8) + [0xff] + Array("\n".utf8)) }
    }

    /// A member above the ustar limit gets a pax size record, and nothing else does. Writing
    /// 8 GiB is impractical, so only the headers are written and read back.
    @Test func hugeMembersGetAPaxSizeRecord() async throws {
        let huge: Int64 = 9 << 30
        let sink = MemoryByteSink()
        let writer = TarWriter(sink: sink)
        let offset = try writer.beginMember(name: "images/huge.img", size: huge)
        #expect(offset == 1536)
        let bytes = sink.bytes
        #expect(bytes.count == 1536)
        #expect(bytes[156] == UInt8(ascii: "x"))
        #expect(Array(bytes[0..<19]) == Array("PaxHeaders/huge.img".utf8))
        let record = Array("19 size=9663676416\n".utf8)
        #expect(Array(bytes[124..<136]) == Array(String(format11: record.count).utf8) + [0])
        #expect(Array(bytes[512..<(512 + record.count)]) == record)
        #expect(bytes[(512 + record.count)..<1024].allSatisfy { $0 == 0 })
        #expect(bytes[1024 + 156] == UInt8(ascii: "0"))
        #expect(Array(bytes[(1024 + 124)..<(1024 + 136)]) == Array("00000000000\0".utf8))

        let reader = TarReader(source: MemoryByteSource(bytes))
        let member = try #require(try reader.nextMember())
        #expect(member.name == "images/huge.img")
        #expect(member.size == huge)
        #expect(member.offset == 1536)
        #expect(member.headerOffset == 0)
        expectFerryError(.limitExceeded) {
            try TarReader(source: MemoryByteSource(bytes)).nextMember(maximumSize: 8 << 30)
        }

        // GNU tar lists it with its real size before running out of archive.
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/huge.tar", bytes: bytes)
            let listing = try Shell.run(["tar", "-tvf", "\(dir)/huge.tar"]).output
            #expect(listing.contains(" 9663676416 "))
            #expect(listing.contains("images/huge.img"))
        }

        // At the ustar limit itself: a plain header.
        let limitSink = MemoryByteSink()
        try TarWriter(sink: limitSink).beginMember(name: "edge.img", size: 0o77777777777)
        #expect(limitSink.bytes.count == 512)
        #expect(limitSink.bytes[156] == UInt8(ascii: "0"))
        #expect(Array(limitSink.bytes[124..<136]) == Array("77777777777\0".utf8))
    }

    /// An 'x' header followed by the member it describes, with `records` as its content.
    func paxArchive(_ records: [UInt8], name: String = "data.bin", headerSize: Int64 = 5, contentSize: Int = 300)
        -> [UInt8]
    {
        header(name: "PaxHeaders.0/data.bin", size: Int64(records.count), typeflag: UInt8(ascii: "x")) + padded(records)
            + header(name: name, size: headerSize) + padded(seededBytes(count: contentSize, seed: 3)) + endMarker
    }

    @Test func thePaxSizeRecordOverridesTheHeader() throws {
        let bytes = paxArchive(Array("12 size=300\n".utf8))
        let members = try readAll(bytes)
        #expect(members.count == 1)
        #expect(members[0].member.name == "data.bin")
        #expect(members[0].member.size == 300)
        #expect(members[0].member.offset == 1536)
        #expect(members[0].member.headerOffset == 0)
        #expect(members[0].content == seededBytes(count: 300, seed: 3))
        #expect(try skimAll(bytes).map(\.size) == [300])
    }

    @Test func thePaxPathAndTimeRecordsApply() throws {
        let long = String(repeating: "z", count: 200)  // no '/': ustar fields cannot hold it
        let records = PaxRecord.encode([
            PaxRecord(key: "path", value: long), PaxRecord(key: "size", value: "300"),
            PaxRecord(key: "mtime", value: "1700000000.123456789"), PaxRecord(key: "atime", value: "1700000001.5"),
            PaxRecord(key: "ctime", value: "1700000002"),
        ])
        let members = try readAll(paxArchive(records))
        #expect(members.map(\.member.name) == [long])
        #expect(members[0].member.mtime == 1_700_000_000)
    }

    @Test(arguments: [
        "8 uid=0\n",  // only size, path and time stamps
        "16 linkpath=abc\n", "23 GNU.sparse.size=300\n", "12 size=300\n12 size=300\n",  // repeated
        "11 size=-1\n", "11 size=0x\n", "8 size=\n", "8 path=\n", "15 path=../etc\n", "13 mtime=abc\n",
        "12 size=300",  // malformed record
        "25 path=" + String(repeating: "w", count: 300) + "\n",  // declared length wrong
    ])
    func badPaxHeadersAreRejected(records: String) {
        expectFerryError(.bundleInvalid) { try skimAll(paxArchive(Array(records.utf8))) }
    }

    @Test func paxPathsLongerThan255BytesAreRejected() throws {
        let ok = PaxRecord.encode([PaxRecord(key: "path", value: String(repeating: "y", count: 255))])
        #expect(try skimAll(paxArchive(ok)).map(\.name.count) == [255])
        let tooLong = PaxRecord.encode([PaxRecord(key: "path", value: String(repeating: "y", count: 256))])
        expectFerryError(.bundleInvalid) { try skimAll(paxArchive(tooLong)) }
    }

    @Test func paxHeadersMustPrecedeOneRegularMember() {
        let record = padded(Array("12 size=300\n".utf8))
        let pax = header(name: "PaxHeaders/x", size: 12, typeflag: UInt8(ascii: "x"))
        expectFerryError(.bundleInvalid) { try skimAll(pax + record + endMarker) }
        expectFerryError(.bundleInvalid) {
            try skimAll(
                pax + record + pax + record + header(name: "a", size: 300) + padded(seededBytes(count: 300, seed: 1))
                    + endMarker)
        }
        expectFerryError(.bundleInvalid) {
            try skimAll(pax + record + header(name: "a", typeflag: UInt8(ascii: "2")) + endMarker)
        }
        // A global header is never accepted.
        let global = header(name: "PaxHeaders/g", size: 12, typeflag: UInt8(ascii: "g"))
        expectFerryError(.bundleInvalid) { try skimAll(global + record + header(name: "a") + endMarker) }
    }

    @Test func paxHeadersAreBounded() {
        let big = header(name: "PaxHeaders/x", size: 64 * 1024 + 1, typeflag: UInt8(ascii: "x"))
        expectFerryError(.limitExceeded) { try skimAll(big + [UInt8](repeating: 0, count: 66 * 1024) + endMarker) }
    }

    // MARK: - Truncation and the end of the archive

    func sampleArchive() throws -> [UInt8] {
        try archive([
            ("a", []), ("b", seededBytes(count: 700, seed: 1)), ("c", seededBytes(count: 1024, seed: 2)),
            ("d", [4, 5, 6]),
        ])
    }

    @Test func cutsAtEveryBlockBoundaryAreTruncated() throws {
        let bytes = try sampleArchive()
        let endMarkerStart = bytes.count - 1024
        for cut in stride(from: 0, through: endMarkerStart, by: 512) {
            let prefix = Array(bytes[..<cut])
            expectFerryError(.truncated) { try readAll(prefix) }
            expectFerryError(.truncated) { try skimAll(prefix) }
        }
        // One zero block and then the end of the stream is a proper end; so is the full archive.
        #expect(try readAll(Array(bytes[..<(endMarkerStart + 512)])).count == 4)
        #expect(try readAll(bytes).count == 4)
    }

    @Test func cutsInsideHeadersContentPaddingAndTheEndMarkerAreTruncated() throws {
        let bytes = try sampleArchive()
        let members = try readAll(bytes)
        let b = members[1].member  // 700 bytes at 1024, padding up to 2048
        var cuts = [
            100, 511, Int(b.offset) + 1, Int(b.offset) + 350, Int(b.offset) + 699, Int(b.offset) + 700,
            Int(b.offset) + 710,
        ]
        cuts += [bytes.count - 1024 + 100, bytes.count - 100, bytes.count - 1]
        for cut in cuts {
            let prefix = Array(bytes[..<cut])
            expectFerryError(.truncated) { try readAll(prefix) }
            expectFerryError(.truncated) { try skimAll(prefix) }
        }
        let pax = paxArchive(Array("12 size=300\n".utf8))
        for cut in [600, 1000, 1100, 1536 + 299] {
            expectFerryError(.truncated) { try readAll(Array(pax[..<cut])) }
        }
    }

    @Test func trailingDataAfterTheEndIsRejected() throws {
        let bytes = try sampleArchive()
        expectFerryError(.bundleInvalid) { try readAll(bytes + [0x42]) }
        expectFerryError(.bundleInvalid) { try readAll(bytes + [UInt8](repeating: 0, count: 9000) + [1]) }
        expectFerryError(.bundleInvalid) { try readAll(bytes + [UInt8](repeating: 0, count: (1 << 20) + 1)) }
        // A zero block followed by anything but zeros is not an end.
        let oneZeroBlock = Array(bytes[..<(bytes.count - 512)])
        expectFerryError(.bundleInvalid) { try skimAll(oneZeroBlock + header(name: "late", size: 0) + endMarker) }
        // Zero padding (tar's 10 KiB records, up to 1 MiB) is fine.
        #expect(try readAll(bytes + [UInt8](repeating: 0, count: 10240 - bytes.count % 10240)).count == 4)
        #expect(try readAll(bytes + [UInt8](repeating: 0, count: 1 << 20)).count == 4)
    }

    @Test func finishAndCheckEndRejectsAnUnreadMember() throws {
        let reader = TarReader(source: MemoryByteSource(try sampleArchive()))
        _ = try reader.nextMember()
        _ = try reader.nextMember()
        expectFerryError(.bundleInvalid) { try reader.finishAndCheckEnd() }
    }

    @Test func errorsAreSticky() throws {
        let bytes = try sampleArchive()
        let reader = TarReader(source: MemoryByteSource(Array(bytes[..<700])))  // inside the second header
        _ = try reader.nextMember()
        expectFerryError(.truncated) { try reader.nextMember() }
        expectFerryError(.truncated) { try reader.nextMember() }
        expectFerryError(.truncated) { try reader.finishAndCheckEnd() }
    }

    // MARK: - Limits and partial reads

    @Test func membersAboveTheSizeLimitAreRejected() throws {
        let bytes = try archive([("small", [1]), ("big", seededBytes(count: 1000, seed: 4))])
        let reader = TarReader(source: MemoryByteSource(bytes))
        #expect(try reader.nextMember(maximumSize: 1)?.name == "small")
        expectFerryError(.limitExceeded) { try reader.nextMember(maximumSize: 999) }

        let exact = TarReader(source: MemoryByteSource(bytes))
        _ = try exact.nextMember(maximumSize: 1000)
        #expect(try exact.nextMember(maximumSize: 1000)?.size == 1000)

        let byProperty = TarReader(source: MemoryByteSource(bytes), maximumMemberSize: 999)
        _ = try byProperty.nextMember()
        expectFerryError(.limitExceeded) { try byProperty.nextMember() }
    }

    @Test func partlyReadMembersAreSkipped() throws {
        let b = seededBytes(count: 5000, seed: 8)
        let reader = TarReader(source: MemoryByteSource(try archive([("a", [1, 2, 3]), ("b", b), ("c", [9])])))
        _ = try reader.nextMember()
        #expect(try reader.readRemainingContent(maximumCount: 3) == [1, 2, 3])
        #expect(try reader.nextMember()?.name == "b")
        var buffer = [UInt8](repeating: 0, count: 100)
        #expect(try buffer.withUnsafeMutableBytes { try reader.readContent(into: $0) } == 100)
        #expect(buffer == Array(b[..<100]))
        expectFerryError(.limitExceeded) { try reader.readRemainingContent(maximumCount: 4899) }
        try reader.skipContent()
        #expect(try buffer.withUnsafeMutableBytes { try reader.readContent(into: $0) } == 0)
        let c = try #require(try reader.nextMember())
        #expect(c.name == "c")
        #expect(try reader.readRemainingContent(maximumCount: 1) == [9])
        #expect(try reader.nextMember() == nil)
        #expect(try reader.nextMember() == nil)
        try reader.finishAndCheckEnd()
    }
}

/// A source that hands out at most 7 bytes per read, like a slow pipe.
final class TrickleByteSource: ByteSource {
    let inner: MemoryByteSource
    var sourceName: String { "trickle" }

    init(_ bytes: [UInt8]) { inner = MemoryByteSource(bytes) }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<min(buffer.count, 7)]))
    }
}

extension String {
    /// `value` as 11 zero-filled octal digits.
    init(format11 value: Int) {
        let digits = String(value, radix: 8)
        self = String(repeating: "0", count: 11 - digits.count) + digits
    }
}
