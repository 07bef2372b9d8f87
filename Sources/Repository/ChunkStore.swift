#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SnapdumpSystem
import Archive

/// `.chunks/<first 4 hex digits>/<digest hex>`: every chunk stored once as
/// a blob, named by its digest. A prefix directory is created when its
/// first chunk is stored (PBS creates all 65,536 up front; creating and
/// removing them costs seconds on a loaded disk, and PBS reads either form).
///
/// A chunk is written to a temp name in its directory and linked to its
/// final name: link(2) fails when the name exists, so an existing chunk is
/// never rewritten, even by two writers racing. The durable point is the
/// writer's `syncfs` before its manifest (PBS's default sync level).
public final class ChunkStore: Sendable {
    public let root: String
    public var base: String { root + "/.chunks" }
    private let tempCounter = Atomic<Int>(0)

    public init(root: String) { self.root = root }

    public static func create(root: String) throws {
        let base = root + "/.chunks"
        do {
            try FileSystem.createDirectory(base, mode: 0o700)
        } catch {
            throw RepositoryError.io(base, "cannot create the chunk store", error)
        }
    }

    static func prefix(_ i: Int) -> String { String(i, radix: 16).leftPadded(4) }

    public func path(of digest: SHA256Digest) -> String {
        let hex = digest.hex
        return "\(base)/\(hex.prefix(4))/\(hex)"
    }

    /// The chunk's size on disk, or nil when it is not stored.
    public func storedSize(_ digest: SHA256Digest) -> UInt64? {
        var st = stat()
        guard stat(path(of: digest), &st) == 0 else { return nil }
        return UInt64(st.st_size)
    }

    public enum InsertResult: Sendable, Equatable {
        /// Written now; the blob's size.
        case stored(UInt64)
        /// It was there already (its atime is touched for a gc running now).
        case duplicate
    }

    /// Stores `blob` under `digest` unless a chunk of that digest exists.
    /// An existing chunk of the other crypt kind (encrypted vs not) is an
    /// error: the two never overwrite each other.
    public func insert(_ digest: SHA256Digest, blob: [UInt8]) throws -> InsertResult {
        try blob.withUnsafeBytes { try insert(digest, blob: $0) }
    }

    public func insert(_ digest: SHA256Digest, blob: UnsafeRawBufferPointer) throws -> InsertResult {
        let final = path(of: digest)
        if FileSystem.exists(final) {
            try checkSameCryptKind(final, as: blob, digest: digest)
            touch(digest)
            return .duplicate
        }
        let tmp = "\(final).tmp_\(getpid())_\(tempCounter.add(1, ordering: .relaxed).newValue)"
        do {
            let dir = (final as NSString).deletingLastPathComponent
            if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir", dir) }
            let f = try File.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            try write(blob, to: f)
            try f.close()
        } catch {
            try? FileSystem.remove(tmp)
            throw RepositoryError.io("chunk \(digest.hex)", "inserting chunk on store '\(root)' failed", error)
        }
        defer { unlink(tmp) }
        if link(tmp, final) != 0 {
            if errno == EEXIST {
                touch(digest)
                return .duplicate
            }
            throw RepositoryError.io("chunk \(digest.hex)", "inserting chunk on store '\(root)' failed", SystemError("link", final))
        }
        return .stored(UInt64(blob.count))
    }

    /// Set once the filesystem refused O_DIRECT: every later chunk is written buffered.
    private let directRefused = Atomic<Bool>(false)

    /// Writes a new chunk file. From a page-aligned buffer (`DataBlob.Encoder`'s)
    /// the whole pages go past the page cache (`DirectFile`) and only the last,
    /// partial page through it: copying every chunk into the page cache was
    /// a tenth of a first backup's CPU, and nothing reads a new chunk soon.
    /// Where the filesystem has no direct I/O, all of it is buffered.
    private func write(_ blob: UnsafeRawBufferPointer, to f: File) throws {
        guard !directRefused.load(ordering: .relaxed), blob.count >= DirectFile.alignment,
              DirectFile.isAligned(blob, at: 0) else {
            return try f.write(blob, at: 0)
        }
        let d = DirectFile(file: f)
        defer { try? d.closeDirect() }
        try d.write(blob, at: 0)
        if !d.isDirect { directRefused.store(true, ordering: .relaxed) }
    }

