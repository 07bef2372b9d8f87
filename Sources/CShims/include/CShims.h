#ifndef SNAPDUMP_CSHIMS_H
#define SNAPDUMP_CSHIMS_H
#include <stddef.h>
#include <stdint.h>

/// ioctl(dst, FICLONE, src): share all extents of src with dst (btrfs, XFS reflink).
/// Returns 0 or -1 with errno set. ioctl is variadic, which Swift cannot call.
int snapdump_ficlone(int dst_fd, int src_fd);

/// ioctl(fd, BLKGETSIZE64): size of a block device in bytes. Returns 0 or -1 with errno.
int snapdump_blkgetsize64(int fd, uint64_t *size);

/// FS_IOC_FIEMAP: bytes in the extents of fd, and how many of them are shared
/// with another file (FIEMAP_EXTENT_SHARED). Returns 0 or -1 with errno set.
int snapdump_fiemap_shared(int fd, uint64_t *bytes, uint64_t *shared_bytes);

/// One extent as FS_IOC_FIEMAP reports it (struct fiemap_extent without padding).
struct snapdump_extent {
    uint64_t logical;
    uint64_t physical;
    uint64_t length;
    uint32_t flags;
};

/// FS_IOC_FIEMAP with FIEMAP_FLAG_SYNC from byte `start` to the end: up to
/// `max` extents into `out`, their number into `count`, and `last` = 1 when
/// the last of them is the file's last extent (or there are none). Call again
/// from the end of the last extent for more. Returns 0 or -1 with errno set.
int snapdump_fiemap(int fd, uint64_t start, struct snapdump_extent *out, uint32_t max, uint32_t *count, int *last);

/// ioprio_set(IOPRIO_WHO_PROCESS, 0, …) for the calling process: `idle` selects
/// the idle class, else the best-effort class at `level` (0 highest … 7 lowest).
/// Returns 0 or -1 with errno set. (syscall is variadic, which Swift cannot call.)
int snapdump_ioprio_set_self(int idle, int level);

/// ioprio_get(IOPRIO_WHO_PROCESS, 0) for the calling thread: the raw value
/// (class << 13 | level), or -1 with errno set.
int snapdump_ioprio_get_self(void);

/// syncfs(fd): writes out the dirty data of the whole filesystem holding fd.
/// Returns 0 or -1 with errno set. (glibc declares it only with _GNU_SOURCE.)
int snapdump_syncfs(int fd);

/// Linux native AIO (io_setup/io_submit/io_getevents/io_destroy, raw syscalls:
/// no libaio). Each returns 0 (or a count) or -1 with errno set.
int snapdump_aio_setup(unsigned events, uint64_t *context);
/// One positional write; `token` comes back with its completion.
int snapdump_aio_pwrite(uint64_t context, int fd, const void *buffer, uint64_t length, uint64_t offset, uint64_t token);
/// Waits for at least `min` (at most `max`) completions: their tokens and
/// results (bytes written, or -errno). Returns how many.
int snapdump_aio_reap(uint64_t context, int min, int max, uint64_t *tokens, int64_t *results);
int snapdump_aio_destroy(uint64_t context);

/// BTRFS_IOC_SNAP_CREATE_V2: a snapshot of the subvolume open as `source_fd`, named
/// `name` in the directory open as `parent_fd` (read-only when `read_only`), in one
/// ioctl — what `btrfs subvolume snapshot` does, without a process. Returns 0 or -1 with errno.
int snapdump_btrfs_snapshot(int parent_fd, int source_fd, const char *name, int read_only);

/// BTRFS_IOC_SNAP_DESTROY: deletes subvolume `name` of the directory open as
/// `parent_fd`, as `btrfs subvolume delete` does (no commit: the cleaner frees it
/// later), without a process. Returns 0 or -1 with errno.
int snapdump_btrfs_subvolume_destroy(int parent_fd, const char *name);

/// BTRFS_IOC_INO_LOOKUP of the subvolume's root directory: the id of the
/// subvolume (tree) holding `fd`. Returns 0 or -1 with errno.
int snapdump_btrfs_root_id(int fd, uint64_t *root_id);

/// BTRFS_IOC_SEND of the read-only subvolume open as `snapshot_fd`, incremental
/// from read-only subvolume `parent_root` (also its one clone source), without
/// file data (BTRFS_SEND_FLAG_NO_FILE_DATA, stream version 1), written to
/// `send_fd` — what `btrfs send --no-data -p` does. Returns 0 or -1 with errno.
int snapdump_btrfs_send_no_data(int snapshot_fd, int send_fd, uint64_t parent_root);

/// pipe2(fds, O_CLOEXEC): both ends closed on exec, with no moment in which a child
/// started by another thread could inherit them. Returns 0 or -1 with errno.
int snapdump_pipe_cloexec(int fds[2]);

/// memfd_create(name, MFD_CLOEXEC): an anonymous in-memory file. Returns the fd or -1.
int snapdump_memfd(const char *name);

/// mallopt(M_ARENA_MAX, arenas) and mallopt(M_MMAP_THRESHOLD, mmap_threshold): at most
/// `arenas` glibc malloc arenas (a new thread may otherwise get one of its own, up to 8
/// per core, each keeping what is freed into it), and every allocation of
/// `mmap_threshold` bytes or more mapped on its own and unmapped when freed (a fixed
/// threshold: glibc's default one rises to the largest block freed so far, after
/// which multi-MiB buffers come from the heap and fragment it). Returns 0, or -1.
int snapdump_malloc_long_running(int arenas, int mmap_threshold);

/// malloc_trim(0): gives the free memory of every glibc arena back to the kernel
/// (also from the middle of a heap, by MADV_DONTNEED). Returns 1 if any was released.
int snapdump_malloc_trim(void);

/// Reading a mapped file, a page the file no longer has (cut short while
/// mapped) or cannot give (an I/O error of its disk) is a SIGBUS, not an
/// error return: the process would die with the restore half done. These
/// make the zstd calls a restore makes on a mapped archive with SIGBUS turned
/// into a return with `*bus` set to 1 (0 otherwise), on the calling thread
/// only; a SIGBUS anywhere else keeps its old action. `dctx` is a ZSTD_DCtx.
/// ZSTD_decompressDCtx:
size_t snapdump_zstd_decompress_mapped(void *dctx, void *dst, size_t capacity, const void *src, size_t size, int *bus);
/// ZSTD_findFrameCompressedSize of the frame at `src` (of at most `size` bytes) and,
/// when it ends there, ZSTD_decompressBound of it in `*bound`:
size_t snapdump_zstd_find_frame_mapped(const void *src, size_t size, unsigned long long *bound, int *bus);

/// CRC-32 as zlib's crc32(crc, buffer, length) computes it (IEEE, reflected;
/// `crc` 0 to start, the previous result to continue), any length in one call.
/// Folds with PCLMULQDQ where the CPU has it (CRC32.c), else zlib's table code.
uint32_t snapdump_crc32(uint32_t crc, const void *buffer, size_t length);
/// 1 when snapdump_crc32 folds with PCLMULQDQ on this CPU (from 64 bytes on), else 0.
int snapdump_crc32_folds(void);

#endif
