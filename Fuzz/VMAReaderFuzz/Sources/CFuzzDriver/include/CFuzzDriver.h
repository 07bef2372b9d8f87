// libFuzzer's driver, for executables whose `main` is not libFuzzer's
// (SwiftPM links an executable's main as <module>_main).
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
