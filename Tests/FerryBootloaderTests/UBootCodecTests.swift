import FerryBootloader
import FerrySystem
import FerryTestSupport
import FerryXZ
import Testing

/// The U-Boot environment codec against images made by the real `mkenvimage` (u-boot-tools) and
/// hand-built golden vectors for the boolean (NOR) flag scheme.
@Suite struct UBootCodecTests {
    static let variables = [
        "BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0", "bootcmd": "run ferry; echo done",
    ]

    func mkenvimage(_ variables: [String: String], size: Int, extra: [String], in dir: String) throws -> [UInt8] {
        let text = variables.keys.sorted().map { "\($0)=\(variables[$0]!)" }.joined(separator: "\n") + "\n"
        try DurableFile.write(text, to: "\(dir)/env.txt")
        try Shell.check(["mkenvimage", "-s", "\(size)"] + extra + ["-o", "\(dir)/env.bin", "\(dir)/env.txt"])
        return try readFile("\(dir)/env.bin")
    }

    @Test(arguments: [
        (false, UBootEnvironmentFormat.ByteOrder.little, ["-p", "0"], UInt8(0)),
        (true, .little, ["-r", "-p", "0"], UInt8(0)),
        (false, .big, ["-b", "-p", "0xff"], UInt8(0xff)),
        (true, .big, ["-r", "-b", "-p", "0xff"], UInt8(0xff)),
    ])
    func encodeMatchesMkenvimageByteForByte(
        redundant: Bool, byteOrder: UBootEnvironmentFormat.ByteOrder, options: [String], pad: UInt8
    ) async throws {
        try await withTemporaryDirectory { dir in
            let format = UBootEnvironmentFormat(size: 0x2000, redundant: redundant, byteOrder: byteOrder)
            let reference = try mkenvimage(Self.variables, size: 0x2000, extra: options, in: dir)
            let ours = try UBootEnvironmentCodec.encode(
                Self.variables, flags: redundant ? 1 : nil, padByte: pad, format: format, name: "test")
            #expect(ours == reference)
            let decoded = try #require(try UBootEnvironmentCodec.decode(reference, format: format, name: "test"))
            #expect(decoded.variables == Self.variables)
            #expect(decoded.padByte == pad)
            #expect(decoded.flags == (redundant ? 1 : nil))
        }
    }

    @Test func aCorruptCopyDecodesAsNil() throws {
        let format = UBootEnvironmentFormat(size: 256, redundant: true)
        var bytes = try UBootEnvironmentCodec.encode(["a": "1"], flags: 7, padByte: 0, format: format, name: "t")
        #expect(try UBootEnvironmentCodec.decode(bytes, format: format, name: "t") != nil)
        for index in [0, 3, 4 + 1, 100, 255] {
            var copy = bytes
            copy[index] ^= 0x40
            if index == 4 { continue }  // the flag byte is outside the CRC by design
            #expect(try UBootEnvironmentCodec.decode(copy, format: format, name: "t") == nil)
        }
        bytes[4] = 9  // a changed flag keeps the copy valid
        #expect(try UBootEnvironmentCodec.decode(bytes, format: format, name: "t")?.flags == 9)
    }

    @Test func tooManyVariablesForTheSizeAreRefused() {
        let format = UBootEnvironmentFormat(size: 64, redundant: true)
        let error = #expect(throws: FerryError.self) {
            try UBootEnvironmentCodec.encode(
                ["x": String(repeating: "y", count: 80)], flags: 1, padByte: 0, format: format, name: "t")
        }
        #expect(error?.code == .bootEnvironmentTooSmall)
    }

    @Test func malformedDataWithAValidCRCIsAnError() throws {
        let format = UBootEnvironmentFormat(size: 64, redundant: false)
        var data = Array("novalue\0\0".utf8)
        data += [UInt8](repeating: 0, count: format.dataSize - data.count)
        let crc = CRC32.checksum(data)
        let bytes = [UInt8(crc & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc >> 16 & 0xff), UInt8(crc >> 24)] + data
        let error = #expect(throws: FerryError.self) {
            try UBootEnvironmentCodec.decode(bytes, format: format, name: "t")
        }
        #expect(error?.code == .bootEnvironmentInvalid)
    }

    /// U-Boot's env_check_redund: valid beats invalid; higher flag wins; 0 beats 255; ties pick copy 1.
    @Test(arguments: [
        (UInt8(1), UInt8(2), 1), (2, 1, 0), (255, 0, 1), (0, 255, 0), (7, 7, 0), (254, 255, 1), (0, 1, 1),
        (1, 0, 0),
    ])
    func currentCopySelection(first: UInt8, second: UInt8, expected: Int) {
        let a = UBootEnvironmentCopy(flags: first, variables: [:], padByte: 0)
        let b = UBootEnvironmentCopy(flags: second, variables: [:], padByte: 0)
        #expect(UBootEnvironmentCodec.currentIndex(a, b) == expected)
        #expect(UBootEnvironmentCodec.currentIndex(nil, b) == 1)
        #expect(UBootEnvironmentCodec.currentIndex(a, nil) == 0)
        #expect(UBootEnvironmentCodec.currentIndex(nil, nil) == nil)
    }

    /// The boolean (NOR) scheme, on golden vectors: copy layout [crc LE][flag][data], CRC over
    /// the data only, active = 1, obsolete = 0. A write puts the new copy (flag 1) into the
    /// obsolete slot, then clears the old copy's flag byte to 0.
    @Test func booleanSchemeGoldenVectors() async throws {
        try await withTemporaryDirectory { dir in
            let size = 32
            // Golden copy: "a=1\0\0" padded with 0xff, CRC-32 of that 27-byte data area.
            var data = Array("a=1\0\0".utf8)
            data += [UInt8](repeating: 0xff, count: size - 5 - data.count)
            // Reference CRC-32 values computed independently (Python's zlib.crc32).
            let crc: UInt32 = 0x9731_9872
            #expect(CRC32.checksum(data) == crc)
            func copy(flag: UInt8, _ data: [UInt8], crc: UInt32) -> [UInt8] {
                [UInt8(crc & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc >> 16 & 0xff), UInt8(crc >> 24), flag] + data
            }
            let active = copy(flag: 1, data, crc: crc)
            let obsolete = [UInt8](repeating: 0xff, count: size)  // erased flash
            try makeFile("\(dir)/nor.bin", bytes: active + obsolete)
            let environment = UBootEnvironment(
                locations: [
                    UBootEnvironmentLocation(device: "\(dir)/nor.bin", offset: 0, size: size, sectorSize: nil),
                    UBootEnvironmentLocation(
                        device: "\(dir)/nor.bin", offset: Int64(size), size: size, sectorSize: nil),
                ], name: "nor", flagScheme: .boolean)
            #expect(try environment.read() == ["a": "1"])
            try environment.update(["b": "2"])
            var newData = Array("a=1\0b=2\0\0".utf8)
            newData += [UInt8](repeating: 0xff, count: size - 5 - newData.count)
            let expected = copy(flag: 0, data, crc: crc) + copy(flag: 1, newData, crc: 0xC114_2F27)
            #expect(try readFile("\(dir)/nor.bin") == expected)
            #expect(try environment.read() == ["a": "1", "b": "2"])
            // And back: copy 1 becomes active again, copy 2 obsolete.
            try environment.update(["b": nil])
            let state = try environment.readState()
            #expect(state.current == 0)
            #expect(state.copies[0]?.flags == 1 && state.copies[1]?.flags == 0)
            #expect(try environment.read() == ["a": "1"])
        }
    }
}
