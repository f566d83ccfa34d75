internal import COpenSSL
import FerrySystem
import Synchronization

/// A SHA-256 digest (32 bytes), printed and parsed as lowercase hex.
public struct SHA256Digest: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    /// Parses 64 hex digits (either case).
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = Self.nibble(utf8[index]), let low = Self.nibble(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        self.bytes = bytes
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { hex }
}

/// Incremental SHA-256 over OpenSSL's EVP interface.
///
/// A class because OpenSSL keeps the context's address; `finalize()` may be called once.
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            preconditionFailure("OpenSSL could not create a SHA-256 context (out of memory?)")
        }
        self.context = context
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Adds `bytes` to the digest.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        precondition(EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) == 1, "EVP_DigestUpdate failed")
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The digest of everything added so far.
    public func finalize() -> SHA256Digest {
        var output = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        precondition(EVP_DigestFinal_ex(context, &output, &length) == 1 && length == 32, "EVP_DigestFinal_ex failed")
        return SHA256Digest(bytes: output)!
    }

    /// The digest of `bytes`.
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> SHA256Digest {
        let hasher = SHA256Hasher()
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The digest of `bytes`, with a shortcut for zeros: a buffer of zeros (the empty blocks of a
    /// filesystem image) gets the digest of that many zeros, computed once per length and then
    /// remembered, so the result is always exactly `hash(bytes)`.
    public static func hashNotingZeros(_ bytes: UnsafeRawBufferPointer) -> SHA256Digest {
        guard bytes.count >= 64 << 10, ZeroBytes.isZero(bytes) else { return hash(bytes) }
        return digestOfZeros(count: bytes.count)
    }

    /// The SHA-256 of `count` zero bytes (remembered for a few lengths: chunk sizes repeat).
    public static func digestOfZeros(count: Int) -> SHA256Digest {
        if let known = zeroDigests.withLock({ $0[count] }) { return known }
        let hasher = SHA256Hasher()
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: min(count, 1 << 20), alignment: 4096)
        defer { piece.deallocate() }
        piece.initializeMemory(as: UInt8.self, repeating: 0)
        var left = count
        while left > 0 {
            let size = min(left, piece.count)
            hasher.update(UnsafeRawBufferPointer(rebasing: piece[..<size]))
            left -= size
        }
        let digest = hasher.finalize()
        zeroDigests.withLock { known in
            if known.count >= 16 { known.removeAll() }
            known[count] = digest
        }
        return digest
    }

    private static let zeroDigests = Mutex<[Int: SHA256Digest]>([:])

    /// The digest of `bytes`.
    public static func hash(_ bytes: [UInt8]) -> SHA256Digest {
        let hasher = SHA256Hasher()
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The digest of the first `byteCount` bytes of a device or file (all of it by default),
    /// read in large chunks with bounded memory.
    public static func hash(_ target: some BlockTarget, byteCount: Int64? = nil) throws(FerryError) -> SHA256Digest {
        let total = byteCount ?? target.byteCount
        let hasher = SHA256Hasher()
        let chunkSize = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while offset < total {
            let count = Int(min(Int64(chunkSize), total - offset))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try target.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            offset += Int64(count)
        }
        return hasher.finalize()
    }
}

/// A byte range of an image and the SHA-256 of its bytes (a delta's source checks).
public struct HashedRange: Sendable, Equatable {
    public var range: Range<Int64>
    public var sha256: SHA256Digest

    public init(range: Range<Int64>, sha256: SHA256Digest) {
        self.range = range
        self.sha256 = sha256
    }
}
