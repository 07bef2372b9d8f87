#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem

/// What /proc says about processes: command lines (to verify that a pid
/// from a pidfile is still our QEMU and not a recycled pid or a zombie),
/// start times, and signals to verified pids.
enum ProcessTable {
    /// The argv of `pid`; nil when it does not exist or is a zombie (whose
    /// cmdline is empty).
    static func commandLine(_ pid: Int32) -> [String]? {
        guard pid > 0, let text = try? FileSystem.readText("/proc/\(pid)/cmdline"), !text.isEmpty else { return nil }
        return text.split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// Whether `pid` is alive and one of its arguments mentions `marker`
    /// (the VM's QMP socket path).
    static func isAlive(_ pid: Int32, mentioning marker: String) -> Bool {
        guard let argv = commandLine(pid) else { return false }
        let escaped = marker.replacingOccurrences(of: ",", with: ",,")
        return argv.contains { $0.contains(marker) || $0.contains(escaped) }
    }

    /// All pids whose command line mentions `marker` (used when a pidfile is
    /// missing).
    static func find(mentioning marker: String) -> [Int32] {
        guard let names = try? FileSystem.list("/proc") else { return [] }
        return names.compactMap { Int32($0) }.filter { $0 != getpid() && isAlive($0, mentioning: marker) }
    }

    /// The pid written in a pidfile, or nil.
    static func readPidFile(_ path: String) -> Int32? {
        guard let text = try? FileSystem.readText(path) else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Seconds since `pid` started (from /proc/<pid>/stat field 22 and /proc/uptime).
    static func uptime(_ pid: Int32) -> Double? {
        guard let stat = try? FileSystem.readText("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")"),
              let uptimeText = try? FileSystem.readText("/proc/uptime"),
              let systemUptime = Double(uptimeText.split(separator: " ").first ?? "") else { return nil }
        // Fields after "(comm)" start with field 3 (state); starttime is field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return max(0, systemUptime - ticks / hz)
    }

    /// Sends `signal` to `pid` only if it still mentions `marker`.
    @discardableResult
    static func signal(_ pid: Int32, _ signal: Int32, ifMentioning marker: String) -> Bool {
        guard isAlive(pid, mentioning: marker) else { return false }
        return kill(pid, signal) == 0
    }

    /// Polls (without blocking a thread) until `pid` no longer mentions
    /// `marker`; returns whether it went away within `timeout`.
    /// `honoringCancellation`: a cancelled caller stops waiting at once (a
    /// shutdown's long wait); false for the short waits of a hard stop, which
    /// must see the process go even when the caller was cancelled.
    static func waitForExit(_ pid: Int32, mentioning marker: String, timeout: Duration,
                            honoringCancellation: Bool = true) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isAlive(pid, mentioning: marker) {
            if deadline.hasPassed || (honoringCancellation && Task.isCancelled) { return false }
            await pause(milliseconds: 50)
        }
        return true
    }

    /// A sleep that cancellation does not cut short (Task.sleep returns at once when cancelled).
    static func pause(milliseconds ms: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(ms)) { c.resume() }
        }
    }
}
