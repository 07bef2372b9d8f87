import Foundation
import SnapdumpSystem

/// Finds processes by their command line, so a test can check that a helper
/// it caused to start (qemu-nbd on a private socket) is gone afterwards.
/// Matching is by a string unique to the test (its scratch path), never by
/// program name, so other users' processes are never confused with ours.
public enum Processes {
    public struct Entry: Sendable, Equatable {
        public var pid: Int32
        public var arguments: [String]
        public var commandLine: String { arguments.joined(separator: " ") }
    }

    /// Live processes whose argument list contains `substring`.
    public static func matching(_ substring: String) -> [Entry] {
        guard let names = try? FileSystem.list("/proc") else { return [] }
        var result: [Entry] = []
        for name in names {
            guard let pid = Int32(name), pid != getpid() else { continue }
            guard let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline"), !data.isEmpty else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains(where: { $0.contains(substring) }) { result.append(Entry(pid: pid, arguments: args)) }
        }
        return result
    }

    /// The argument list of `pid`, empty when it is gone.
    public static func commandLine(_ pid: Int32) -> [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Whether `pid` still exists and is not a zombie.
    public static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? FileSystem.readText("/proc/\(pid)/stat") else { return false }
        // Field 3, after the parenthesised command name, is the state; Z is a zombie.
        guard let close = stat.lastIndex(of: ")") else { return false }
        let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
        return !rest.hasPrefix("Z")
    }

    /// Sends SIGTERM, then SIGKILL, to each pid (test cleanup of helpers we started).
    public static func terminate(_ pids: [Int32]) {
        for p in pids { kill(p, SIGTERM) }
        for p in pids {
            for _ in 0..<50 where isAlive(p) { usleep(20_000) }
            if isAlive(p) { kill(p, SIGKILL) }
        }
    }
}
