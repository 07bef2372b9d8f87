#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Scheduler

/// Issue 15: snapdumpd's resident size must come back after each run, not keep
/// what a run left in glibc's arenas (idle 115–297 MiB after runs before the fix).
/// The scheduler's own `runJob` with the real backup engine, in this process,
/// set up as snapdumpd sets itself up; a bound on growth, not on timing.
@Suite(.serialized) struct DaemonMemoryTests {
    @Test(.enabled(if: Integration.required), .timeLimit(.minutes(5)))
    func residentSizeReturnsAfterEachRun() async throws {
        let snapdump = SnapdumpBinary.binary
        let dir = try Integration.scratchDirectory("daemon-memory")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = ["--config-dir", dir + "/etc"]
        func cli(_ args: [String]) throws -> String { try Command.run([snapdump] + args + cfg) }
        try FileSystem.createDirectory(dir + "/store")
        _ = try cli(["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"])
        var vmids: [String] = []
        for i in 1...8 {
            let vmid = 7100 + i
            let vol = try cli(["volume", "alloc", "local", "\(vmid)", "32M"]).trimmingCharacters(in: .whitespacesAndNewlines)
            let f = try File.open(try cli(["volume", "path", vol]).trimmingCharacters(in: .whitespacesAndNewlines), O_WRONLY)
            var bytes = [UInt8](repeating: 0, count: 8 << 20)
            for j in bytes.indices { bytes[j] = UInt8(truncatingIfNeeded: (j &* 2654435761) >> 13 ^ i) }
            try f.writeAll(bytes)
            try f.close()
            _ = try cli(["vm", "create", "\(vmid)", "--scsi0", vol])
            vmids.append("\(vmid)")
        }
        _ = try cli(["job", "add", "--id", "mem", "--schedule", "*/1", "--vmid", vmids.joined(separator: ","),
                     "--storage", "local", "--mode", "stop", "--compress", "zstd", "--prune-backups", "keep-last=1"])

        ProcessMemory.configureForLongRunningProcess()
        let paths = SnapdumpPaths(configDir: dir + "/etc", runDir: dir + "/etc/run")
        let scheduler = Scheduler(paths: paths, runner: BackupJobRunner(echo: false), logger: Logger(label: "test"))
        let job = try #require(try JobsConfig.load(paths: paths).job("mem"))
        var after: [UInt64] = []
        for _ in 0..<6 {
            let outcome = await scheduler.runJob(job, trigger: "manual")
            #expect(outcome.ok, "\(outcome.error ?? "")")
            after.append(try #require(ProcessMemory.residentBytes()) >> 20)
        }
        print("[daemon memory] RSS after each run (MiB): \(after)")
        // The first run sets the level (libraries, zstd's tables); later runs must not add to it.
        let growth = Int(after.dropFirst().max()!) - Int(after[0])
        #expect(growth <= 24, "RSS after each run, MiB: \(after)")
    }
}
