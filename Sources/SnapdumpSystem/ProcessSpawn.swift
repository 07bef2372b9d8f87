#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// posix_spawn with what every long-lived child of snapdump needs: stdin from
/// /dev/null, stdout and stderr to files, no other descriptor of ours, default
/// signal dispositions and an empty signal mask.
///
/// Why the signal state: a child inherits the mask of the thread that spawns
/// it, and Dispatch's and Swift concurrency's worker threads block almost
/// every signal. A `qemu-nbd --fork` started from one never saw the SIGTERM
/// that was to stop it and outlived the backup. Why no descriptor: a
/// daemonizing child (`qemu-nbd --fork`, `qemu -daemonize`) hands what it
/// inherits on to its daemon — a pipe or Foundation's exit-notification
/// socket of whoever started snapdump would then never reach end of file.
public enum ProcessSpawn {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Where the child's stderr goes.
    public enum ErrorOutput: Sendable {
        /// Wherever stdout goes.
        case stdout
        /// A new file (created exclusively, never through a symlink).
        case newFile(String)
    }

    /// Where one of the child's standard descriptors comes from.
    public enum Redirect: Sendable {
        /// /dev/null.
        case null
        /// A file appended to (created if missing, never through a symlink).
        case append(String)
        /// A new file (created exclusively, never through a symlink).
        case newFile(String)
        /// A descriptor of ours (a pipe's end), duplicated onto the child's.
        case descriptor(Int32)
        /// Wherever the child's stdout goes (for stderr).
        case stdout
    }

    /// Starts `argv` (program resolved on PATH) and returns its pid; stdout is
    /// appended to `stdout` (created if missing). `environment` nil: ours.
    public static func start(_ argv: [String], environment: [String: String]? = nil,
                             stdout: String = "/dev/null", stderr: ErrorOutput = .stdout) throws(Failure) -> pid_t {
        let err: Redirect = switch stderr {
        case .stdout: .stdout
        case .newFile(let path): .newFile(path)
        }
        return try spawn(argv, environment: environment, stdin: .null, stdout: .append(stdout), stderr: err)
    }

    /// posix_spawn of `argv` with the signal state and descriptors above.
    /// `ownProcessGroup`: the child leads a process group of its own, so a
    /// Ctrl-C at the terminal reaches snapdump, which decides what to stop,
    /// and not a `zfs snapshot` half way (as Foundation's `Process` did).
    public static func spawn(_ argv: [String], environment: [String: String]? = nil, stdin: Redirect, stdout: Redirect,
                             stderr: Redirect, ownProcessGroup: Bool = false) throws(Failure) -> pid_t {
        precondition(!argv.isEmpty)
        let program = Command.resolve(argv[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, r) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch r {
            case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .append(let path):
                posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, File.privateMode)
            case .newFile(let path):
                posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, File.privateMode)
            case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
            case .stdout: posix_spawn_file_actions_adddup2(&actions, 1, target)
            }
        }
        if let closefrom = addCloseFrom { _ = closefrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        var flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        if ownProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let args = ([program] + argv.dropFirst()).map { strdup($0) } + [nil]
        let env: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            for a in args { free(a) }
            for e in env ?? [] { free(e) }
        }
        var pid: pid_t = 0
        let rc = env.map { e in posix_spawn(&pid, program, &actions, &attributes, args, e) }
            ?? posix_spawn(&pid, program, &actions, &attributes, args, environ)
        if rc != 0 {
            throw Failure(description: "cannot run \(program): \(String(cString: strerror(rc)))")
        }
        return pid
    }

    /// Waits for `pid` (retrying EINTR); its exit code, or 128 + the signal that killed it (as a shell says).
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// glibc ≥ 2.34 has posix_spawn_file_actions_addclosefrom_np, which Swift
    /// does not import (it needs _GNU_SOURCE); look it up at run time.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(sym, to: AddCloseFrom.self)
    }()
}
