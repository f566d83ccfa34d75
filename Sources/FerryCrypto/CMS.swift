internal import COpenSSL
import FerrySystem

/// Trusted CA certificates: the device's keyring.
public final class Keyring {
    /// The CA certificates, in file order.
    public let certificates: [Certificate]
    let store: OpaquePointer
    /// Where it came from (for messages and `status`).
    public let name: String

    /// A keyring from PEM text (one or more CA certificates).
    /// - Throws: `.untrusted` when it holds no certificate.
    public init(pem bytes: [UInt8], name: String) throws(FerryError) {
        guard let store = X509_STORE_new() else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a store")
        }
        self.store = store
        self.name = name
        var certificates: [Certificate] = []
        do {
            try Certificate.withCertificates(pem: bytes, name: name) { (x509) throws(FerryError) in
                guard X509_STORE_add_cert(store, x509) == 1 else {
                    throw FerryError(
                        code: .untrusted, message: "cannot add a certificate of '\(name)': \(OpenSSLError.drain())")
                }
                certificates.append(try Certificate(x509))
            }
        } catch {
            X509_STORE_free(store)
            throw error
        }
        self.certificates = certificates
    }

    /// The keyring in a PEM file.
    public convenience init(pemFile path: String) throws(FerryError) {
        let bytes: [UInt8]
        do { bytes = try TextFile.readBytes(path, limit: 4 << 20) } catch {
            throw FerryError(code: .untrusted, message: "cannot read the keyring: \(error.message)", cause: error)
        }
        try self.init(pem: bytes, name: path)
    }

    deinit { X509_STORE_free(store) }
}

/// Detached CMS (PKCS #7) signatures, DER-encoded, over binary content: what
/// `openssl cms -sign -binary -outform DER` makes and `openssl cms -verify -binary -inform DER
/// -content <file> -CAfile <keyring> -purpose any` accepts.
public enum CMS {
    /// The largest signature Ferry reads (a signature with its certificate chain is a few KiB).
    public static let maximumSignatureSize = 64 << 10

