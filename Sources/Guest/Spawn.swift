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
    typealias Failure = ProcessSpawn.Failure

    /// Starts `argv` (program resolved on PATH) with stdin from /dev/null and
    /// stdout and stderr appended to `outputPath` (or /dev/null). Returns the pid.
    static func start(_ argv: [String], environment: [String: String], outputPath: String? = nil) throws -> pid_t {
        try ProcessSpawn.start(argv, environment: environment, stdout: outputPath ?? "/dev/null")
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
}
