import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// One backup job per host: a second job waits `lockwait` minutes for the
/// global lock, then fails with vzdump's message and touches nothing.
@Suite("Global backup lock", .serialized)
struct GlobalLockTests {
    @Test func secondJobTimesOutWithVzdumpsMessage() async throws {
        let dir = try Integration.scratchDirectory("lock")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileSystem.createDirectory(dir + "/store")
        for args in [["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"],
                     ["vm", "create", "100", "--scsi0", "local:64M"], ["vm", "create", "101", "--scsi0", "local:8M"]] {
            let r = try SnapdumpBinary.run(args, configDir: dir)
            try #require(r.status == 0, "\(r)")
        }
        let disk = try SnapdumpBinary.run(["volume", "path", "local:100/vm-100-disk-0.raw"], configDir: dir).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=1M", "count=16", "conv=notrunc", "status=none"])

        // The first job reads 16 MiB at 2 MiB/s: it holds the lock for about 8 s.
        let first = Process()
        first.executableURL = URL(fileURLWithPath: SnapdumpBinary.binary)
        first.arguments = ["backup", "100", "--storage", "local", "--bwlimit", "2048", "--quiet", "--config-dir", dir]
        first.standardOutput = FileHandle.nullDevice
        first.standardError = FileHandle.nullDevice
        try first.run()
        defer { if first.isRunning { first.terminate() } }
        // Wait until it holds the lock (its archive's .dat appears).
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !((try? FileSystem.list(dir + "/store/dump")) ?? []).contains(where: { $0.hasSuffix(".dat") }) {
            try await Task.sleep(for: .milliseconds(50))
        }

        let t0 = Date()
        let second = try SnapdumpBinary.run(["backup", "101", "--storage", "local", "--lockwait", "0.05"], configDir: dir)
        let waited = Date().timeIntervalSince(t0)
        #expect(second.status != 0)
        #expect(second.stderr.contains("can't acquire lock"), "\(second)")
        #expect(second.stderr.contains("got timeout"), "\(second)")
        #expect(waited >= 2.5, "gave up after \(waited) s, lockwait is 3 s")
        #expect(!((try? FileSystem.list(dir + "/store/dump")) ?? []).contains { $0.hasPrefix("vzdump-qemu-101-") })
        #expect(!(try FileSystem.readText(dir + "/qemu/101.conf")).contains("lock:"))

        first.waitUntilExit()
        #expect(first.terminationStatus == 0)
        // Once the first job is done, the lock is free again.
        let third = try SnapdumpBinary.run(["backup", "101", "--storage", "local", "--lockwait", "0.05"], configDir: dir)
        #expect(third.status == 0, "\(third)")
    }
}
