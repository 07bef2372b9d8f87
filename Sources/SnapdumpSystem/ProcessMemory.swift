#if canImport(Glibc)
import Glibc
#endif
import CShims
import Foundation

/// The memory of a long-running process (snapdumpd): glibc keeps what a backup
/// freed in its malloc arenas — one per thread that asked, up to 8 per core — so
/// without this a daemon's resident size after a run is whatever the run's peak
/// happened to leave behind (issue 15: 115–297 MiB idle, 323 MiB peak), and
/// glibc's rising mmap threshold lets each guest's multi-MiB buffers land in a
/// fragmented heap, so a 30-guest job grows from guest to guest.
public enum ProcessMemory {
    /// Two arenas, and buffers of 1 MiB or more mapped on their own (given back
    /// when freed); set before the process starts its threads. Measured on a job of
    /// 6 guests: peak 156 MiB with glibc's defaults, 112 MiB so (one guest: 110 MiB).
    public static func configureForLongRunningProcess() {
        _ = snapdump_malloc_long_running(2, 1 << 20)
    }

    /// Hands the memory freed since the last call back to the kernel (after a job run).
    public static func returnFreedMemory() {
        _ = snapdump_malloc_trim()
    }

    /// VmRSS of this process in bytes, from /proc/self/status; nil when unreadable.
    public static func residentBytes() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kib = line.dropFirst("VmRSS:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { UInt64($0) }
            return kib.map { $0 * 1024 }
        }
        return nil
    }
}
