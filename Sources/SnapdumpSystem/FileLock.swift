#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// An exclusive flock(2) on a lock file, released on `unlock()` or deinit —
/// and by the kernel when the process dies, so a killed run never leaves a
/// lock that blocks the next one.
public final class FileLock: @unchecked Sendable {
    // @unchecked: the descriptor is only closed once, by the owner.
    public let path: String
    private let file: File

    private init(path: String, file: File) {
        self.path = path
        self.file = file
    }

    public struct Timeout: Error, CustomStringConvertible {
        public var path: String
        public var seconds: Double
        public var description: String { "can't acquire lock '\(path)' - got timeout after \(Int(seconds)) s" }
    }

    /// Takes the lock, waiting up to `timeout` seconds (0 = try once).
    public static func acquire(_ path: String, timeout: Double) throws -> FileLock {
        try FileSystem.createDirectory((path as NSString).deletingLastPathComponent)
        let f = try File.open(path, O_RDWR | O_CREAT)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if flock(f.fd, LOCK_EX | LOCK_NB) == 0 {
                try? f.truncate(to: 0)
                try? f.writeAll(Array("\(getpid())\n".utf8))
                return FileLock(path: path, file: f)
            }
            if errno != EWOULDBLOCK && errno != EINTR { throw SystemError("flock", path) }
            if Date() >= deadline { throw Timeout(path: path, seconds: timeout) }
            usleep(100_000)
        }
    }

    public func unlock() {
        flock(file.fd, LOCK_UN)
        try? file.close()
    }

    deinit { flock(file.fd, LOCK_UN) }
}
