#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CShims

/// Whole-file and directory operations with durable, atomic semantics.
public enum FileSystem {
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// A directory on another filesystem than its parent, or `/` (the test
    /// `mountpoint -q` makes; bind mounts of the same filesystem are not seen).
    public static func isMountPoint(_ path: String) -> Bool {
        var st = stat(), parent = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, stat(path + "/..", &parent) == 0 else { return false }
        return st.st_dev != parent.st_dev || st.st_ino == parent.st_ino
    }

    public static func isBlockDevice(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
    }

    /// fsync of a directory, so a rename or create inside it is durable.
    public static func syncDirectory(_ path: String) throws {
        let dir = try File.open(path, O_RDONLY | O_DIRECTORY)
        try dir.sync()
    }

    /// A read-only btrfs snapshot of the subvolume `source` at `destination`
    /// (BTRFS_IOC_SNAP_CREATE_V2 on its parent directory): one ioctl, so it
    /// costs no process inside a guest's freeze window.
    public static func createBtrfsSnapshot(of source: String, at destination: String) throws {
        let parentPath = (destination as NSString).deletingLastPathComponent
        let name = (destination as NSString).lastPathComponent
        let src = try File.open(source, O_RDONLY | O_DIRECTORY)
        let parent = try File.open(parentPath, O_RDONLY | O_DIRECTORY)
        if snapdump_btrfs_snapshot(parent.fd, src.fd, name, 1) != 0 {
            throw SystemError("btrfs snapshot of '\(source)' to", destination)
        }
    }

