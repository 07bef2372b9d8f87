// Header-only: LLVMFuzzerRunDriver is defined by libFuzzer (-sanitize=fuzzer).
#include "CFuzzDriver.h"