    private func checkSameCryptKind(_ path: String, as blob: UnsafeRawBufferPointer, digest: SHA256Digest) throws {
        guard let f = try? File.openForReading(path) else { return }
        var magic = [UInt8](repeating: 0, count: 8)
        let n = (try? magic.withUnsafeMutableBytes { try f.read(into: $0, at: 0) }) ?? 0
        guard n == 8, let old = DataBlob.Kind(magic: magic), let new = DataBlob.Kind(magic: blob) else { return }
        if old.isEncrypted != new.isEncrypted {
            throw RepositoryError(.crypt, "chunk \(digest.hex)",
                                  "an \(old.isEncrypted ? "encrypted" : "unencrypted") chunk of this digest exists; refusing to replace it with an \(new.isEncrypted ? "encrypted" : "unencrypted") one")
        }
    }

    /// The blob bytes of a chunk.
    public func read(_ digest: SHA256Digest) throws -> [UInt8] {
        let p = path(of: digest)
        guard FileSystem.exists(p) else { throw RepositoryError(.missingChunk, "chunk \(digest.hex)", "missing from the chunk store (\(p))") }
        do { return try FileSystem.readBytes(p) } catch { throw RepositoryError.io("chunk \(digest.hex)", "cannot read", error) }
    }

    /// Sets the atime to now (gc's mark); mtime stays. Missing chunk: false.
    @discardableResult
    public func touch(_ digest: SHA256Digest) -> Bool {
        var times = [timespec(tv_sec: 0, tv_nsec: utimeNow), timespec(tv_sec: 0, tv_nsec: utimeOmit)]
        return utimensat(AT_FDCWD, path(of: digest), &times, 0) == 0
    }

    /// Renames a corrupt chunk to `<digest>.<n>.bad` (first free n), so the
    /// next backup that has the data stores it again. Returns the new path.
    @discardableResult
    public func markBad(_ digest: SHA256Digest) throws -> String {
        let p = path(of: digest)
        for n in 0..<1000 {
            let bad = "\(p).\(n).bad"
            if FileSystem.exists(bad) { continue }
            try FileSystem.rename(p, to: bad)
            return bad
        }
        throw RepositoryError(.io, "chunk \(digest.hex)", "too many .bad copies")
    }

    public struct SweepResult: Sendable, Equatable {
        public var removedChunks = 0, removedBytes: UInt64 = 0
        /// Unreferenced but newer than the cutoff: removed by a later gc.
        public var pendingChunks = 0, pendingBytes: UInt64 = 0
        public var keptChunks = 0, keptBytes: UInt64 = 0
        public var removedBad = 0
        public var removedTemp = 0
        public init() {}
    }

    /// Removes every chunk whose atime is older than `minAtime` (marked
    /// chunks have a newer one), `.bad` copies older than it, and temp files
    /// older than it (left by killed writers).
    public func sweep(minAtime: Int64, referenced: (SHA256Digest) -> Bool) throws -> SweepResult {
        var r = SweepResult()
        for i in 0..<65536 {
            let dir = base + "/" + Self.prefix(i)
            guard let d = opendir(dir) else {
                if errno == ENOENT { continue }
                throw RepositoryError.io(dir, "gc cannot read", SystemError("opendir", dir))
            }
            defer { closedir(d) }
            while let e = readdir(d) {
                let name = withUnsafePointer(to: e.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if name.hasPrefix(".") { continue }
                let p = dir + "/" + name
                var st = stat()
                guard lstat(p, &st) == 0 else { continue }
                let atime = Int64(st.st_atim.tv_sec)
                let size = UInt64(st.st_size)
                if name.count == 64, let digest = SHA256Digest(hex: name) {
                    if atime >= minAtime || referenced(digest) {
                        if referenced(digest) { r.keptChunks += 1; r.keptBytes += size } else { r.pendingChunks += 1; r.pendingBytes += size }
                        continue
                    }
                    if unlink(p) != 0 && errno != ENOENT { throw RepositoryError.io(p, "gc cannot remove", SystemError("unlink", p)) }
                    r.removedChunks += 1
                    r.removedBytes += size
                } else if Int64(st.st_mtim.tv_sec) < minAtime {
                    if unlink(p) == 0 { if name.hasSuffix(".bad") { r.removedBad += 1 } else { r.removedTemp += 1 } }
                }
            }
        }
        return r
    }

    /// Every stored chunk digest and its size (status, verify of everything).
    public func allChunks() throws -> [(SHA256Digest, UInt64)] {
        var out: [(SHA256Digest, UInt64)] = []
        for i in 0..<65536 {
            let dir = base + "/" + Self.prefix(i)
            guard let names = try? FileSystem.list(dir) else { continue }
            for n in names where n.count == 64 {
                guard let d = SHA256Digest(hex: n) else { continue }
                var st = stat()
                if lstat(dir + "/" + n, &st) == 0 { out.append((d, UInt64(st.st_size))) }
            }
        }
        return out
    }
}

// <sys/stat.h> defines these as expressions Swift does not import.
private let utimeNow = (1 << 30) - 1
private let utimeOmit = (1 << 30) - 2
