// OpenSSL (libcrypto, libssl) for FerryCrypto. Only FerryCrypto imports this module.
// The stack and BIO helpers below are macros in OpenSSL's headers, which Swift cannot call:
// one-line typed forwarders, nothing else.
#ifndef C_OPENSSL_SHIM_H
#define C_OPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/provider.h>
#include <openssl/crypto.h>
#include <openssl/bn.h>
#include <openssl/objects.h>

static inline int COpenSSL_sk_X509_num(const STACK_OF(X509) *stack) { return sk_X509_num(stack); }
static inline X509 *COpenSSL_sk_X509_value(const STACK_OF(X509) *stack, int index) { return sk_X509_value(stack, index); }
static inline void COpenSSL_sk_X509_free(STACK_OF(X509) *stack) { sk_X509_free(stack); }
static inline long COpenSSL_BIO_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }
static inline int COpenSSL_sk_CMS_SignerInfo_num(STACK_OF(CMS_SignerInfo) *stack) { return sk_CMS_SignerInfo_num(stack); }
static inline int COpenSSL_sk_CMS_RecipientInfo_num(STACK_OF(CMS_RecipientInfo) *stack) { return sk_CMS_RecipientInfo_num(stack); }
static inline CMS_RecipientInfo *COpenSSL_sk_CMS_RecipientInfo_value(STACK_OF(CMS_RecipientInfo) *stack, int index) { return sk_CMS_RecipientInfo_value(stack, index); }
static inline STACK_OF(X509) *COpenSSL_sk_X509_new_null(void) { return sk_X509_new_null(); }
static inline int COpenSSL_sk_X509_push(STACK_OF(X509) *stack, X509 *x509) { return sk_X509_push(stack, x509); }
static inline void COpenSSL_sk_X509_pop_free(STACK_OF(X509) *stack) { sk_X509_pop_free(stack, X509_free); }
static inline int COpenSSL_sk_CMS_RecipientEncryptedKey_num(STACK_OF(CMS_RecipientEncryptedKey) *stack) { return sk_CMS_RecipientEncryptedKey_num(stack); }
static inline CMS_RecipientEncryptedKey *COpenSSL_sk_CMS_RecipientEncryptedKey_value(STACK_OF(CMS_RecipientEncryptedKey) *stack, int index) { return sk_CMS_RecipientEncryptedKey_value(stack, index); }
#endif
