#if canImport(Glibc)
import Glibc
#endif
import CShims

/// An open file descriptor owned by this object: closed exactly once, on deinit
/// or `close()`. All bulk I/O of snapdump goes through its positional calls,
/// which retry EINTR and short transfers in one place.
public final class File: @unchecked Sendable {
    // @unchecked: the descriptor is an immutable Int32 after init; positional
    // I/O (pread/pwrite) on one descriptor is safe from several threads.
    public let fd: Int32
    public let path: String
    /// A descriptor that cannot seek (a pipe: `backup --stdout`): writers
    /// that know positions write its bytes in order instead (`writeAll`).
    public let isStream: Bool
    private var closed = false

    public init(adopting fd: Int32, path: String, isStream: Bool = false) {
        self.fd = fd
        self.path = path
        self.isStream = isStream
    }

    /// Owner read/write only: every file snapdump creates holds backup data
    /// or configuration (DESIGN.md invariant 7).
    public static let privateMode: mode_t = 0o600

    /// open(2). A call that may create the file (O_CREAT) never follows a
    /// symlink at `path`: a link planted at a name root is about to write
    /// (a predictable `.log`, `.dat` or temp name) would otherwise redirect
    /// the write to its target.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = File.privateMode) throws -> File {
        let f = flags | O_CLOEXEC | (flags & O_CREAT != 0 ? O_NOFOLLOW : 0)
        var fd: Int32
        repeat {
            fd = Glibc.open(path, f, mode)
        } while fd < 0 && errno == EINTR
        if fd < 0 { throw SystemError("open", path) }
        return File(adopting: fd, path: path)
    }

    /// Creates `path`, which must not exist (O_EXCL: not even as a dangling
    /// symlink), for writing. The one way writers claim a new name: two
    /// writers of the same name cannot both succeed.
    public static func createNew(_ path: String, mode: mode_t = File.privateMode, readable: Bool = false) throws -> File {
        try open(path, (readable ? O_RDWR : O_WRONLY) | O_CREAT | O_EXCL, mode: mode)
    }

    /// Opens an existing regular file to append to it; never follows a symlink.
    public static func openForAppending(_ path: String) throws -> File {
        try open(path, O_WRONLY | O_APPEND | O_NOFOLLOW)
    }

    public static func openForReading(_ path: String) throws -> File {
        try open(path, O_RDONLY)
    }

    deinit { if !closed { Glibc.close(fd) } }

    public func close() throws {
        guard !closed else { return }
        closed = true
        if Glibc.close(fd) != 0 && errno != EINTR { throw SystemError("close", path) }
    }

    /// Reads until `buffer` is full or end of file; returns the bytes read.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("read at offset \(offset + UInt64(done)) of", path)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// The whole file from offset 0 to its end (sized from fstat, so one
    /// allocation for a regular file; a file that grows meanwhile is read whole).
    public func readAll() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int((try? size()) ?? 0) + 1)
        var used = 0
        while true {
            if used == bytes.count { bytes.append(contentsOf: repeatElement(0, count: max(65536, bytes.count))) }
            let n = try bytes.withUnsafeMutableBytes { (b) throws in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: b[used...]), at: UInt64(used))
            }
            if n == 0 { break }
            used += n
        }
        bytes.removeSubrange(used...)
        return bytes
    }

    /// Sequential read from the current position (pipes, sockets, stdin).
    public func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress!, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("read", path)
            }
            return n
        }
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("write at offset \(offset + UInt64(done)) of", path)
            }
            done += n
        }
    }

    /// Writes all of `buffer` at the current position (pipes, stdout, append).
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("write", path)
            }
            done += n
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { (b) throws in try writeAll(b) }
    }

    /// A second descriptor of this same file (through /proc/self/fd, so no
    /// path is looked up again) for writing past the page cache with
    /// O_DIRECT: offsets, lengths and buffers must then be aligned (4096
    /// covers every device). Throws EINVAL where the filesystem has no direct
    /// I/O (tmpfs, some FUSE filesystems); some reject it only at the first write.
    public func reopenForDirectWriting() throws -> File {
        let direct = Glibc.open("/proc/self/fd/\(fd)", O_WRONLY | O_CLOEXEC | File.oDirect)
        if direct < 0 { throw SystemError("open with O_DIRECT", path) }
        return File(adopting: direct, path: path)
    }

    /// O_DIRECT: x86-64 and aarch64 differ; Glibc exports it only with _GNU_SOURCE.
    #if arch(x86_64) || arch(i386)
    public static let oDirect: Int32 = 0o40000
    #else
    public static let oDirect: Int32 = 0o200000
    #endif

    public func sync() throws {
        if fsync(fd) != 0 { throw SystemError("fsync", path) }
    }

    /// syncfs: writes out every dirty page of the filesystem this file is on.
    public func syncFilesystem() throws {
        if snapdump_syncfs(fd) != 0 { throw SystemError("syncfs", path) }
    }

    public func truncate(to size: UInt64) throws {
        if ftruncate(fd, off_t(size)) != 0 { throw SystemError("truncate", path) }
    }

    /// Size in bytes: st_size for files, BLKGETSIZE64 for block devices.
    public func size() throws -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw SystemError("stat", path) }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var size: UInt64 = 0
            if snapdump_blkgetsize64(fd, &size) != 0 { throw SystemError("BLKGETSIZE64", path) }
            return size
        }
        return UInt64(st.st_size)
    }

    /// Bytes actually allocated on disk (st_blocks × 512).
    public func allocatedBytes() throws -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw SystemError("stat", path) }
        return UInt64(st.st_blocks) * 512
    }

    /// lseek(SEEK_DATA): the next offset ≥ `offset` holding data, nil past the last data.
    public func nextData(from offset: UInt64) throws -> UInt64? {
        let r = lseek(fd, off_t(offset), seekData)
        if r < 0 {
            if errno == ENXIO { return nil }
            throw SystemError("lseek(SEEK_DATA)", path)
        }
        return UInt64(r)
    }

    /// lseek(SEEK_HOLE): the next hole ≥ `offset` (end of file counts as a hole).
    public func nextHole(from offset: UInt64) throws -> UInt64 {
        let r = lseek(fd, off_t(offset), seekHole)
        if r < 0 { throw SystemError("lseek(SEEK_HOLE)", path) }
        return UInt64(r)
    }

    /// FICLONE: make this (empty) file share all extents of `source`.
    public func cloneContents(of source: File) throws {
        if snapdump_ficlone(fd, source.fd) != 0 { throw SystemError("FICLONE from '\(source.path)' to", path) }
    }

    /// Bytes in extents, and bytes in extents shared with other files (FIEMAP):
    /// what a reflink clone or btrfs snapshot still shares with its origin.
    public func extentSharing() throws -> (bytes: UInt64, shared: UInt64) {
        var total: UInt64 = 0, shared: UInt64 = 0
        if snapdump_fiemap_shared(fd, &total, &shared) != 0 { throw SystemError("FIEMAP", path) }
        return (total, shared)
    }

    /// One extent of a file's block map (FIEMAP).
    public struct Extent: Sendable, Equatable {
        public var logical: UInt64
        public var physical: UInt64
        public var length: UInt64
        public var flags: UInt32

        public init(logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32) {
            self.logical = logical
            self.physical = physical
            self.length = length
            self.flags = flags
        }

        // linux/fiemap.h
        public static let last: UInt32 = 0x1
        public static let unknown: UInt32 = 0x2
        public static let delalloc: UInt32 = 0x4
        public static let encoded: UInt32 = 0x8
        public static let encrypted: UInt32 = 0x80
        public static let notAligned: UInt32 = 0x100
        public static let inline: UInt32 = 0x200
        public static let tail: UInt32 = 0x400
        public static let unwritten: UInt32 = 0x800
        public static let merged: UInt32 = 0x1000
        public static let shared: UInt32 = 0x2000
    }

    /// The file's extents in logical order (FIEMAP with FIEMAP_FLAG_SYNC, so
    /// delayed allocations are written first). Holes are the gaps between them.
    public func extents() throws -> [Extent] {
        let batch: UInt32 = 512
        var out: [Extent] = []
        var buffer = [snapdump_extent](repeating: snapdump_extent(), count: Int(batch))
        var start: UInt64 = 0
        while true {
            var count: UInt32 = 0
            var last: Int32 = 0
            if snapdump_fiemap(fd, start, &buffer, batch, &count, &last) != 0 { throw SystemError("FIEMAP", path) }
            for e in buffer.prefix(Int(count)) {
                // An extent may begin before `start` (the kernel reports whole extents): keep it once.
                if let prev = out.last, e.logical < prev.logical + prev.length { continue }
                out.append(Extent(logical: e.logical, physical: e.physical, length: e.length, flags: e.flags))
            }
            guard last == 0, let end = out.last.map({ $0.logical + $0.length }), end > start else { break }
            start = end
        }
        return out
    }

    /// Tells the kernel we read sequentially, so readahead grows.
    public func adviseSequential() {
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
    }

    /// posix_fadvise(POSIX_FADV_DONTNEED): drops the range's clean pages from the
    /// page cache (a hint: errors ignored; dirty, locked or mapped pages stay).
    public func adviseDontNeed(offset: UInt64, length: UInt64) {
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_DONTNEED)
    }

    /// posix_fadvise(POSIX_FADV_WILLNEED): starts reading the range into the page
    /// cache in the background, so a later read finds it there (a hint: errors ignored).
    public func adviseWillNeed(offset: UInt64, length: UInt64) {
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    /// Whether the page holding `offset` is in the page cache: mincore(2) on a
    /// one-page mapping that is never touched (so nothing is read). False when unsure.
    public func isCached(at offset: UInt64) -> Bool {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        guard let p = mmap(nil, Int(page), PROT_READ, MAP_SHARED, fd, off_t(start)),
              p != UnsafeMutableRawPointer(bitPattern: -1) else { return false }
        defer { munmap(p, Int(page)) }
        var resident: UInt8 = 0
        return mincore(p, Int(page), &resident) == 0 && resident & 1 == 1
    }
}

// <unistd.h> defines these under _GNU_SOURCE only, which Swift does not import.
private let seekData: Int32 = 3
private let seekHole: Int32 = 4
