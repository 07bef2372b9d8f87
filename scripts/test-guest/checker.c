/*
 * checker.c — snapdump-record-check: host-side scan of a raw disk image
 * written by the test guest's workload (record.h).
 *
 *   snapdump-record-check IMAGE [--start-offset BYTES] [--boot-id HEX]
 *                               [--verbose]
 *
 * Prints key=value lines (see README.md) and exits 0 when the image is
 * crash-consistent, 1 when it is not, 2 on usage or I/O errors.
 *
 * Crash-consistent means: the records of the run (boot id) form a contiguous
 * valid prefix seq 1..last_contiguous, and no valid record of that run lies
 * after the first gap; no torn record (magic present, checksum/payload bad)
 * and no valid record in the wrong slot anywhere.  Valid records of another
 * boot id (left over from an earlier run on the same disk) are counted as
 * other_boot and do not make an image inconsistent.
 *
 * Holes in sparse images are skipped with SEEK_DATA/SEEK_HOLE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "record.h"

#define CHUNK (1024u * 1024u) /* must be a multiple of SNAPDUMP_RECORD_SIZE */
#define MAX_PROBLEMS_SHOWN 20

struct state {
    int verbose;
    int have_boot_id;
    uint64_t boot_id;
    int in_prefix;
    uint64_t last_contiguous;
    uint64_t last_mono_ns;
    uint64_t last_real_ns;
    uint64_t valid_after_gap;
    uint64_t torn;
    uint64_t out_of_order;
    uint64_t other_boot;
    uint64_t max_seq;
    uint64_t problems_shown;
};

static void problem(struct state *s, const char *kind, uint64_t slot,
                    uint64_t offset, uint64_t seq)
{
    if (!s->verbose)
        return;
    if (s->problems_shown++ >= MAX_PROBLEMS_SHOWN)
        return;
    fprintf(stderr,
            "problem kind=%s slot=%" PRIu64 " offset=%" PRIu64
            " seq=%" PRIu64 "\n",
            kind, slot, offset, seq);
}

/* 1 when the record's structure, payload and checksum are all right. */
static int record_valid(const struct snapdump_record *r)
{
    if (r->version != SNAPDUMP_RECORD_VERSION ||
        r->record_size != SNAPDUMP_RECORD_SIZE || r->seq == 0 ||
        r->reserved != 0)
        return 0;
    if (snapdump_record_checksum(r) != r->checksum)
        return 0;
    for (uint32_t i = 0; i < SNAPDUMP_PAYLOAD_WORDS; i++)
        if (r->payload[i] != snapdump_payload_word(r->seq, i))
            return 0;
    return 1;
}

/* Slot `slot` (which should hold seq slot+1) at image offset `offset`. */
static void check_slot(struct state *s, const struct snapdump_record *r,
                       uint64_t slot, uint64_t offset)
{
    if (r->magic != SNAPDUMP_RECORD_MAGIC) {
        s->in_prefix = 0; /* empty or foreign data: the (first) gap */
        return;
    }
    if (!record_valid(r)) {
        s->torn++;
        s->in_prefix = 0;
        problem(s, "torn", slot, offset, r->seq);
        return;
    }
    if (!s->have_boot_id) {
        s->have_boot_id = 1;
        s->boot_id = r->boot_id;
    }
    if (r->seq != slot + 1) {
        s->out_of_order++;
        s->in_prefix = 0;
        problem(s, "out_of_order", slot, offset, r->seq);
        return;
    }
    if (r->boot_id != s->boot_id) {
        s->other_boot++;
        s->in_prefix = 0;
        return;
    }
    if (r->seq > s->max_seq)
        s->max_seq = r->seq;
    if (s->in_prefix) {
        s->last_contiguous = r->seq;
        s->last_mono_ns = r->mono_ns;
        s->last_real_ns = r->real_ns;
    } else {
        s->valid_after_gap++;
        problem(s, "valid_after_gap", slot, offset, r->seq);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: snapdump-record-check IMAGE [--start-offset BYTES]"
                    " [--boot-id HEX] [--verbose]\n");
    exit(2);
}

static int parse_u64(const char *str, uint64_t *out, int base)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(str, &end, base);
    if (errno || end == str || *end != '\0' || str[0] == '-')
        return -1;
    *out = v;
    return 0;
}

