// OpenSSL (libcrypto, libssl) for FerryCrypto. Only FerryCrypto imports this module.
#ifndef C_OPENSSL_SHIM_H
#define C_OPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/cms.h>
#include <openssl/pem.h>
#endif
