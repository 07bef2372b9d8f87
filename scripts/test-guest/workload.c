/*
 * workload.c — the test guest's workload (built with gcc -static -O2).
 *
 *   workload DEVICE [--interval-ms N] [--start-offset BYTES]
 *                   [--max-records N] [--boot-id HEX]
 *
 * Writes records (record.h) sequentially to the raw block device DEVICE with
 * O_DIRECT|O_SYNC, one record every N ms (default 10, 0 = as fast as
 * possible), record 1 at --start-offset (default 1 MiB).  After each write
 * has completed it prints "HB <seq>" to stdout (the guest's console), so a
 * heartbeat for seq N means record N was durable as far as the guest knows.
 *
 * Stops when the disk is full (no wrap-around), after --max-records, or on
 * SIGTERM/SIGINT (the record being written is finished first).  Lines:
 *   WORKLOAD START dev=... boot_id=<16 hex> size=... start_offset=...
 *                  capacity=<records> interval_ms=...
 *   HB <seq>
 *   WORKLOAD FULL last_seq=<n>     disk (or --max-records) exhausted
 *   WORKLOAD STOP last_seq=<n>     SIGTERM/SIGINT
 *   WORKLOAD ERROR seq=<n> ...     write error; exit status 1
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "record.h"

#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004
#endif

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Print one line to stdout with a single write(2) (no stdio buffering). */
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t random_boot_id(void)
{
    uint64_t v = 0;
    /* Never block on an early-boot entropy pool: GRND_INSECURE (5.6+),
     * else GRND_NONBLOCK, else whatever the clocks give. */
    if (getrandom(&v, sizeof v, GRND_INSECURE) != (ssize_t)sizeof v &&
        getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v)
        v = 0;
    v ^= snapdump_mix64(now_ns(CLOCK_REALTIME) ^
                        (now_ns(CLOCK_MONOTONIC) << 17) ^ (uint64_t)getpid());
    return v ? v : 1;
}

static int parse_u64(const char *s, uint64_t *out, int base)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || end == s || *end != '\0' || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: workload DEVICE [--interval-ms N] [--start-offset BYTES]"
            " [--max-records N] [--boot-id HEX]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *dev = NULL;
    uint64_t interval_ms = 10;
    uint64_t start_offset = SNAPDUMP_RECORD_START_OFFSET;
    uint64_t max_records = 0;
    uint64_t boot_id = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--interval-ms") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &interval_ms, 10) || interval_ms > 3600000)
                usage();
        } else if (strcmp(a, "--start-offset") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &start_offset, 0) ||
                start_offset % SNAPDUMP_RECORD_SIZE)
                usage();
        } else if (strcmp(a, "--max-records") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &max_records, 10))
                usage();
        } else if (strcmp(a, "--boot-id") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &boot_id, 16))
                usage();
        } else if (a[0] == '-' || dev) {
            usage();
        } else {
            dev = a;
        }
    }
    if (!dev)
        usage();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: interrupt the sleep */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int fd = open(dev, O_WRONLY | O_DIRECT | O_SYNC | O_CLOEXEC);
    if (fd < 0) {
        say("WORKLOAD ERROR seq=0 open %s: %s", dev, strerror(errno));
        return 1;
    }

    uint64_t size = 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
            say("WORKLOAD ERROR seq=0 BLKGETSIZE64 %s: %s", dev,
                strerror(errno));
            return 1;
        }
    } else {
        off_t end = lseek(fd, 0, SEEK_END);
        size = end > 0 ? (uint64_t)end : 0;
    }
    uint64_t capacity =
        size > start_offset ? (size - start_offset) / SNAPDUMP_RECORD_SIZE : 0;
    if (max_records && max_records < capacity)
        capacity = max_records;

    if (!boot_id)
        boot_id = random_boot_id();

    struct snapdump_record *rec;
    if (posix_memalign((void **)&rec, 4096, sizeof *rec) != 0) {
        say("WORKLOAD ERROR seq=0 out of memory");
        return 1;
    }

    say("WORKLOAD START dev=%s boot_id=%016" PRIx64 " size=%" PRIu64
        " start_offset=%" PRIu64 " capacity=%" PRIu64 " interval_ms=%" PRIu64,
        dev, boot_id, size, start_offset, capacity, interval_ms);

    const uint64_t interval_ns = interval_ms * 1000000ull;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    uint64_t last = 0;

    for (uint64_t seq = 1; seq <= capacity; seq++) {
        if (stop_requested)
            break;
        snapdump_record_fill(rec, seq, boot_id, now_ns(CLOCK_MONOTONIC),
                             now_ns(CLOCK_REALTIME));
        off_t off = (off_t)(start_offset + (seq - 1) * SNAPDUMP_RECORD_SIZE);
        ssize_t w;
        do {
            w = pwrite(fd, rec, SNAPDUMP_RECORD_SIZE, off);
        } while (w < 0 && errno == EINTR);
        if (w != (ssize_t)SNAPDUMP_RECORD_SIZE) {
            if (w >= 0 || errno == ENOSPC) {
                capacity = last; /* treat as full */
                break;
            }
            say("WORKLOAD ERROR seq=%" PRIu64 " write offset %lld: %s", seq,
                (long long)off, strerror(errno));
            return 1;
        }
        last = seq;
        say("HB %" PRIu64, seq);

        if (interval_ns && seq < capacity && !stop_requested) {
            /* Fixed schedule; after falling behind (e.g. the VM was paused)
             * restart the schedule from now rather than bursting. */
            uint64_t target = (uint64_t)next.tv_sec * 1000000000ull +
                              (uint64_t)next.tv_nsec + interval_ns;
            uint64_t now = now_ns(CLOCK_MONOTONIC);
            if (target < now)
                target = now;
            next.tv_sec = (time_t)(target / 1000000000ull);
            next.tv_nsec = (long)(target % 1000000000ull);
            while (!stop_requested &&
                   clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next,
                                   NULL) == EINTR)
                ;
        }
    }

    if (stop_requested)
        say("WORKLOAD STOP last_seq=%" PRIu64, last);
    else
        say("WORKLOAD FULL last_seq=%" PRIu64, last);
    close(fd);
    return 0;
}