/* Read exactly len bytes at off; 0 on success, -1 with errno on failure. */
static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO; /* image shrank under us */
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *image = NULL;
    uint64_t start = SNAPDUMP_RECORD_START_OFFSET;
    struct state s;
    memset(&s, 0, sizeof s);
    s.in_prefix = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--start-offset") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &start, 0) ||
                start % SNAPDUMP_RECORD_SIZE) {
                fprintf(stderr, "snapdump-record-check: --start-offset must be "
                                "a number of bytes, multiple of %u\n",
                        SNAPDUMP_RECORD_SIZE);
                exit(2);
            }
        } else if (strcmp(a, "--boot-id") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &s.boot_id, 16))
                usage();
            s.have_boot_id = 1;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            s.verbose = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
        } else if (a[0] == '-' && a[1] != '\0') {
            usage();
        } else if (image) {
            usage();
        } else {
            image = a;
        }
    }
    if (!image)
        usage();

    int fd = open(image, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "snapdump-record-check: %s: %s\n", image,
                strerror(errno));
        return 2;
    }
    off_t end_off = lseek(fd, 0, SEEK_END); /* works for block devices too */
    if (end_off < 0) {
        fprintf(stderr, "snapdump-record-check: %s: cannot get size: %s\n",
                image, strerror(errno));
        return 2;
    }
    uint64_t size = (uint64_t)end_off;

    unsigned char head[4] = {0};
    if (size >= 4 && read_full(fd, head, 4, 0) == 0 &&
        memcmp(head, "QFI\xfb", 4) == 0) {
        fprintf(stderr,
                "snapdump-record-check: %s: is a qcow2 image, not raw "
                "(convert it with qemu-img convert -O raw first)\n",
                image);
        return 2;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

    uint64_t slots =
        size > start ? (size - start) / SNAPDUMP_RECORD_SIZE : 0;
    uint64_t end = start + slots * SNAPDUMP_RECORD_SIZE;

    struct snapdump_record *buf;
    if (posix_memalign((void **)&buf, 4096, CHUNK) != 0) {
        fprintf(stderr, "snapdump-record-check: out of memory\n");
        return 2;
    }

    int use_seek_data = 1;
    uint64_t pos = start; /* next slot boundary not yet examined */
    while (pos < end) {
        uint64_t data_from = pos, data_to = end;
        if (use_seek_data) {
            off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
            if (d < 0 && errno == ENXIO) {
                data_from = end; /* only a hole remains */
            } else if (d < 0) {
                use_seek_data = 0; /* not supported: read everything */
            } else {
                off_t h = lseek(fd, d, SEEK_HOLE);
                data_from = (uint64_t)d;
                if (h > d)
                    data_to = (uint64_t)h;
                /* widen to whole slots */
                data_from = start + (data_from - start) / SNAPDUMP_RECORD_SIZE *
                                        SNAPDUMP_RECORD_SIZE;
                if (data_to < end)
                    data_to = start + (data_to - start + SNAPDUMP_RECORD_SIZE -
                                       1) / SNAPDUMP_RECORD_SIZE *
                                          SNAPDUMP_RECORD_SIZE;
                if (data_to > end)
                    data_to = end;
                if (data_from < pos)
                    data_from = pos;
            }
        }
        if (data_from > pos)
            s.in_prefix = 0; /* a hole of at least one empty slot */
        if (data_from >= end)
            break;
        for (uint64_t off = data_from; off < data_to;) {
            size_t len = CHUNK;
            if ((uint64_t)len > data_to - off)
                len = (size_t)(data_to - off);
            if (read_full(fd, buf, len, off) != 0) {
                fprintf(stderr,
                        "snapdump-record-check: %s: read at %" PRIu64 ": %s\n",
                        image, off, strerror(errno));
                return 2;
            }
            size_t n = len / SNAPDUMP_RECORD_SIZE;
            for (size_t k = 0; k < n; k++) {
                uint64_t o = off + (uint64_t)k * SNAPDUMP_RECORD_SIZE;
                check_slot(&s, &buf[k], (o - start) / SNAPDUMP_RECORD_SIZE, o);
            }
            off += len;
        }
        pos = data_to;
    }
    close(fd);

    int consistent = s.torn == 0 && s.out_of_order == 0 &&
                     s.valid_after_gap == 0;
    printf("image=%s\n", image);
    printf("size=%" PRIu64 "\n", size);
    printf("start_offset=%" PRIu64 "\n", start);
    printf("record_size=%u\n", SNAPDUMP_RECORD_SIZE);
    printf("slots=%" PRIu64 "\n", slots);
    if (s.have_boot_id)
        printf("boot_id=%016" PRIx64 "\n", s.boot_id);
    else
        printf("boot_id=none\n");
    printf("last_contiguous=%" PRIu64 "\n", s.last_contiguous);
    printf("last_mono_ns=%" PRIu64 "\n", s.last_mono_ns);
    printf("last_real_ns=%" PRIu64 "\n", s.last_real_ns);
    printf("max_seq=%" PRIu64 "\n", s.max_seq);
    printf("valid_after_gap=%" PRIu64 "\n", s.valid_after_gap);
    printf("torn=%" PRIu64 "\n", s.torn);
    printf("out_of_order=%" PRIu64 "\n", s.out_of_order);
    printf("other_boot=%" PRIu64 "\n", s.other_boot);
    printf("status=%s\n", consistent ? "consistent" : "inconsistent");
    if (fflush(stdout) != 0)
        return 2;
    return consistent ? 0 : 1;
}
