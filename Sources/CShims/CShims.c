#define _GNU_SOURCE
#include "CShims.h"
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/fiemap.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <sys/mman.h>
#include <errno.h>
#include <malloc.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

int snapdump_ficlone(int dst_fd, int src_fd) {
    return ioctl(dst_fd, FICLONE, src_fd);
}

int snapdump_blkgetsize64(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size);
}

int snapdump_fiemap_shared(int fd, uint64_t *bytes, uint64_t *shared_bytes) {
    enum { batch = 256 };
    size_t len = sizeof(struct fiemap) + batch * sizeof(struct fiemap_extent);
    struct fiemap *fm = calloc(1, len);
    if (!fm) return -1;
    uint64_t start = 0, total = 0, shared = 0;
    for (;;) {
        memset(fm, 0, len);
        fm->fm_start = start;
        fm->fm_length = ~0ULL - start;
        fm->fm_flags = FIEMAP_FLAG_SYNC;
        fm->fm_extent_count = batch;
        if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) { free(fm); return -1; }
        if (fm->fm_mapped_extents == 0) break;
        int last = 0;
        for (unsigned i = 0; i < fm->fm_mapped_extents; i++) {
            struct fiemap_extent *e = &fm->fm_extents[i];
            total += e->fe_length;
            if (e->fe_flags & FIEMAP_EXTENT_SHARED) shared += e->fe_length;
            if (e->fe_flags & FIEMAP_EXTENT_LAST) last = 1;
            start = e->fe_logical + e->fe_length;
        }
        if (last) break;
    }
    free(fm);
    *bytes = total;
    *shared_bytes = shared;
    return 0;
}

int snapdump_fiemap(int fd, uint64_t start, struct snapdump_extent *out, uint32_t max, uint32_t *count, int *last) {
    size_t len = sizeof(struct fiemap) + (size_t)max * sizeof(struct fiemap_extent);
    struct fiemap *fm = calloc(1, len);
    if (!fm) return -1;
    fm->fm_start = start;
    fm->fm_length = ~0ULL - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = max;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) { free(fm); return -1; }
    *count = fm->fm_mapped_extents;
    *last = fm->fm_mapped_extents == 0;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
        struct fiemap_extent *e = &fm->fm_extents[i];
        out[i].logical = e->fe_logical;
        out[i].physical = e->fe_physical;
        out[i].length = e->fe_length;
        out[i].flags = e->fe_flags;
        if (e->fe_flags & FIEMAP_EXTENT_LAST) *last = 1;
    }
    free(fm);
    return 0;
}

int snapdump_ioprio_set_self(int idle, int level) {
    /* linux/ioprio.h: class in bits 13-15; IOPRIO_CLASS_BE = 2, IOPRIO_CLASS_IDLE = 3; IOPRIO_WHO_PROCESS = 1. */
    int prio = idle ? (3 << 13) : ((2 << 13) | (level & 7));
    return (int)syscall(SYS_ioprio_set, 1, 0, prio);
}

int snapdump_ioprio_get_self(void) {
    return (int)syscall(SYS_ioprio_get, 1, 0);
}

int snapdump_syncfs(int fd) {
    return syncfs(fd);
}

int snapdump_btrfs_snapshot(int parent_fd, int source_fd, const char *name, int read_only) {
    struct btrfs_ioctl_vol_args_v2 args;
    memset(&args, 0, sizeof args);
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof args.name) { errno = ENAMETOOLONG; return -1; }
    memcpy(args.name, name, len);
    args.fd = source_fd;
    args.flags = read_only ? BTRFS_SUBVOL_RDONLY : 0;
    return ioctl(parent_fd, BTRFS_IOC_SNAP_CREATE_V2, &args);
}

int snapdump_btrfs_subvolume_destroy(int parent_fd, const char *name) {
    struct btrfs_ioctl_vol_args args;
    memset(&args, 0, sizeof args);
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof args.name) { errno = ENAMETOOLONG; return -1; }
    memcpy(args.name, name, len);
    return ioctl(parent_fd, BTRFS_IOC_SNAP_DESTROY, &args);
}

int snapdump_btrfs_root_id(int fd, uint64_t *root_id) {
    struct btrfs_ioctl_ino_lookup_args args;
    memset(&args, 0, sizeof args);
    args.objectid = BTRFS_FIRST_FREE_OBJECTID;
    if (ioctl(fd, BTRFS_IOC_INO_LOOKUP, &args) != 0) return -1;
    *root_id = args.treeid;
    return 0;
}

