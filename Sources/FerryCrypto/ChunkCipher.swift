internal import COpenSSL
import FerrySystem

/// The content cipher of an encrypted bundle (docs/bundle-format.md, "Encryption"): AES-256-GCM
/// under the bundle's random content key, each stored chunk sealed on its own, so that chunks
/// stay independent (decoded in parallel, skipped on resume, fetched by range).
///
/// A sealed chunk is its ciphertext followed by the 16-byte tag. The 12-byte nonce is the
/// payload's index in the manifest (4 bytes, big-endian) followed by the chunk's index in the
/// payload (8 bytes, big-endian): unique under one key, since every bundle has its own key, and
/// a chunk moved to another place does not open there.
///
/// The key lives in memory OpenSSL cleanses when the cipher is freed.
public final class ChunkCipher: @unchecked Sendable {
    public static let keySize = 32
    public static let tagSize = 16
    public static let nonceSize = 12
    /// The manifest's `encryption.cipher`.
    public static let name = "aes-256-gcm"

    private let key: UnsafeMutableRawBufferPointer

    /// A cipher with `key` (32 bytes).
    /// - Throws: `.bundleInvalid` for a key of another size.
    public init(key bytes: [UInt8]) throws(FerryError) {
        guard bytes.count == Self.keySize else {
            throw FerryError(
                code: .bundleInvalid, message: "a content key is \(bytes.count) bytes, not \(Self.keySize)")
        }
        key = .allocate(byteCount: Self.keySize, alignment: 16)
        key.copyBytes(from: bytes)
    }

    /// A cipher with a new random key (OpenSSL's private DRBG, seeded by the kernel).
    public static func random() throws(FerryError) -> ChunkCipher {
        var bytes = [UInt8](repeating: 0, count: keySize)
        guard RAND_priv_bytes(&bytes, Int32(keySize)) == 1 else {
            throw FerryError(code: .internal, message: "no random content key: \(OpenSSLError.drain())")
        }
        defer { OPENSSL_cleanse(&bytes, keySize) }
        return try ChunkCipher(key: bytes)
    }

    deinit {
        OPENSSL_cleanse(key.baseAddress, key.count)
        key.deallocate()
    }

    /// The key's bytes (to wrap it in an envelope; the caller cleanses its copy).
    public var keyBytes: [UInt8] { Array(key) }

    /// What the signed manifest says of the key (`encryption.keyCheck`): SHA-256 of a fixed label
    /// and the key. It names the key without revealing it, so that a device knows an envelope that
    /// opens to another key (a replaced or corrupt envelope) before it decrypts a byte.
    public var keyCheck: SHA256Digest {
        let hasher = SHA256Hasher()
        hasher.update(Array("ferry content key check v1\n".utf8))
        hasher.update(UnsafeRawBufferPointer(key))
        return hasher.finalize()
    }

    /// The nonce of chunk `chunk` of payload `payload`.
    static func nonce(payload: Int, chunk: Int) -> [UInt8] {
        let p = UInt32(truncatingIfNeeded: payload).bigEndian
        let c = UInt64(truncatingIfNeeded: chunk).bigEndian
        return withUnsafeBytes(of: p) { Array($0) } + withUnsafeBytes(of: c) { Array($0) }
    }

    /// Seals one chunk: its ciphertext followed by the tag.
    public func seal(_ plaintext: UnsafeRawBufferPointer, payload: Int, chunk: Int) throws(FerryError) -> [UInt8] {
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: plaintext.count + Self.tagSize, alignment: 16)
        defer { output.deallocate() }
        try run(encrypt: true, input: plaintext, output: output, nonce: Self.nonce(payload: payload, chunk: chunk))
        return Array(output)
    }

    /// Seals one chunk given as an array.
    public func seal(_ plaintext: [UInt8], payload: Int, chunk: Int) throws(FerryError) -> [UInt8] {
        try plaintext.withUnsafeBytes { (bytes) in
            Result { () throws(FerryError) in try seal(bytes, payload: payload, chunk: chunk) }
        }.get()
    }

    /// Opens one sealed chunk in place: `sealed` holds ciphertext and tag; on return its first
    /// `sealed.count - 16` bytes hold the plaintext.
    /// - Returns: the plaintext's size.
    /// - Throws: `.bundleInvalid` when the tag does not match (the chunk or the key is wrong).
    public func open(_ sealed: UnsafeMutableRawBufferPointer, payload: Int, chunk: Int) throws(FerryError) -> Int {
        guard sealed.count >= Self.tagSize else {
            throw FerryError(code: .bundleInvalid, message: "an encrypted chunk is shorter than its tag")
        }
        let count = sealed.count - Self.tagSize
        try run(
            encrypt: false, input: UnsafeRawBufferPointer(sealed), output: sealed,
            nonce: Self.nonce(payload: payload, chunk: chunk))
        return count
    }

    /// One GCM pass. Encrypting, `output` receives ciphertext and tag; decrypting, `input` is
    /// ciphertext and tag and `output` receives the plaintext (they may be the same memory).
    private func run(
        encrypt: Bool, input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer, nonce: [UInt8]
    ) throws(FerryError) {
        guard let context = EVP_CIPHER_CTX_new() else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a cipher context")
        }
        defer { EVP_CIPHER_CTX_free(context) }
        let textCount = encrypt ? input.count : input.count - Self.tagSize
        let keyPointer = key.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var ok =
            EVP_CipherInit_ex(context, EVP_aes_256_gcm(), nil, nil, nil, encrypt ? 1 : 0) == 1
            && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_IVLEN, Int32(Self.nonceSize), nil) == 1
            && EVP_CipherInit_ex(context, nil, nil, keyPointer, nonce, -1) == 1
        var done = 0
        // EVP takes int lengths: whole chunks are at most 64 MiB plus a bound, far below.
        if ok && textCount > 0 {
            var written: Int32 = 0
            ok =
                EVP_CipherUpdate(
                    context, output.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                    input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(textCount)) == 1
            done = Int(written)
        }
        if ok && !encrypt {
            let tag = UnsafeMutableRawPointer(mutating: input.baseAddress! + textCount)
            ok = EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(Self.tagSize), tag) == 1
        }
        var tail = [UInt8](repeating: 0, count: 32)
        var finalCount: Int32 = 0
        if ok {
            ok = EVP_CipherFinal_ex(context, &tail, &finalCount) == 1 && finalCount == 0 && done == textCount
        }
        if ok && encrypt {
            ok =
                EVP_CIPHER_CTX_ctrl(
                    context, EVP_CTRL_GCM_GET_TAG, Int32(Self.tagSize), output.baseAddress! + textCount) == 1
        }
        guard ok else {
            let reason = OpenSSLError.drain()
            if !encrypt {
                throw FerryError(
                    code: .bundleInvalid,
                    message: "an encrypted chunk does not open with the content key (its tag does not match)")
            }
            throw FerryError(code: .internal, message: "AES-256-GCM failed: \(reason)")
        }
    }
}
