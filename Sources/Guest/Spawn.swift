#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem

/// Starting QEMU processes with posix_spawn.
///
/// Foundation's `Process` notices a child's exit through a socket the child
/// inherits; a daemonizing QEMU hands that socket on to its daemon, so
/// `Process` never sees the parent exit. Here we wait with
/// `waitpid(WNOHANG)` polls instead (never blocking a thread), and the child
/// gets no descriptor but stdin, stdout and stderr, so a long-lived QEMU
/// never holds a pipe or socket of ours open.
enum Spawn {
    struct Failure: Error, CustomStringConvertible, Sendable {
        var description: String
    }

    /// Starts `argv` (program resolved on PATH) with stdin from /dev/null and
    /// stdout and stderr appended to `outputPath` (or /dev/null). Returns the pid.
    static func start(_ argv: [String], environment: [String: String], outputPath: String? = nil) throws -> pid_t {
        precondition(!argv.isEmpty)
        let program = Command.resolve(argv[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let out = outputPath ?? "/dev/null"
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, File.privateMode)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if let closefrom = addCloseFrom { _ = closefrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Default signal handling and an empty mask in the child.
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let args = ([program] + argv.dropFirst()).map { strdup($0) } + [nil]
        let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for a in args { free(a) }
            for e in env { free(e) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, program, &actions, &attributes, args, env)
        if rc != 0 {
            throw Failure(description: "cannot run \(program): \(String(cString: strerror(rc)))")
        }
        return pid
    }

    /// How a child ended.
    enum Exit: Equatable, Sendable {
        case exited(Int32)
        case signaled(Int32)
    }

    /// Reaps `pid` if it has ended; nil while it runs.
    static func poll(_ pid: pid_t) -> Exit? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return nil }
        let low = status & 0x7f
        return low == 0 ? .exited((status >> 8) & 0xff) : .signaled(low)
    }

    /// Waits until `pid` ends or `deadline` passes (nil then).
    static func wait(_ pid: pid_t, until deadline: Deadline) async -> Exit? {
        while true {
            if let e = poll(pid) { return e }
            if deadline.hasPassed { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// SIGKILL and reap (bounded) a child of ours.
    static func killAndReap(_ pid: pid_t) async {
        kill(pid, SIGKILL)
        _ = await wait(pid, until: ContinuousClock.now + .seconds(5))
    }

    /// glibc ≥ 2.34 has posix_spawn_file_actions_addclosefrom_np, which Swift
    /// does not import (it needs _GNU_SOURCE); look it up at run time.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(sym, to: AddCloseFrom.self)
    }()
}