int snapdump_btrfs_send_no_data(int snapshot_fd, int send_fd, uint64_t parent_root) {
    struct btrfs_ioctl_send_args args;
    uint64_t clone_sources[1] = { parent_root };
    memset(&args, 0, sizeof args);
    args.send_fd = send_fd;
    args.clone_sources_count = 1;
    args.clone_sources = clone_sources;
    args.parent_root = parent_root;
    args.flags = BTRFS_SEND_FLAG_NO_FILE_DATA;
    return ioctl(snapshot_fd, BTRFS_IOC_SEND, &args);
}

int snapdump_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int snapdump_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int snapdump_malloc_long_running(int arenas, int mmap_threshold) {
    return mallopt(M_ARENA_MAX, arenas) == 1 && mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 ? 0 : -1;
}

int snapdump_malloc_trim(void) {
    return malloc_trim(0);
}

int snapdump_aio_setup(unsigned events, uint64_t *context) {
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, events, &ctx) != 0) return -1;
    *context = (uint64_t)ctx;
    return 0;
}

int snapdump_aio_pwrite(uint64_t context, int fd, const void *buffer, uint64_t length, uint64_t offset, uint64_t token) {
    // The kernel copies the iocb in io_submit: it may live on the stack.
    struct iocb cb;
    memset(&cb, 0, sizeof cb);
    cb.aio_data = token;
    cb.aio_fildes = (uint32_t)fd;
    cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    cb.aio_buf = (uint64_t)(uintptr_t)buffer;
    cb.aio_nbytes = length;
    cb.aio_offset = (int64_t)offset;
    struct iocb *list[1] = { &cb };
    long r;
    do { r = syscall(SYS_io_submit, (aio_context_t)context, 1L, list); } while (r < 0 && errno == EINTR);
    return r == 1 ? 0 : -1;
}

int snapdump_aio_reap(uint64_t context, int min, int max, uint64_t *tokens, int64_t *results) {
    struct io_event events[64];
    if (max > 64) max = 64;
    long n;
    do { n = syscall(SYS_io_getevents, (aio_context_t)context, (long)min, (long)max, events, NULL); } while (n < 0 && errno == EINTR);
    for (long i = 0; i < n; i++) {
        tokens[i] = events[i].data;
        results[i] = events[i].res;
    }
    return (int)n;
}

int snapdump_aio_destroy(uint64_t context) {
    return (int)syscall(SYS_io_destroy, (aio_context_t)context);
}

/* SIGBUS on a mapped archive: the guarded call's thread jumps back out of
   libzstd (sigsetjmp/siglongjmp: the signal is synchronous, raised by that
   thread's own access). Nothing of libzstd's is used after the jump but the
   context, which ZSTD_decompressDCtx resets at its next call. */
static __thread sigjmp_buf *snapdump_bus_jump;
static struct sigaction snapdump_bus_previous;
static pthread_once_t snapdump_bus_once = PTHREAD_ONCE_INIT;

static void snapdump_bus_handler(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)info; (void)context;
    sigjmp_buf *jump = snapdump_bus_jump;
    if (jump) siglongjmp(*jump, 1);
    /* Not a guarded read: the old action (the Swift runtime's backtrace, or
       death) takes the access when it faults again on return. */
    sigaction(SIGBUS, &snapdump_bus_previous, NULL);
}

static void snapdump_bus_install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = snapdump_bus_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &snapdump_bus_previous);
}

/* Runs `call` with a SIGBUS of this thread jumping back here: *bus is 1
   then, 0 when the call returned. A macro: sigsetjmp's frame must stay
   live for the jump. */
#define SNAPDUMP_GUARDING_SIGBUS(bus, call) do { \
        sigjmp_buf jump; \
        pthread_once(&snapdump_bus_once, snapdump_bus_install); \
        if (sigsetjmp(jump, 1)) { snapdump_bus_jump = NULL; *(bus) = 1; break; } \
        snapdump_bus_jump = &jump; \
        call; \
        snapdump_bus_jump = NULL; \
        *(bus) = 0; \
    } while (0)

size_t snapdump_zstd_decompress_mapped(void *dctx, void *dst, size_t capacity, const void *src, size_t size, int *bus) {
    volatile size_t r = 0;
    SNAPDUMP_GUARDING_SIGBUS(bus, r = ZSTD_decompressDCtx(dctx, dst, capacity, src, size));
    return r;
}

size_t snapdump_zstd_find_frame_mapped(const void *src, size_t size, unsigned long long *bound, int *bus) {
    volatile size_t n = 0;
    *bound = 0;
    SNAPDUMP_GUARDING_SIGBUS(bus, n = ZSTD_findFrameCompressedSize(src, size);
                             *bound = ZSTD_isError(n) ? 0 : ZSTD_decompressBound(src, n));
    return n;
}
