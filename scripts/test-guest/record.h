/*
 * record.h — on-disk record layout shared by the guest workload
 * (workload.c) and the host-side checker (checker.c).
 *
 * The workload writes record N (N = 1, 2, 3, ...) at byte offset
 *     start_offset + (N - 1) * SNAPDUMP_RECORD_SIZE
 * of the raw disk, one O_DIRECT|O_SYNC write per record, in order, and
 * stops when the disk is full (no wrap-around).
 *
 * All integers are little-endian (both sides are x86-64).
 *
 *   offset size field
 *   0      8    magic        "SNAPDREC" (SNAPDUMP_RECORD_MAGIC)
 *   8      4    version      SNAPDUMP_RECORD_VERSION
 *   12     4    record_size  SNAPDUMP_RECORD_SIZE
 *   16     8    seq          sequence number, first record is 1
 *   24     8    boot_id      random per workload run
 *   32     8    mono_ns      guest CLOCK_MONOTONIC at write time
 *   40     8    real_ns      guest CLOCK_REALTIME at write time
 *   48     8    checksum     FNV-1a 64 over all SNAPDUMP_RECORD_SIZE bytes
 *                            with this field set to zero
 *   56     8    reserved     zero
 *   64   4032   payload      snapdump_payload_word(seq, i) for i = 0..503
 */
#ifndef SNAPDUMP_RECORD_H
#define SNAPDUMP_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SNAPDUMP_RECORD_SIZE 4096u
#define SNAPDUMP_RECORD_VERSION 1u
#define SNAPDUMP_RECORD_START_OFFSET (1024u * 1024u) /* 1 MiB */
/* "SNAPDREC" read as a little-endian u64 */
#define SNAPDUMP_RECORD_MAGIC 0x4345524450414e53ULL

#define SNAPDUMP_RECORD_HEADER_SIZE 64u
#define SNAPDUMP_PAYLOAD_WORDS \
    ((SNAPDUMP_RECORD_SIZE - SNAPDUMP_RECORD_HEADER_SIZE) / 8u)

struct snapdump_record {
    uint64_t magic;
    uint32_t version;
    uint32_t record_size;
    uint64_t seq;
    uint64_t boot_id;
    uint64_t mono_ns;
    uint64_t real_ns;
    uint64_t checksum;
    uint64_t reserved;
    uint64_t payload[SNAPDUMP_PAYLOAD_WORDS];
};

_Static_assert(sizeof(struct snapdump_record) == SNAPDUMP_RECORD_SIZE,
               "record must be exactly SNAPDUMP_RECORD_SIZE bytes");
_Static_assert(offsetof(struct snapdump_record, checksum) == 48,
               "checksum offset");
_Static_assert(offsetof(struct snapdump_record, payload) ==
                   SNAPDUMP_RECORD_HEADER_SIZE,
               "payload offset");

/* splitmix64 finaliser: a cheap, well-mixed function of its input. */
static inline uint64_t snapdump_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Payload word i of record seq: depends on seq only (not on boot_id). */
static inline uint64_t snapdump_payload_word(uint64_t seq, uint32_t i)
{
    return snapdump_mix64((seq << 10) ^ (uint64_t)i);
}

#define SNAPDUMP_FNV_OFFSET 0xcbf29ce484222325ULL
#define SNAPDUMP_FNV_PRIME 0x100000001b3ULL

/* FNV-1a 64 over the record with its checksum field taken as zero. */
static inline uint64_t snapdump_record_checksum(const void *rec)
{
    const unsigned char *p = (const unsigned char *)rec;
    uint64_t h = SNAPDUMP_FNV_OFFSET;
    for (size_t i = 0; i < SNAPDUMP_RECORD_SIZE; i++) {
        unsigned char c = p[i];
        if (i >= offsetof(struct snapdump_record, checksum) &&
            i < offsetof(struct snapdump_record, checksum) + 8)
            c = 0;
        h ^= c;
        h *= SNAPDUMP_FNV_PRIME;
    }
    return h;
}

/* Fill rec completely (header, payload, checksum). */
static inline void snapdump_record_fill(struct snapdump_record *rec,
                                        uint64_t seq, uint64_t boot_id,
                                        uint64_t mono_ns, uint64_t real_ns)
{
    memset(rec, 0, sizeof *rec);
    rec->magic = SNAPDUMP_RECORD_MAGIC;
    rec->version = SNAPDUMP_RECORD_VERSION;
    rec->record_size = SNAPDUMP_RECORD_SIZE;
    rec->seq = seq;
    rec->boot_id = boot_id;
    rec->mono_ns = mono_ns;
    rec->real_ns = real_ns;
    for (uint32_t i = 0; i < SNAPDUMP_PAYLOAD_WORDS; i++)
        rec->payload[i] = snapdump_payload_word(seq, i);
    rec->checksum = 0;
    rec->checksum = snapdump_record_checksum(rec);
}

#endif /* SNAPDUMP_RECORD_H */
