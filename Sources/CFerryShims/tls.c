// The TLS pin check: see CFerryShims_tls_setup in include/CFerryShims.h.
// It runs inside OpenSSL's handshake, so a server that fails it never receives an HTTP request.
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include "CFerryShims.h"

// CURLE_OK and CURLE_SSL_CONNECT_ERROR; curl's headers are not needed for two numbers.
enum { FERRY_CURLE_OK = 0, FERRY_CURLE_SSL_CONNECT_ERROR = 35 };

static void ferry_tls_time(const ASN1_TIME *time, char *out, size_t size) {
    struct tm tm;
    out[0] = 0;
    if (time && ASN1_TIME_to_tm(time, &tm) == 1) {
        strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
}

static int ferry_tls_sha256_spki(X509 *leaf, uint8_t out[32]) {
    unsigned char *der = NULL;
    int length = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf), &der);
    if (length <= 0) return 0;
    unsigned int size = 0;
    int ok = EVP_Digest(der, (size_t)length, out, &size, EVP_sha256(), NULL) == 1 && size == 32;
    OPENSSL_free(der);
    return ok;
}

static int ferry_tls_matches(const uint8_t *pins, size_t count, const uint8_t value[32]) {
    for (size_t index = 0; index < count; index++) {
        if (CRYPTO_memcmp(pins + 32 * index, value, 32) == 0) return 1;
    }
    return 0;
}

static int ferry_tls_verify(X509_STORE_CTX *store, void *argument) {
    CFerryShims_TLSPolicy *policy = argument;
    policy->connections += 1;
    policy->outcome = CFerryShims_TLS_INTERNAL;
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (ssl) {
        snprintf(policy->protocol, sizeof policy->protocol, "%s", SSL_get_version(ssl));
        // Defence in depth: the SSL_CTX minimum already refuses older protocols.
        if (SSL_version(ssl) < TLS1_2_VERSION) {
            policy->outcome = CFerryShims_TLS_PROTOCOL_REFUSED;
            X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
            return 0;
        }
    }
    X509 *leaf = X509_STORE_CTX_get0_cert(store);
    if (!leaf) {
        policy->outcome = CFerryShims_TLS_NO_CERTIFICATE;
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    unsigned int size = 0;
    if (X509_digest(leaf, EVP_sha256(), policy->presented_certificate, &size) != 1 || size != 32
        || !ferry_tls_sha256_spki(leaf, policy->presented_public_key)) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    X509_NAME_oneline(X509_get_subject_name(leaf), policy->subject, sizeof policy->subject);
    X509_NAME_oneline(X509_get_issuer_name(leaf), policy->issuer, sizeof policy->issuer);
    ferry_tls_time(X509_get0_notBefore(leaf), policy->not_before, sizeof policy->not_before);
    ferry_tls_time(X509_get0_notAfter(leaf), policy->not_after, sizeof policy->not_after);

    if (policy->verify_chain && X509_verify_cert(store) != 1) {
        policy->outcome = CFerryShims_TLS_CHAIN_INVALID;
        policy->chain_error = X509_STORE_CTX_get_error(store);
        return 0;
    }
    if (policy->record_only
        || ferry_tls_matches(policy->certificate_pins, policy->certificate_pin_count, policy->presented_certificate)
        || ferry_tls_matches(policy->public_key_pins, policy->public_key_pin_count, policy->presented_public_key)) {
        policy->outcome = CFerryShims_TLS_ACCEPTED;
        X509_STORE_CTX_set_error(store, X509_V_OK);
        return 1;
    }
    policy->outcome = CFerryShims_TLS_PIN_MISMATCH;
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

int CFerryShims_tls_setup(void *curl, void *ssl_ctx, void *policy) {
    (void)curl;
    SSL_CTX *context = ssl_ctx;
    if (SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) != 1
        || SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) != 1) {
        return FERRY_CURLE_SSL_CONNECT_ERROR;
    }
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(context, ferry_tls_verify, policy);
    return FERRY_CURLE_OK;
}

const char *CFerryShims_tls_chain_error_string(int error) {
    return X509_verify_cert_error_string(error);
}
