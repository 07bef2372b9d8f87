#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SnapdumpSystem

/// The repository's locks, all flock(2), so the kernel drops them when a
/// process dies:
///
/// - `.lock`: every writer holds it shared for its whole run.
/// - `.writers/<pid>-<n>`: each writer's registration, holding its start time and
///   itself flocked by the writer. gc reads them to find the oldest running
///   writer; a file nobody holds is stale (its writer died: by SIGKILL, say)
///   and is removed.
/// - `.gc.lock`: gc holds it exclusively, so one gc runs at a time. (PBS's
///   process locker also lets gc run beside writers of the same daemon; here
///   writers are other processes, so gc does not exclude them either: the
///   oldest writer's start time bounds what gc may remove instead.)
/// - `<type>/<id>/.lock`: one backup (or prune, or forget) of a guest at a time.
public enum RepositoryLocks {
    private static let writerCounter = Atomic<Int>(0)

    public struct Writer: Sendable {
        public var pid: Int32
        public var started: Int64
    }

    /// A writer's registration; released by `release()` or when dropped.
    public final class WriterLock: @unchecked Sendable {
        // @unchecked: files are only closed once, by release() or deinit.
        let shared: File
        let registration: File
        let path: String
        public let started: Int64
        private var released = false

        init(shared: File, registration: File, path: String, started: Int64) {
            self.shared = shared
            self.registration = registration
            self.path = path
            self.started = started
        }

        public func release() {
            guard !released else { return }
            released = true
            unlink(path)
            flock(registration.fd, LOCK_UN)
            flock(shared.fd, LOCK_UN)
        }

        deinit { release() }
    }

    public static func writer(root: String) throws -> WriterLock {
        do {
            let shared = try File.open(root + "/.lock", O_RDWR | O_CREAT, mode: 0o600)
            guard flock(shared.fd, LOCK_SH) == 0 else { throw SystemError("flock", shared.path) }
            try FileSystem.createDirectory(root + "/.writers", mode: 0o700)
            let started = Int64(Date().timeIntervalSince1970)
            // Unique per writer: two writers of one process (the daemon) must not
            // share a file, or the second flock would wait for the first.
            let path = "\(root)/.writers/\(getpid())-\(writerCounter.add(1, ordering: .relaxed).newValue)"
            let reg = try File.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
            guard flock(reg.fd, LOCK_EX | LOCK_NB) == 0 else { throw SystemError("flock", path) }
            try reg.writeAll(Array("\(getpid()) \(started)\n".utf8))
            return WriterLock(shared: shared, registration: reg, path: path, started: started)
        } catch {
            throw RepositoryError.io(root, "cannot register as a writer", error)
        }
    }

    /// The running writers; stale registrations (no process holds them) are removed.
    public static func runningWriters(root: String) -> (running: [Writer], staleRemoved: [Writer]) {
        var running: [Writer] = [], stale: [Writer] = []
        for name in (try? FileSystem.list(root + "/.writers")) ?? [] {
            let path = "\(root)/.writers/\(name)"
            guard let text = try? FileSystem.readText(path) else { continue }
            let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            guard f.count >= 2, let pid = Int32(f[0]), let t = Int64(f[1]) else { continue }
            let w = Writer(pid: pid, started: t)
            if pid == getpid() { running.append(w); continue }
            guard let file = try? File.open(path, O_RDWR) else { continue }
            if flock(file.fd, LOCK_EX | LOCK_NB) == 0 {
                // Nobody holds it: the writer is gone without releasing it.
                unlink(path)
                flock(file.fd, LOCK_UN)
                stale.append(w)
            } else {
                running.append(w)
            }
        }
        return (running, stale)
    }

    public static func gc(root: String) throws -> FileLock {
        do { return try FileLock.acquire(root + "/.gc.lock", timeout: 0) } catch is FileLock.Timeout {
            throw RepositoryError(.locked, root, "another garbage collection is running")
        }
    }

    /// The per-guest lock, waiting up to `timeout` seconds.
    public static func group(root: String, group: String, timeout: Double) throws -> FileLock {
        do { return try FileLock.acquire("\(root)/\(group)/.lock", timeout: timeout) } catch let e as FileLock.Timeout {
            throw RepositoryError(.locked, group, "another backup, prune or removal of this guest is running (\(e))")
        }
    }
}
