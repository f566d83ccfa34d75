internal import COpenSSL
import FerrySystem

#if canImport(Glibc)
import Glibc
#endif

/// An X.509 certificate, with what Ferry's trust policy looks at.
public struct Certificate: Sendable, Hashable {
    /// The DER encoding.
    public let der: [UInt8]
    /// SHA-256 of the DER encoding: the identity of a signer (deny-lists and thresholds use it).
    public let fingerprint: SHA256Digest
    /// SHA-256 of the DER SubjectPublicKeyInfo: the public-key pin (`sha256//<base64>`).
    public let publicKeyFingerprint: SHA256Digest
    /// The subject as one line (`/CN=Ferry Demo Signer 1`).
    public let subject: String
    /// The issuer as one line.
    public let issuer: String
    /// Validity, in seconds since the epoch.
    public let notBefore: Int64
    public let notAfter: Int64

    init(_ x509: OpaquePointer) throws(FerryError) {
        var pointer: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_X509(x509, &pointer)
        guard length > 0, let pointer else {
            throw FerryError(code: .signatureInvalid, message: "cannot encode a certificate: \(OpenSSLError.drain())")
        }
        der = Array(UnsafeBufferPointer(start: pointer, count: Int(length)))
        CRYPTO_free(pointer, #fileID, #line)
        fingerprint = SHA256Hasher.hash(der)
        var key: UnsafeMutablePointer<UInt8>? = nil
        let keyLength = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x509), &key)
        guard keyLength > 0, let key else {
            throw FerryError(
                code: .signatureInvalid, message: "cannot encode a certificate's public key: \(OpenSSLError.drain())")
        }
        publicKeyFingerprint = SHA256Hasher.hash(Array(UnsafeBufferPointer(start: key, count: Int(keyLength))))
        CRYPTO_free(key, #fileID, #line)
        subject = Self.oneLine(X509_get_subject_name(x509))
        issuer = Self.oneLine(X509_get_issuer_name(x509))
        notBefore = Self.seconds(X509_get0_notBefore(x509))
        notAfter = Self.seconds(X509_get0_notAfter(x509))
    }

    /// An X.509 name as one line (`/CN=Ferry Demo Signer 1`).
    static func oneLine(_ name: OpaquePointer?) -> String {
        var text = [CChar](repeating: 0, count: 512)
        X509_NAME_oneline(name, &text, Int32(text.count))
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func seconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return Int64(timegm(&parts))
    }

    /// Reads every certificate of a PEM file (a keyring, a signer certificate).
    /// - Throws: `.untrusted` when the file cannot be read or holds no certificate.
    public static func load(pemFile path: String) throws(FerryError) -> [Certificate] {
        let bytes: [UInt8]
        do { bytes = try TextFile.readBytes(path, limit: 4 << 20) } catch {
            throw FerryError(code: .untrusted, message: "cannot read certificates: \(error.message)", cause: error)
        }
        return try parse(pem: bytes, name: path)
    }

    /// Parses every certificate of PEM text.
    public static func parse(pem bytes: [UInt8], name: String) throws(FerryError) -> [Certificate] {
        var result: [Certificate] = []
        try withCertificates(pem: bytes, name: name) { (x509) throws(FerryError) in result.append(try Certificate(x509))
        }
        return result
    }

    /// Calls `body` with each certificate of PEM text as an OpenSSL `X509 *` (freed afterwards).
    static func withCertificates(pem bytes: [UInt8], name: String, _ body: (OpaquePointer) throws(FerryError) -> Void)
        throws(FerryError)
    {
        guard let bio = CMS.memoryBIO(bytes) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(bio) }
        var count = 0
        while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
            defer { X509_free(x509) }
            count += 1
            try body(x509)
        }
        ERR_clear_error()  // the end of the PEM data is reported as an error
        guard count > 0 else {
            throw FerryError(code: .untrusted, message: "'\(name)' holds no PEM certificate")
        }
    }
}
