import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// SHA-256 over OpenSSL: FIPS 180-2 vectors, hex parsing, and hashing devices.
@Suite struct SHA256Tests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        ),
        (
            "The quick brown fox jumps over the lazy dog",
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
        ),
    ])
    func knownVectors(message: String, hex: String) {
        #expect(SHA256Hasher.hash(Array(message.utf8)).hex == hex)
    }

    @Test func oneMillionAs() {
        let digest = SHA256Hasher.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))
        #expect(digest.hex == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test(arguments: [1, 63, 64, 65, 4096, 100_003])
    func incrementalUpdatesEqualOneShot(chunkSize: Int) {
        let data = seededBytes(count: 300_000, seed: 61)
        let hasher = SHA256Hasher()
        var offset = 0
        while offset < data.count {
            let end = min(offset + chunkSize, data.count)
            hasher.update(Array(data[offset..<end]))
            offset = end
        }
        hasher.update([])  // an empty update changes nothing
        #expect(hasher.finalize() == SHA256Hasher.hash(data))
    }

    @Test func rawBufferUpdatesEqualArrayUpdates() {
        let data = seededBytes(count: 10_000, seed: 62)
        let hasher = SHA256Hasher()
        data.withUnsafeBytes { hasher.update($0) }
        #expect(hasher.finalize() == SHA256Hasher.hash(data))
    }

    // MARK: - Hex

    @Test(arguments: [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ])
    func hexRoundTrips(hex: String) throws {
        let digest = try #require(SHA256Digest(hex: hex))
        #expect(digest.hex == hex)
        #expect(digest.description == hex)
        #expect(digest.bytes.count == 32)
        #expect(SHA256Digest(bytes: digest.bytes) == digest)
    }

    @Test func upperCaseHexParsesAndPrintsLowerCase() throws {
        let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        let digest = try #require(SHA256Digest(hex: upper))
        #expect(digest == SHA256Hasher.hash(Array("abc".utf8)))
        #expect(digest.hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func bytesRoundTripThroughHex() throws {
        let bytes = seededBytes(count: 32, seed: 63)
        let digest = try #require(SHA256Digest(bytes: bytes))
        #expect(SHA256Digest(hex: digest.hex)?.bytes == bytes)
    }

    @Test(arguments: [
        "",
        "abc",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",  // 63 digits
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550",  // 65 digits
        "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  // not hex
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85 ",  // trailing space
        " e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",  // leading space
        "0xb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  // prefix
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8-5",  // sign
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8é",  // 64 bytes, non-ASCII
    ])
    func invalidHexIsRejected(text: String) {
        #expect(SHA256Digest(hex: text) == nil)
    }

    @Test(arguments: [0, 31, 33, 64])
    func digestsAreExactly32Bytes(count: Int) {
        #expect(SHA256Digest(bytes: [UInt8](repeating: 7, count: count)) == nil)
    }

    // MARK: - Hashing devices

    @Test(arguments: [0, 1, 4096, (4 << 20) - 1, 4 << 20, (9 << 20) + 123])
    func hashingADeviceEqualsHashingItsBytes(size: Int) async throws {
        try await withTemporaryDirectory { dir in
            let bytes = seededBytes(count: size, seed: UInt64(64 + size))
            try makeFile("\(dir)/image.img", bytes: bytes)
            let device = try BlockDevice.openForReading("\(dir)/image.img")
            #expect(device.byteCount == Int64(size))
            #expect(try SHA256Hasher.hash(device) == SHA256Hasher.hash(bytes))
        }
    }

    @Test func hashingAPrefixOrAWindowHashesJustThoseBytes() async throws {
        try await withTemporaryDirectory { dir in
            let bytes = seededBytes(count: 6 << 20, seed: 65)
            try makeFile("\(dir)/image.img", bytes: bytes)
            let device = try BlockDevice.openForReading("\(dir)/image.img")
            #expect(
                try SHA256Hasher.hash(device, byteCount: 5_000_000) == SHA256Hasher.hash(Array(bytes[..<5_000_000])))
            #expect(try SHA256Hasher.hash(device, byteCount: 0) == SHA256Hasher.hash([]))

            let window = try BlockDevice.openForReading("\(dir)/image.img", window: 1_000_000..<5_500_000)
            #expect(try SHA256Hasher.hash(window) == SHA256Hasher.hash(Array(bytes[1_000_000..<5_500_000])))
        }
    }

    @Test func hashingPastTheEndThrowsDeviceTooSmall() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/image.img", bytes: seededBytes(count: 10_000, seed: 66))
            let device = try BlockDevice.openForReading("\(dir)/image.img")
            let error = #expect(throws: FerryError.self) { try SHA256Hasher.hash(device, byteCount: 10_001) }
            #expect(error?.code == .deviceTooSmall)
        }
    }

    /// The zero shortcut gives exactly the digest of the bytes, for zeros of several lengths
    /// (remembered ones too) and for data that is zero except one byte.
    @Test func hashNotingZerosIsTheDigestOfTheBytes() {
        for size in [0, 100, 65536, 65537, 4 << 20, (4 << 20) - 512, 4 << 20] {
            let zeros = [UInt8](repeating: 0, count: size)
            var almost = zeros
            if size > 0 { almost[size - 1] = 1 }
            for bytes in [zeros, almost] {
                let shortcut = bytes.withUnsafeBytes { SHA256Hasher.hashNotingZeros($0) }
                #expect(shortcut == SHA256Hasher.hash(bytes), "\(size) bytes")
            }
        }
        #expect(SHA256Hasher.digestOfZeros(count: 3) == SHA256Hasher.hash([0, 0, 0]))
    }
}
