// CRC-32 (IEEE 802.3, reflected, zlib's crc32) by carry-less multiplication.
//
// Method: V. Gopal, E. Ozturk, J. Guilford, G. Wolrich, W. Feghali, M. Dixon,
// D. Karakoyunlu, "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
// Instruction", Intel white paper 323102, December 2009 — the reflected-domain
// folding of its sections 3 and 4. Debian's zlib computes CRCs a table lookup
// per byte (braided); the data blob of every chunk a backup writes is CRC'd
// whole, so this is on the incremental backup's critical path.
//
// Folding keeps the message congruent modulo P(x): a 128-bit block A = H·x^64 + L
// (H its lower 64 bits, which hold the higher-degree coefficients in reflected
// order) moved D bits forward is A·x^D ≡ H·(x^(D+64) mod P) + L·(x^D mod P), and
// each product is at most 127 bits wide, so it is added (XOR) to the block D bits
// later. The two constants per distance are x^(D+32) mod P and x^(D-32) mod P,
// bit-reflected and shifted left by one (the ·x^32 makes the products land
// aligned to the 128-bit block; the shift undoes the one-bit offset of a
// reflected carry-less product). Derived for P = 0x104C11DB7:
//   D = 512 (four blocks in flight): x^544 → 0x154442bd4, x^480 → 0x1c6e41596
//   D = 128 (one block):             x^160 → 0x1751997d0, x^96  → 0x0ccaa009e
// The last 128-bit remainder is not Barrett-reduced here: it is a 16-byte
// message with the same CRC register as the whole folded part, so zlib's crc32
// finishes it (and the tail of fewer than 16 bytes) in a few nanoseconds.
#include "CShims.h"
#include <zlib.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("pclmul,sse2")))
static inline __m128i fold(__m128i x, __m128i k, __m128i next) {
    __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

// len >= 64.
__attribute__((target("pclmul,sse2")))
static uint32_t crc32_fold(uint32_t crc, const unsigned char *p, size_t len) {
    // zlib's crc32(crc, M) is the register-0 CRC of M with ~crc added to its
    // first four bytes: put it there, and fold from a zero register.
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)~crc));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    p += 64;
    len -= 64;
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
    while (len >= 64) {
        x0 = fold(x0, k512, _mm_loadu_si128((const __m128i *)p));
        x1 = fold(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = fold(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = fold(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        len -= 64;
    }
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
    x0 = fold(x0, k128, x1);
    x0 = fold(x0, k128, x2);
    x0 = fold(x0, k128, x3);
    while (len >= 16) {
        x0 = fold(x0, k128, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        len -= 16;
    }
    unsigned char rest[16];
    _mm_storeu_si128((__m128i *)rest, x0);
    // crc32(0xffffffff, …) starts from register 0, as the fold did.
    uLong c = crc32(0xffffffffUL, rest, 16);
    return (uint32_t)crc32(c, p, (uInt)len);
}

// 0 unknown, 1 carry-less multiply available, 2 not.
static int pclmul_state;

int snapdump_crc32_folds(void) {
    int s = __atomic_load_n(&pclmul_state, __ATOMIC_RELAXED);
    if (s == 0) {
        unsigned a, b, c, d;
        // CPUID leaf 1: ECX bit 1 is PCLMULQDQ (SSE2 is part of x86-64).
        s = (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL)) ? 1 : 2;
        __atomic_store_n(&pclmul_state, s, __ATOMIC_RELAXED);
    }
    return s == 1;
}
#else
int snapdump_crc32_folds(void) { return 0; }
#endif

uint32_t snapdump_crc32(uint32_t crc, const void *buffer, size_t length) {
    const unsigned char *p = buffer;
#if defined(__x86_64__)
    if (length >= 64 && snapdump_crc32_folds()) {
        return crc32_fold(crc, p, length);
    }
#endif
    uLong c = crc;
    while (length > 0) {
        uInt n = length > 0x40000000u ? 0x40000000u : (uInt)length;
        c = crc32(c, p, n);
        p += n;
        length -= n;
    }
    return (uint32_t)c;
}
