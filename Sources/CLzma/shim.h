// liblzma for FerryXZ. Only FerryXZ imports this module.
// LZMA_CONCATENATED and friends are UINT32_C() macros that Swift does not import.
#ifndef C_LZMA_SHIM_H
#define C_LZMA_SHIM_H
#include <lzma.h>
static const uint32_t CLzma_CONCATENATED = LZMA_CONCATENATED;
static const uint32_t CLzma_IGNORE_CHECK = LZMA_IGNORE_CHECK;

// Used by XZChunkCodec to build an LZMA2 filter chain: these are UINT32_C()/UINT64_C() macros too.
static const uint32_t CLzma_PRESET_EXTREME = LZMA_PRESET_EXTREME;
static const uint32_t CLzma_DICT_SIZE_MIN = LZMA_DICT_SIZE_MIN;
static const lzma_vli CLzma_FILTER_LZMA2 = LZMA_FILTER_LZMA2;
static const lzma_vli CLzma_VLI_UNKNOWN = LZMA_VLI_UNKNOWN;

// LZMA_STREAM_INIT is an initializer-list macro, which Swift does not import.
static inline lzma_stream CLzma_stream_init(void) { lzma_stream stream = LZMA_STREAM_INIT; return stream; }
#endif