    /// Deletes a btrfs subvolume or snapshot with one ioctl, as `btrfs subvolume
    /// delete` does without its process (no commit wait; the cleaner frees the tree).
    public static func deleteBtrfsSubvolume(_ path: String) throws {
        let parent = try File.open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY)
        defer { try? parent.close() }
        if snapdump_btrfs_subvolume_destroy(parent.fd, (path as NSString).lastPathComponent) != 0 {
            throw SystemError("btrfs subvolume delete", path)
        }
    }

    /// The stream of `btrfs send --no-data -p <base> <snapshot>` (both read-only
    /// subvolumes), made by the send ioctl into an in-memory file: no process,
    /// no temporary file. A few bytes per changed extent.
    public static func btrfsSendNoData(base: String, snapshot: String) throws -> [UInt8] {
        let b = try File.open(base, O_RDONLY | O_DIRECTORY)
        defer { try? b.close() }
        var baseRoot: UInt64 = 0
        guard snapdump_btrfs_root_id(b.fd, &baseRoot) == 0 else { throw SystemError("btrfs subvolume id of", base) }
        let s = try File.open(snapshot, O_RDONLY | O_DIRECTORY)
        defer { try? s.close() }
        let memfd = snapdump_memfd("snapdump-btrfs-send")
        guard memfd >= 0 else { throw SystemError("memfd_create for btrfs send of", snapshot) }
        let stream = File(adopting: memfd, path: "memfd:btrfs-send")
        defer { try? stream.close() }
        guard snapdump_btrfs_send_no_data(s.fd, memfd, baseRoot) == 0 else {
            throw SystemError("btrfs send from '\(base)' of", snapshot)
        }
        return try stream.readAll()
    }

    /// Owner only: the directories snapdump creates (dump and run dirs,
    /// image dirs, job state) hold backup data, sockets or configuration.
    public static let privateDirectoryMode: mode_t = 0o700

    /// mkdir -p; directories that already exist keep their mode.
    public static func createDirectory(_ path: String, mode: mode_t = privateDirectoryMode) throws {
        if isDirectory(path) { return }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path { try createDirectory(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST { throw SystemError("mkdir", path) }
    }

    /// Writes `contents` to `path` so that readers see either the old or the
    /// new file, never a half-written one: temp file beside it, fsync, rename,
    /// fsync of the directory. A failure removes the temp file and leaves the
    /// old file untouched. The temp name is unpredictable and created with
    /// O_EXCL, so nothing planted beside `path` can receive the contents.
    public static func writeAtomically(_ path: String, _ contents: String, mode: mode_t = File.privateMode) throws {
        try writeAtomically(path, bytes: Array(contents.utf8), mode: mode)
    }

    public static func readText(_ path: String) throws -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    /// The whole file (`File.readAll`).
    public static func readBytes(_ path: String) throws -> [UInt8] {
        let f = try File.openForReading(path)
        defer { try? f.close() }
        return try f.readAll()
    }

    /// Writes `bytes` atomically as `writeAtomically` does for text.
    public static func writeAtomically(_ path: String, bytes: [UInt8], mode: mode_t = File.privateMode) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let (f, tmp) = try createTemporary(beside: path, mode: mode)
        do {
            try f.writeAll(bytes)
            try f.sync()
            try f.close()
            if Glibc.rename(tmp, path) != 0 { throw SystemError("rename to '\(path)' from", tmp) }
            try syncDirectory(dir.isEmpty ? "." : dir)
        } catch {
            unlink(tmp)
            throw error
        }
    }

    /// A new file `<path>.tmp.<random>` (O_EXCL, never through a symlink),
    /// for writing something that is renamed to `path` once complete.
    public static func createTemporary(beside path: String, mode: mode_t = File.privateMode) throws -> (File, String) {
        var attempts = 0
        while true {
            let tmp = "\(path).tmp.\(randomSuffix())"
            do {
                return (try File.createNew(tmp, mode: mode), tmp)
            } catch let e as SystemError where e.errno == EEXIST && attempts < 100 {
                attempts += 1
            }
        }
    }

    /// 16 hex digits from the system's random generator.
    static func randomSuffix() -> String {
        var g = SystemRandomNumberGenerator()
        let v = g.next() as UInt64
        let hex = String(v, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Makes files and directories created from now on by this process and
    /// the programs it starts (qemu-img, QEMU's sockets, zfs) owner-only,
    /// whatever mode they ask for: backup data is readable by root only.
    public static func restrictNewFilesToOwner() {
        umask(0o077)
    }

    public static func remove(_ path: String) throws {
        if unlink(path) != 0 && errno != ENOENT { throw SystemError("unlink", path) }
    }

    public static func removeDirectory(_ path: String) throws {
        if rmdir(path) != 0 && errno != ENOENT { throw SystemError("rmdir", path) }
    }

    public static func rename(_ from: String, to: String) throws {
        if Glibc.rename(from, to) != 0 { throw SystemError("rename to '\(to)' from", from) }
    }

    /// Names in a directory, without "." and "..", sorted.
    public static func list(_ path: String) throws -> [String] {
        guard let d = opendir(path) else { throw SystemError("opendir", path) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// statvfs: (total, used, available) bytes of the filesystem holding `path`.
    public static func usage(_ path: String) throws -> (total: UInt64, used: UInt64, available: UInt64) {
        var s = statvfs()
        if statvfs(path, &s) != 0 { throw SystemError("statvfs", path) }
        let frsize = UInt64(s.f_frsize)
        let total = UInt64(s.f_blocks) * frsize
        let free = UInt64(s.f_bfree) * frsize
        return (total, total - free, UInt64(s.f_bavail) * frsize)
    }

    /// The filesystem type name of `path` ("btrfs", "xfs", "fuse", "ext4", …),
    /// from the longest matching mount point in /proc/self/mounts.
    public static func filesystemType(_ path: String) -> String? {
        let real = (try? realPath(path)) ?? path
        var best: Mount?
        for m in mounts() {
            let matches = m.point == "/" || real == m.point || real.hasPrefix(m.point + "/")
            if matches && m.point.count >= (best?.point.count ?? -1) { best = m }
        }
        return best?.type
    }

    /// A line of /proc/self/mounts.
    public struct Mount: Sendable, Equatable {
        public let source: String
        public let point: String
        public let type: String
    }

    /// The mounts of this process's namespace, in mount order (a later one
    /// covers an earlier at the same point). Empty when /proc is unreadable.
    public static func mounts() -> [Mount] {
        guard let text = try? readText("/proc/self/mounts") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count >= 3 else { return nil }
            return Mount(source: unescapeMountField(f[0]), point: unescapeMountField(f[1]), type: unescapeMountField(f[2]))
        }
    }

    /// The kernel writes space, tab, newline and backslash in a mounts field
    /// as three octal digits after a backslash (`\040`).
    static func unescapeMountField(_ field: Substring) -> String {
        guard field.contains("\\") else { return String(field) }
        let b = Array(field.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, (48...51).contains(b[i + 1]),
               b[(i + 2)...(i + 3)].allSatisfy({ (48...55).contains($0) }) {
                out.append((b[i + 1] - 48) << 6 | (b[i + 2] - 48) << 3 | (b[i + 3] - 48))
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func realPath(_ path: String) throws -> String {
        guard let p = realpath(path, nil) else { throw SystemError("realpath", path) }
        defer { free(p) }
        return String(cString: p)
    }
}
