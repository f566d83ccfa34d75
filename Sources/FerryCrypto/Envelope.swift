internal import COpenSSL
import FerrySystem

/// The content key's envelope in an encrypted bundle: a DER CMS EnvelopedData whose content is
/// the 32-byte key, with a recipient entry for every device or fleet certificate it is addressed
/// to. It is what
///
///     openssl cms -encrypt -binary -aes256 -in key.bin -outform DER -out content-key.p7m recipient.pem
///
/// makes, and `openssl cms -decrypt -binary -inform DER -in content-key.p7m -inkey device.key
/// -recip device.pem` opens. RSA recipients get RSA-OAEP with SHA-256 (key transport), EC ones
/// ECDH (key agreement), as OpenSSL does for `-keyopt rsa_padding_mode:oaep`.
public enum Envelope {
    /// The largest envelope Ferry reads (several hundred recipients).
    public static let maximumSize = 256 << 10

    /// How the content key is encrypted to an RSA recipient.
    public enum RSAPadding: String, Sendable, CaseIterable {
        /// RSA-OAEP with SHA-256 (and MGF1 with SHA-256): the default.
        case oaep
        /// PKCS #1 v1.5 (`openssl cms`'s default), for key providers that decrypt nothing else
        /// (Debian 12's TPM provider, tpm2-openssl 1.1.1). Ferry answers every envelope that does
        /// not open to the signed key the same way, so a device is no padding oracle.
        case pkcs1
    }