    /// Signs `content` with a certificate and its private key, both read straight from their PEM
    /// files (the key is never copied anywhere else).
    /// - Throws: `.signatureInvalid` when a file is unreadable, the key does not match, or OpenSSL fails.
    public static func sign(content: [UInt8], certificatePath: String, keyPath: String) throws(FerryError) -> [UInt8] {
        guard let certificateBIO = BIO_new_file(certificatePath, "r") else {
            throw FerryError(
                code: .signatureInvalid,
                message: "cannot open signer certificate '\(certificatePath)': \(OpenSSLError.drain())")
        }
        defer { BIO_free(certificateBIO) }
        guard let certificate = PEM_read_bio_X509(certificateBIO, nil, nil, nil) else {
            throw FerryError(code: .signatureInvalid, message: "'\(certificatePath)' holds no PEM certificate")
        }
        defer { X509_free(certificate) }
        guard let keyBIO = BIO_new_file(keyPath, "r") else {
            throw FerryError(
                code: .signatureInvalid, message: "cannot open signing key '\(keyPath)': \(OpenSSLError.drain())")
        }
        defer { BIO_free(keyBIO) }
        guard let key = PEM_read_bio_PrivateKey(keyBIO, nil, nil, nil) else {
            throw FerryError(
                code: .signatureInvalid,
                message: "'\(keyPath)' holds no usable PEM private key: \(OpenSSLError.drain())")
        }
        defer { EVP_PKEY_free(key) }
        guard X509_check_private_key(certificate, key) == 1 else {
            ERR_clear_error()
            throw FerryError(
                code: .signatureInvalid,
                message: "the key '\(keyPath)' does not belong to the certificate '\(certificatePath)'")
        }
        guard let data = memoryBIO(content) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(data) }
        guard let cms = CMS_sign(certificate, key, nil, data, UInt32(CMS_DETACHED | CMS_BINARY)) else {
            throw FerryError(
                code: .signatureInvalid, message: "signing with '\(certificatePath)' failed: \(OpenSSLError.drain())")
        }
        defer { CMS_ContentInfo_free(cms) }
        guard let output = BIO_new(BIO_s_mem()) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(output) }
        guard i2d_CMS_bio(output, cms) == 1 else {
            throw FerryError(code: .signatureInvalid, message: "encoding the signature failed: \(OpenSSLError.drain())")
        }
        let signature = memoryContents(output)
        guard !signature.isEmpty else { throw FerryError(code: .internal, message: "empty signature") }
        return signature
    }

    /// What a memory BIO holds.
    static func memoryContents(_ bio: OpaquePointer) -> [UInt8] {
        var pointer: UnsafeMutablePointer<CChar>? = nil
        let length = COpenSSL_BIO_get_mem_data(bio, &pointer)
        guard length > 0, let pointer else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    /// A memory BIO holding a copy of `bytes` (the caller frees it).
    static func memoryBIO(_ bytes: [UInt8]) -> OpaquePointer? {
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        let written = bytes.withUnsafeBytes { BIO_write(bio, $0.baseAddress, Int32($0.count)) }
        guard written == Int32(bytes.count) || bytes.isEmpty else {
            BIO_free(bio)
            return nil
        }
        return bio
    }

    /// Verifies one detached signature over `content` against `keyring`, at time `time` (seconds
    /// since the epoch: certificate validity is judged then, not by the wall clock).
    ///
    /// Chain building uses only the keyring's CAs and the certificates inside the signature;
    /// any certificate purpose is accepted (as `-purpose any`), and Ferry then applies its own
    /// key-usage rule: a signer certificate that has a key usage extension must allow
    /// digitalSignature, and one with an extended key usage must allow codeSigning.
    /// - Returns: the signer's certificate (a signature must have exactly one signer).
    /// - Throws: `.signatureInvalid` (malformed, wrong content, several signers), `.untrusted`
    ///   (no chain to the keyring, bad key usage), `.expired` (a certificate not valid at `time`).
    public static func verify(signature: [UInt8], content: [UInt8], keyring: Keyring, at time: Int64, name: String)
        throws(FerryError) -> Certificate
    {
        guard signature.count <= maximumSignatureSize else {
            throw FerryError(
                code: .limitExceeded, message: "\(name) is \(signature.count) bytes, more than \(maximumSignatureSize)")
        }
        ERR_clear_error()
        let cms: OpaquePointer? = memoryBIO(signature).flatMap { bio in
            defer { BIO_free(bio) }
            return d2i_CMS_bio(bio, nil)
        }
        guard let cms else {
            throw FerryError(
                code: .signatureInvalid, message: "\(name) is not a DER CMS signature: \(OpenSSLError.drain())")
        }
        defer { CMS_ContentInfo_free(cms) }
        guard let signerInfos = CMS_get0_SignerInfos(cms) else {
            throw FerryError(code: .signatureInvalid, message: "\(name) is not a signed-data CMS structure")
        }
        guard COpenSSL_sk_CMS_SignerInfo_num(signerInfos) == 1 else {
            throw FerryError(
                code: .signatureInvalid,
                message:
                    "\(name) has \(COpenSSL_sk_CMS_SignerInfo_num(signerInfos)) signers; Ferry expects exactly one per signature file"
            )
        }
        let parameters = X509_STORE_get0_param(keyring.store)
        X509_VERIFY_PARAM_set_time(parameters, time_t(time))
        X509_STORE_set_purpose(keyring.store, X509_PURPOSE_ANY)
        guard let data = memoryBIO(content) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(data) }
        let verified = CMS_verify(cms, nil, keyring.store, data, nil, UInt32(CMS_BINARY))
        guard verified == 1 else {
            let reason = OpenSSLError.drain()
            if reason.contains("certificate has expired") || reason.contains("certificate is not yet valid") {
                throw FerryError(
                    code: .expired,
                    message: "\(name): a signing certificate is not valid at the trusted time: \(reason)")
            }
            if reason.contains("content verify error") || reason.contains("digest failure")
                || reason.contains("signature failure")
            {
                throw FerryError(code: .signatureInvalid, message: "\(name) does not match the signed data (\(reason))")
            }
            throw FerryError(
                code: .untrusted,
                message: "\(name) is not signed by a certificate the keyring '\(keyring.name)' trusts (\(reason))")
        }
        guard let signers = CMS_get0_signers(cms), COpenSSL_sk_X509_num(signers) == 1,
            let x509 = COpenSSL_sk_X509_value(signers, 0)
        else {
            throw FerryError(code: .signatureInvalid, message: "\(name): cannot identify the signer")
        }
        defer { COpenSSL_sk_X509_free(signers) }
        let usage = X509_get_key_usage(x509)
        if usage != UInt32.max && usage & UInt32(KU_DIGITAL_SIGNATURE) == 0 {
            throw FerryError(
                code: .untrusted, message: "\(name): the signer's certificate does not allow digitalSignature")
        }
        let extendedUsage = X509_get_extended_key_usage(x509)
        if extendedUsage != UInt32.max && extendedUsage & UInt32(XKU_CODE_SIGN) == 0
            && extendedUsage & UInt32(XKU_ANYEKU) == 0
        {
            throw FerryError(code: .untrusted, message: "\(name): the signer's certificate does not allow codeSigning")
        }
        return try Certificate(x509)
    }
}
