// CFerryShims: the one C target of Ferry.
//
// It exists only for what Swift cannot import on its own:
//  - ioctl request numbers built with the _IO*() macros ("macro unavailable" in Swift);
//  - O_DIRECT, fallocate() and syncfs(), which glibc declares only under _GNU_SOURCE;
//  - kernel structs from <linux/loop.h> and <linux/blkpg.h>, which import once included here.
// No logic, no allocation, no error handling: every function is a one-line forwarder.
// Only FerrySystem imports this module, with `internal import`.
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

#endif
