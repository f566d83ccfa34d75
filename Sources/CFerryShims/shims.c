// See include/CFerryShims.h for why this file exists. One-line definitions and forwarders only.
#ifndef _GNU_SOURCE
#error "CFerryShims must be compiled with _GNU_SOURCE (Package.swift sets it)"
#endif
#include <fcntl.h>
#include <unistd.h>
#include <linux/falloc.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "CFerryShims.h"

const unsigned long CFerryShims_BLKGETSIZE64 = BLKGETSIZE64;
const unsigned long CFerryShims_BLKSSZGET = BLKSSZGET;
const unsigned long CFerryShims_BLKFLSBUF = BLKFLSBUF;
const unsigned long CFerryShims_BLKDISCARD = BLKDISCARD;
const unsigned long CFerryShims_BLKZEROOUT = BLKZEROOUT;
const unsigned long CFerryShims_BLKRRPART = BLKRRPART;
const unsigned long CFerryShims_BLKPG = BLKPG;

const unsigned long CFerryShims_LOOP_CTL_GET_FREE = LOOP_CTL_GET_FREE;
const unsigned long CFerryShims_LOOP_CONFIGURE = LOOP_CONFIGURE;
const unsigned long CFerryShims_LOOP_SET_FD = LOOP_SET_FD;
const unsigned long CFerryShims_LOOP_CLR_FD = LOOP_CLR_FD;
const unsigned long CFerryShims_LOOP_SET_STATUS64 = LOOP_SET_STATUS64;
const unsigned long CFerryShims_LOOP_GET_STATUS64 = LOOP_GET_STATUS64;

const unsigned long CFerryShims_MMC_IOC_CMD = MMC_IOC_CMD;

const int CFerryShims_O_DIRECT = O_DIRECT;
const int CFerryShims_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int CFerryShims_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int CFerryShims_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;

int CFerryShims_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
int CFerryShims_syncfs(int fd) { return syncfs(fd); }
int CFerryShims_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int CFerryShims_ioctl_pointer(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }
int CFerryShims_ioctl_value(int fd, unsigned long request, unsigned long argument) { return ioctl(fd, request, argument); }

const char *CFerryShims_build_date(void) { return __DATE__; }
const char *CFerryShims_build_time(void) { return __TIME__; }

int CFerryShims_tune_malloc(size_t threshold, size_t trim) {
#ifdef __GLIBC__
    return mallopt(M_MMAP_THRESHOLD, (int)threshold) && mallopt(M_TRIM_THRESHOLD, (int)trim);
#else
    (void)threshold;
    (void)trim;
    return 0;
#endif
}
