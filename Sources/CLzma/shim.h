// liblzma for FerryXZ. Only FerryXZ imports this module.
// LZMA_CONCATENATED and friends are UINT32_C() macros that Swift does not import.
#ifndef C_LZMA_SHIM_H
#define C_LZMA_SHIM_H
#include <lzma.h>
static const uint32_t CLzma_CONCATENATED = LZMA_CONCATENATED;
#endif
