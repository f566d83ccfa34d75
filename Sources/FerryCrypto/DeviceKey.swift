internal import COpenSSL
import FerrySystem

/// The device's private key for opening encrypted bundles (docs/encryption.md), loaded through
/// OpenSSL's store interface (`OSSL_STORE`) by URI: a PEM file's path, or a URI of a key that an
/// OpenSSL provider holds (`handle:0x81000001` of the TPM provider `tpm2`, `pkcs11:…` of a PKCS #11
/// provider). A provider's key never leaves it: Ferry holds a reference, and the provider does the
/// decryption of the content key's envelope.
///
/// Providers are loaded into a library context of the key's own, with OpenSSL's default
/// provider beside them: the rest of Ferry (hashing, TLS, the chunk cipher) never runs on them.
public final class DeviceKey {
    /// Where the key came from (for messages).
    public let name: String
    let context: OpaquePointer
    let key: OpaquePointer
    /// The device's certificate (its recipient entry in an envelope), when configured.
    let certificate: OpaquePointer?
    /// Its subject, for messages.
    public let certificateSubject: String?

    /// Loads the key at `uri`.
    /// - Parameters:
    ///   - providers: OpenSSL providers to load first (for example `tpm2`); the default provider is always loaded.
    ///   - opensslConfig: an OpenSSL configuration file to load into the key's context first
    ///     (a provider's own settings, such as a PKCS #11 module).
    ///   - certificatePath: the device certificate (PEM): it must hold the key's public half.
    /// - Throws: `.deviceKeyInvalid` naming what failed.
    public init(uri: String, certificatePath: String?, providers: [String], opensslConfig: String?)
        throws(FerryError)
    {
        name = uri
        func fail(_ what: String) -> FerryError {
            FerryError(code: .deviceKeyInvalid, message: "device key '\(uri)': \(what)")
        }
        ERR_clear_error()
        guard let context = OSSL_LIB_CTX_new() else { throw fail("OpenSSL could not allocate a library context") }
        var loadedKey: OpaquePointer? = nil
        var loadedCertificate: OpaquePointer? = nil
        var success = false
        defer {
            if !success {
                EVP_PKEY_free(loadedKey)
                X509_free(loadedCertificate)
                OSSL_LIB_CTX_free(context)
            }
        }
        if let opensslConfig, OSSL_LIB_CTX_load_config(context, opensslConfig) != 1 {
            throw fail("cannot load the OpenSSL configuration '\(opensslConfig)': \(OpenSSLError.drain())")
        }
        // In this order, the configured ones first: asking whether one is available first, or
        // loading the default one first, makes OpenSSL 3.0 decode a provider's key into a
        // built-in key without its private half.
        for provider in providers + ["default"] {
            guard OSSL_PROVIDER_load(context, provider) != nil else {
                throw fail("cannot load the OpenSSL provider '\(provider)': \(OpenSSLError.drain())")
            }
        }
        guard let store = OSSL_STORE_open_ex(uri, context, nil, nil, nil, nil, nil, nil) else {
            throw fail("cannot open it: \(OpenSSLError.drain())")
        }
        defer { OSSL_STORE_close(store) }
        // (No OSSL_STORE_expect: with it, OpenSSL 3.0 decodes a provider's key into a built-in
        // key holding only the public half.)
        while loadedKey == nil, OSSL_STORE_eof(store) == 0 {
            guard let info = OSSL_STORE_load(store) else {
                if OSSL_STORE_error(store) != 0 { break }
                continue
            }
            if OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY { loadedKey = OSSL_STORE_INFO_get1_PKEY(info) }
            OSSL_STORE_INFO_free(info)
        }
        guard let key = loadedKey else { throw fail("it holds no private key (\(OpenSSLError.drain()))") }
        if let certificatePath {
            guard let bio = BIO_new_file(certificatePath, "r") else {
                throw fail("cannot open the device certificate '\(certificatePath)': \(OpenSSLError.drain())")
            }
            defer { BIO_free(bio) }
            guard let x509 = PEM_read_bio_X509(bio, nil, nil, nil) else {
                throw fail("'\(certificatePath)' holds no PEM certificate")
            }
            loadedCertificate = x509
            guard X509_check_private_key(x509, key) == 1 else {
                ERR_clear_error()
                throw fail("it is not the key of the device certificate '\(certificatePath)'")
            }
        }
        self.context = context
        self.key = key
        self.certificate = loadedCertificate
        certificateSubject = loadedCertificate.map { Certificate.oneLine(X509_get_subject_name($0)) }
        success = true
    }

    deinit {
        X509_free(certificate)
        EVP_PKEY_free(key)
        OSSL_LIB_CTX_free(context)
    }
}
