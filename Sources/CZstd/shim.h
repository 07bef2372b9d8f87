// The static-only API (ZSTD_decompressBound, frame parameters) is exported by the
// shared libzstd 1.5 too; restore sizes its frame buffers with it.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>