    /// Wraps `contentKey` for every certificate in the PEM files `recipients`.
    /// - Throws: `.usage` for an unreadable certificate or one whose key cannot receive (not RSA or EC).
    public static func seal(_ contentKey: [UInt8], recipients: [String], rsaPadding: RSAPadding = .oaep)
        throws(FerryError) -> [UInt8]
    {
        guard !recipients.isEmpty else {
            throw FerryError(code: .usage, message: "an encrypted bundle needs at least one --encrypt-to certificate")
        }
        ERR_clear_error()
        guard let data = CMS.memoryBIO(contentKey) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(data) }
        guard let cms = CMS_encrypt(nil, nil, EVP_aes_256_cbc(), UInt32(CMS_BINARY | CMS_PARTIAL)) else {
            throw FerryError(code: .internal, message: "cannot start an envelope: \(OpenSSLError.drain())")
        }
        defer { CMS_ContentInfo_free(cms) }
        var count = 0
        for path in recipients {
            let bytes: [UInt8]
            do { bytes = try TextFile.readBytes(path, limit: 1 << 20) } catch {
                throw FerryError(code: .usage, message: "cannot read recipient certificate: \(error.message)")
            }
            try Certificate.withCertificates(pem: bytes, name: path) { (x509) throws(FerryError) in
                guard let publicKey = X509_get0_pubkey(x509),
                    EVP_PKEY_is_a(publicKey, "RSA") == 1 || EVP_PKEY_is_a(publicKey, "EC") == 1
                else {
                    throw FerryError(
                        code: .usage,
                        message:
                            "recipient certificate '\(path)': its key is neither RSA nor EC, it cannot receive a key")
                }
                let isRSA = EVP_PKEY_is_a(publicKey, "RSA") == 1
                guard let info = CMS_add1_recipient_cert(cms, x509, UInt32(CMS_KEY_PARAM)) else {
                    throw FerryError(
                        code: .usage,
                        message: "recipient certificate '\(path)' cannot be added: \(OpenSSLError.drain())")
                }
                if isRSA && rsaPadding == .oaep {
                    let context = CMS_RecipientInfo_get0_pkey_ctx(info)
                    guard EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_OAEP_PADDING) > 0,
                        EVP_PKEY_CTX_set_rsa_oaep_md(context, EVP_sha256()) > 0
                    else {
                        throw FerryError(
                            code: .internal, message: "cannot set RSA-OAEP for '\(path)': \(OpenSSLError.drain())")
                    }
                }
                count += 1
            }
        }
        guard CMS_final(cms, data, nil, UInt32(CMS_BINARY)) == 1 else {
            throw FerryError(code: .internal, message: "cannot seal the envelope: \(OpenSSLError.drain())")
        }
        guard let output = BIO_new(BIO_s_mem()) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(output) }
        guard i2d_CMS_bio(output, cms) == 1 else {
            throw FerryError(code: .internal, message: "cannot encode the envelope: \(OpenSSLError.drain())")
        }
        return CMS.memoryContents(output)
    }

    /// The recipient entries of an envelope, one line each (`rsa: /CN=device-0042 serial 0x1a2b`,
    /// `ec: /CN=fleet-x1 serial 0x05`, or a subject key identifier).
    /// - Throws: `.bundleInvalid` when it is not a DER CMS EnvelopedData.
    public static func recipients(_ der: [UInt8], name: String) throws(FerryError) -> [String] {
        let cms = try parse(der, context: nil, name: name)
        defer { CMS_ContentInfo_free(cms) }
        var lines: [String] = []
        let infos = CMS_get0_RecipientInfos(cms)
        for index in 0..<COpenSSL_sk_CMS_RecipientInfo_num(infos) {
            let info = COpenSSL_sk_CMS_RecipientInfo_value(infos, index)
            switch CMS_RecipientInfo_type(info) {
            case CMS_RECIPINFO_TRANS:
                var keyID: UnsafeMutablePointer<ASN1_OCTET_STRING>? = nil
                var issuer: OpaquePointer? = nil
                var serial: UnsafeMutablePointer<ASN1_INTEGER>? = nil
                _ = CMS_RecipientInfo_ktri_get0_signer_id(info, &keyID, &issuer, &serial)
                lines.append("rsa: " + identity(keyID: keyID, issuer: issuer, serial: serial))
            case CMS_RECIPINFO_AGREE:
                let keys = CMS_RecipientInfo_kari_get0_reks(info)
                for keyIndex in 0..<COpenSSL_sk_CMS_RecipientEncryptedKey_num(keys) {
                    var keyID: UnsafeMutablePointer<ASN1_OCTET_STRING>? = nil
                    var issuer: OpaquePointer? = nil
                    var serial: UnsafeMutablePointer<ASN1_INTEGER>? = nil
                    _ = CMS_RecipientEncryptedKey_get0_id(
                        COpenSSL_sk_CMS_RecipientEncryptedKey_value(keys, keyIndex), &keyID, nil, nil, &issuer,
                        &serial)
                    lines.append("ec: " + identity(keyID: keyID, issuer: issuer, serial: serial))
                }
            default:
                lines.append("another kind of recipient (not usable by Ferry)")
            }
        }
        return lines
    }

    /// Opens the envelope with the device's key: the content key, which must be the one
    /// `keyCheck` (``ChunkCipher/keyCheck``, signed in the manifest) names.
    ///
    /// Whatever goes wrong once the device's recipient entry is found (a padding that does not
    /// decode, a key of another length, another key) gives one and the same error: a device
    /// that said which would be a decryption oracle for PKCS #1 v1.5 (Bleichenbacher).
    /// - Throws: `.bundleInvalid` (not an envelope; the device's entry does not open to the
    ///   signed key), `.notAddressed` (no entry for the device's certificate; without a
    ///   certificate, no entry opens to the signed key).
    public static func open(_ der: [UInt8], with key: DeviceKey, name: String, keyCheck: SHA256Digest)
        throws(FerryError) -> ChunkCipher
    {
        let cms = try parse(der, context: key.context, name: name)
        defer { CMS_ContentInfo_free(cms) }
        let infos = CMS_get0_RecipientInfos(cms)
        let recipientCount = COpenSSL_sk_CMS_RecipientInfo_num(infos)
        if let certificate = key.certificate {
            var addressed = false
            for index in 0..<recipientCount {
                let info = COpenSSL_sk_CMS_RecipientInfo_value(infos, index)
                switch CMS_RecipientInfo_type(info) {
                case CMS_RECIPINFO_TRANS:
                    addressed = addressed || CMS_RecipientInfo_ktri_cert_cmp(info, certificate) == 0
                case CMS_RECIPINFO_AGREE:
                    let keys = CMS_RecipientInfo_kari_get0_reks(info)
                    for keyIndex in 0..<COpenSSL_sk_CMS_RecipientEncryptedKey_num(keys) {
                        addressed =
                            addressed
                            || CMS_RecipientEncryptedKey_cert_cmp(
                                COpenSSL_sk_CMS_RecipientEncryptedKey_value(keys, keyIndex), certificate) == 0
                    }
                default: break
                }
            }
            guard addressed else {
                throw FerryError(
                    code: .notAddressed,
                    message:
                        "the bundle is encrypted, but not to this device: none of the \(recipientCount) recipients of \(name) is the device certificate \(key.certificateSubject ?? "")"
                )
            }
        }
        guard let output = BIO_new(BIO_s_mem()) else {
            throw FerryError(code: .internal, message: "OpenSSL could not allocate a buffer")
        }
        defer { BIO_free(output) }
        ERR_clear_error()
        // Without CMS_DEBUG_DECRYPT: OpenSSL's countermeasure for decryption oracles stays on
        // (an entry that does not decrypt goes on with a random key), and the key check decides.
        let decrypted = CMS_decrypt(cms, key.key, key.certificate, nil, output, UInt32(CMS_BINARY)) == 1
        ERR_clear_error()
        var contentKey = decrypted ? CMS.memoryContents(output) : []
        defer { for index in contentKey.indices { contentKey[index] = 0 } }
        if contentKey.count == ChunkCipher.keySize, let cipher = try? ChunkCipher(key: contentKey),
            cipher.keyCheck == keyCheck
        {
            return cipher
        }
        if key.certificate == nil {
            throw FerryError(
                code: .notAddressed,
                message:
                    "the bundle is encrypted, but not to this device: none of the \(recipientCount) recipients of \(name) opens with the device key '\(key.name)' to the content key the signed manifest names (or the envelope is corrupt; a deviceKey certificate tells them apart)"
            )
        }
        throw FerryError(
            code: .bundleInvalid,
            message:
                "\(name) is corrupt: the device's recipient entry does not open to the content key the signed manifest names"
        )
    }

    /// Parses a DER EnvelopedData, into the device key's library context when given.
    private static func parse(_ der: [UInt8], context: OpaquePointer?, name: String) throws(FerryError)
        -> OpaquePointer
    {
        guard der.count <= maximumSize else {
            throw FerryError(code: .limitExceeded, message: "\(name) is \(der.count) bytes, more than \(maximumSize)")
        }
        ERR_clear_error()
        var cms: OpaquePointer? = context.flatMap { CMS_ContentInfo_new_ex($0, nil) }
        let parsed: OpaquePointer? = CMS.memoryBIO(der).flatMap { bio in
            defer { BIO_free(bio) }
            return d2i_CMS_bio(bio, &cms)
        }
        guard let parsed else {
            if let cms { CMS_ContentInfo_free(cms) }
            throw FerryError(
                code: .bundleInvalid,
                message: "\(name) is corrupt: not a DER CMS structure (\(OpenSSLError.drain()))")
        }
        guard OBJ_obj2nid(CMS_get0_type(parsed)) == NID_pkcs7_enveloped else {
            CMS_ContentInfo_free(parsed)
            throw FerryError(code: .bundleInvalid, message: "\(name) is corrupt: not a CMS EnvelopedData")
        }
        return parsed
    }

    private static func identity(
        keyID: UnsafeMutablePointer<ASN1_OCTET_STRING>?, issuer: OpaquePointer?,
        serial: UnsafeMutablePointer<ASN1_INTEGER>?
    ) -> String {
        if let issuer, let serial {
            var text = "issuer \(Certificate.oneLine(issuer))"
            if let number = ASN1_INTEGER_to_BN(serial, nil) {
                if let hex = BN_bn2hex(number) {
                    text += " serial 0x\(String(cString: hex))"
                    CRYPTO_free(hex, #fileID, #line)
                }
                BN_free(number)
            }
            return text
        }
        if let keyID, let data = ASN1_STRING_get0_data(keyID) {
            let bytes = Array(UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(keyID))))
            return "subject key identifier \(bytes.map { String($0, radix: 16) }.joined(separator: ":"))"
        }
        return "unnamed"
    }
}
