// libFuzzer's driver, declared for Swift (it lives in the toolchain's libclang_rt.fuzzer, which
// -sanitize=fuzzer links). ferry-fuzz defines its own entry point (SwiftPM names an executable's
// entry point itself) and hands over to this driver; nothing else may call it.
#pragma once
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
