// CFerryShims: the one C target of Ferry.
//
// It exists only for what Swift cannot import on its own:
//  - ioctl request numbers built with the _IO*() macros ("macro unavailable" in Swift);
//  - O_DIRECT, fallocate() and syncfs(), which glibc declares only under _GNU_SOURCE;
//  - kernel structs from <linux/loop.h>, <linux/blkpg.h> and <linux/mmc/ioctl.h>, which import
//    once included here.
// Everything here is a one-line forwarder, with one exception: the TLS pin check (tls.c), which
// must run inside OpenSSL's certificate verification as a C callback. FerrySystem imports this
// module for the system calls, FerryNet for the pin check; both with `internal import`.
#ifndef C_FERRY_SHIMS_H
#define C_FERRY_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/blkpg.h>
#include <linux/mmc/ioctl.h>

// Block device ioctls (linux/fs.h, _IO/_IOR macros).
extern const unsigned long CFerryShims_BLKGETSIZE64;
extern const unsigned long CFerryShims_BLKSSZGET;
extern const unsigned long CFerryShims_BLKFLSBUF;
extern const unsigned long CFerryShims_BLKDISCARD;
extern const unsigned long CFerryShims_BLKZEROOUT;
extern const unsigned long CFerryShims_BLKRRPART;
extern const unsigned long CFerryShims_BLKPG;

// Loop device ioctls (linux/loop.h). Plain numbers, re-exported so callers use one spelling.
extern const unsigned long CFerryShims_LOOP_CTL_GET_FREE;
extern const unsigned long CFerryShims_LOOP_CONFIGURE;
extern const unsigned long CFerryShims_LOOP_SET_FD;
extern const unsigned long CFerryShims_LOOP_CLR_FD;
extern const unsigned long CFerryShims_LOOP_SET_STATUS64;
extern const unsigned long CFerryShims_LOOP_GET_STATUS64;

// MMC_IOC_CMD (linux/mmc/ioctl.h): one command to an eMMC through its block device
// (struct mmc_ioc_cmd), for the EXT_CSD register (emmc-boot bootloader updates).
extern const unsigned long CFerryShims_MMC_IOC_CMD;

// Only visible with _GNU_SOURCE, which the Swift importer never sees.
extern const int CFerryShims_O_DIRECT;
extern const int CFerryShims_FALLOC_FL_KEEP_SIZE;
extern const int CFerryShims_FALLOC_FL_PUNCH_HOLE;
extern const int CFerryShims_FALLOC_FL_ZERO_RANGE;
int CFerryShims_fallocate(int fd, int mode, int64_t offset, int64_t length);
int CFerryShims_syncfs(int fd);
int CFerryShims_pipe2(int fds[2], int flags);

// When this file was compiled ("Nov 25 2026", "14:20:00"): a floor for the trusted time.
const char *CFerryShims_build_date(void);
const char *CFerryShims_build_time(void);

// ioctl(2) is variadic in C; these forwarders give Swift one typed signature per argument kind.
int CFerryShims_ioctl_pointer(int fd, unsigned long request, void *argument);
int CFerryShims_ioctl_value(int fd, unsigned long request, unsigned long argument);

// MARK: - TLS pin check (tls.c)
//
// FerryNet hands CFerryShims_tls_setup to libcurl as its CURLOPT_SSL_CTX_FUNCTION with a policy
// as CURLOPT_SSL_CTX_DATA. For every connection it sets TLS 1.2 as the minimum and TLS 1.3 as the
// maximum protocol version on the SSL_CTX (overriding any OpenSSL configuration file), requires a
// server certificate, and installs a certificate verification callback that:
//  - records the SHA-256 of the leaf certificate (DER) and of its SubjectPublicKeyInfo (DER);
//  - when verify_chain is set, verifies the chain against the trust store first;
//  - accepts the handshake only if a certificate pin or a public-key pin matches (or record_only).
// The outcome fields say why a handshake was refused.
enum {
    CFerryShims_TLS_PENDING = 0,
    CFerryShims_TLS_ACCEPTED = 1,
    CFerryShims_TLS_PIN_MISMATCH = 2,
    CFerryShims_TLS_CHAIN_INVALID = 3,
    CFerryShims_TLS_NO_CERTIFICATE = 4,
    CFerryShims_TLS_PROTOCOL_REFUSED = 5,
    CFerryShims_TLS_INTERNAL = 6,
};

typedef struct {
    // In: pins as consecutive 32-byte SHA-256 values.
    const uint8_t *certificate_pins;
    size_t certificate_pin_count;
    const uint8_t *public_key_pins;
    size_t public_key_pin_count;
    int verify_chain;
    int record_only;
    // Out: what the last verification saw and decided.
    int outcome;
    int chain_error;
    int connections;
    uint8_t presented_certificate[32];
    uint8_t presented_public_key[32];
    char protocol[16];
    char subject[256];
    char issuer[256];
    char not_before[32];
    char not_after[32];
} CFerryShims_TLSPolicy;

/// Makes glibc's malloc return every large block (at least `threshold` bytes) to the kernel when
/// it is freed, and trim the heap above `trim` bytes: glibc otherwise raises both thresholds after
/// the first large free, keeping freed buffers resident (a device's memory budget is peak RSS).
/// Returns 0 where the C library is not glibc (nothing to tune).
int CFerryShims_tune_malloc(size_t threshold, size_t trim);

/// The CURLOPT_SSL_CTX_FUNCTION: (CURL *, SSL_CTX *, CFerryShims_TLSPolicy *) -> CURLcode.
int CFerryShims_tls_setup(void *curl, void *ssl_ctx, void *policy);
/// OpenSSL's text for an X509_V_ERR_* code.
const char *CFerryShims_tls_chain_error_string(int error);

#endif
