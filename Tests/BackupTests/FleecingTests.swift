import Foundation
import Guest
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

@Suite("Fleecing settings and limits")
struct FleecingSettingsTests {
    @Test func parsesProxmoxSyntax() throws {
        #expect(try FleecingSettings(parsing: "enabled=1,storage=local") == FleecingSettings(enabled: true, storage: "local"))
        #expect(try FleecingSettings(parsing: "1") == FleecingSettings(enabled: true, storage: nil))
        #expect(try FleecingSettings(parsing: "0,storage=fl") == FleecingSettings(enabled: false, storage: "fl"))
        for (bad, says) in [("enabled=2", "fleecing enabled"), ("storage=-x", "invalid storage id '-x'"), ("speed=1", "unknown key 'speed'")] {
            do {
                _ = try FleecingSettings(parsing: bad)
                Issue.record("'\(bad)' accepted")
            } catch {
                #expect("\(error)".contains(says), "\(error)")
            }
        }
    }

    @Test func commandLineAndVzdumpConfTakeTheTypedValue() throws {
        var cli = VzdumpValues()
        try cli.set("fleecing", "enabled=1,storage=fl", file: "--fleecing")
        let e = try BackupDefaults.merge(commandLine: cli, file: VzdumpValues(), storagePruneBackups: { _ in nil })
        #expect(e.options.fleecing == FleecingSettings(enabled: true, storage: "fl"))
        #expect(e.warnings.isEmpty, "\(e.warnings)")
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("fleecing", "enabled=yes please")]) }
    }

    @Test func limitsKeepAReserveAndShareByDiskSize() throws {
        let mib: UInt64 = 1 << 20
        // 24 MiB free: 8 MiB reserve (the minimum), 16 MiB for one disk.
        #expect(FleecingBackup.limits(available: 24 * mib, sizes: [128 * mib]) == [16 * mib])
        // 400 MiB free: a quarter kept back, the rest split 3:1.
        #expect(FleecingBackup.limits(available: 400 * mib, sizes: [96 * mib, 32 * mib]) == [225 * mib, 75 * mib])
        // The reserve is capped at 2 GiB.
        #expect(FleecingBackup.limits(available: 100 << 30, sizes: [1 << 30]) == [98 << 30])
        // Less than the reserve plus 1 MiB: no fleecing at all.
        #expect(FleecingBackup.limits(available: 9 * mib, sizes: [mib]) == nil)
    }
}

/// Samples the guest's heartbeat every 25 ms on its own thread; the longest
/// stretch without a new heartbeat is what a pause would show.
final class HeartbeatWatch: @unchecked Sendable {
    // @unchecked: `samples` is written by the sampling thread until `stop()` joins it.
    private var samples: [(t: Double, hb: Int)] = []
    private let lock = NSLock()
    private var running = true
    private let done = DispatchSemaphore(value: 0)

    /// The last `HB <n>` in the console's final 4 KiB (a fast guest's console grows quickly).
    static func lastHeartbeat(_ path: String) -> Int {
        guard let f = FileHandle(forReadingAtPath: path) else { return 0 }
        defer { try? f.close() }
        let end = (try? f.seekToEnd()) ?? 0
        try? f.seek(toOffset: end > 4096 ? end - 4096 : 0)
        let text = String(decoding: (try? f.readToEnd()) ?? Data(), as: UTF8.self)
        for line in text.split(whereSeparator: \.isNewline).reversed() where line.hasPrefix("HB ") {
            if let n = Int(line.dropFirst(3).trimmingCharacters(in: .whitespaces)) { return n }
        }
        return 0
    }

    init(_ h: GuestHarness, _ vmid: Int) {
        let console = h.consoleLog(vmid)
        Thread.detachNewThread { [self] in
            while lock.withLock({ running }) {
                let s = (Date().timeIntervalSince1970, Self.lastHeartbeat(console))
                lock.withLock { samples.append(s) }
                usleep(25_000)
            }
            done.signal()
        }
    }

    /// Stops sampling; returns the longest gap in seconds and the heartbeats seen first and last.
    func stop() -> (maxGap: Double, first: Int, last: Int) {
        lock.withLock { running = false }
        done.wait()
        var gap = 0.0
        var since = samples.first?.t ?? 0
        var last = samples.first?.hb ?? 0
        for s in samples where s.hb != last {
            gap = max(gap, s.t - since)
            since = s.t
            last = s.hb
        }
        gap = max(gap, (samples.last?.t ?? since) - since)
        return (gap, samples.first?.hb ?? 0, samples.last?.hb ?? 0)
    }
}

extension NothingLostTests {
    /// Backup fleecing against the running test guest on raw `dir` storage (which
    /// cannot snapshot): the guest is never paused, the archive is crash-consistent,
    /// a fleecing storage too small for what the guest writes fails the backup and
    /// not the guest, and signals (SIGKILL: the next run, or `vm unlock`) leave nothing.
    @Suite("Fleecing", .serialized, .enabled(if: Integration.available("SNAPDUMP_TEST_DIR")))
    struct FleecingTests {
        struct Summary: Decodable {
            var ok: Bool
            var mode: String?
            var method: String?
            var downtimeMs: Int64?
            var downtimeKind: String?
            var archive: String?
            var error: String?
        }

        func summary(_ bg: BackgroundBackup) throws -> Summary {
            let out = try FileSystem.readText(bg.stdoutPath)
            let s = try JSONDecoder().decode([Summary].self, from: Data(out.utf8))
            try #require(s.count == 1, "\(out)")
            return s[0]
        }

        /// The task log as text (stderr carries JSON events with `--output-format json`).
        func logText(_ stderr: String) -> String { TaskLogEvents.text(stderr) }

        func fleeceImages(_ h: GuestHarness, _ storage: String, _ vmid: Int) throws -> [String] {
            let dir = try #require(h.storageLocations()[storage]).location + "/images/\(vmid)"
            return ((try? FileSystem.list(dir)) ?? []).filter { $0.contains("-fleece-") }
        }

        func hasDat(_ dumpdir: String, _ vmid: Int) -> Bool {
            ((try? FileSystem.list(dumpdir)) ?? []).contains { $0.hasPrefix("vzdump-qemu-\(vmid)-") && $0.hasSuffix(".dat") }
        }

        @Test func fleecingOnRawDirNeverPausesTheGuest() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 480
            let h = try GuestHarness(label: "fleece-live")
            defer { h.tearDown() }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
            try h.addStorage("dir", "fl", under: dir, extra: ["--content", "images"])
            // Two raw disks (the second holds the ext2 fs that fs-freeze freezes): one transaction, one point in time.
            try h.createGuest(vmid, disk: "local:128M", fsDisk: "local:32M")
            try h.prefill(vmid, mib: 24, atMiB: 96)
            try await h.bootGuest(vmid)
            _ = try await h.waitForHeartbeat(vmid, above: 50, timeout: .seconds(30))
            let dumpdir = try #require(h.storageLocations()["local"]).location + "/dump"

            let watch = HeartbeatWatch(h, vmid)
            let before = h.lastHeartbeat(vmid)
            let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=fl",
                                              "--bwlimit", "4096", "--output-format", "json"])
            // The images exist on the fleecing storage while the archive is written.
            let sawImages = bg.wait(until: { ((try? fleeceImages(h, "fl", vmid)) ?? []).count == 2 })
            // In the archive phase the fleecing's watch holds QEMU's main monitor: `vm status` asks the status monitor, at once.
            let archivePhase = bg.wait(until: { hasDat(dumpdir, vmid) })
            let t0 = Date()
            let status = try h.run(["vm", "status", "\(vmid)"])
            let statusSeconds = Date().timeIntervalSince(t0)
            let stillWriting = hasDat(dumpdir, vmid)
            let end = bg.finish(timeout: 180)
            let after = h.lastHeartbeat(vmid)
            let beats = watch.stop()
            let err = logText(bg.stderr)
            #expect(end.status == 0 && !end.signaled, "\(err)")
            #expect(sawImages, "no fleecing images on storage 'fl' during the backup")
            #expect(archivePhase && stillWriting, "vm status was not asked during the archive phase")
            #expect(status.status == 0 && status.stdout.contains("status: running"), "\(status)")
            #expect(statusSeconds < 2, "'vm status' took \(statusSeconds) s during the fleecing backup (QEMU's monitor held?)")
            let s = try summary(bg)
            #expect(s.ok && s.mode == "snapshot" && s.method == "fleecing", "\(s)")
            #expect(err.contains("INFO: snapshot method: fleecing"), "\(err)")
            #expect(err.contains("scsi0 on local: raw files on dir storage") && err.contains("using fleecing instead"), "\(err)")
            #expect(!err.contains("trying 'suspend' mode") && !err.contains("suspending"), "\(err)")
            #expect(err.contains("INFO: started fleecing of scsi0, scsi1 (one QMP transaction)"), "\(err)")
            #expect(err.contains("INFO: guest agent froze 1 filesystem(s)"), "\(err)")
            #expect(s.downtimeKind == "frozen for fleecing" && (s.downtimeMs ?? 99999) < 5000, "\(s)")
            // The window's steps, fleecing's QMP start among them (on the window's one QMP session).
            let downtimeLine = err.split(separator: "\n").first { $0.contains("INFO: guest downtime: ") }.map(String.init) ?? ""
            #expect(downtimeLine.contains("(fs-freeze ") && downtimeLine.contains(", fleecing ") && downtimeLine.contains(", fs-thaw "), "\(downtimeLine)")
            // The backup took seconds (bwlimit); the heartbeats never stopped meanwhile.
            #expect(beats.maxGap < 2.5, "longest heartbeat gap during the fleecing backup: \(beats.maxGap) s")
            #expect(after > before + 100, "the guest wrote only \(after - before) records during the backup")
            print("fleecing backup: longest heartbeat gap \(String(format: "%.2f", beats.maxGap)) s, heartbeats \(before)…\(after)")
            #expect(try fleeceImages(h, "fl", vmid).isEmpty, "fleecing images left")
            #expect(err.contains("INFO: removed fleecing image"), "\(err)")
            let archive = try #require(s.archive)
            try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: archive)

            try h.must(["restore", archive, "\(vmid + 1)", "--storage", "local"])
            // The guest writes its records to the first SCSI disk *it* names sda; the kernel probes
            // disks asynchronously, so under load that can be scsi1. Check the disk that has them.
            let boot = { (r: [String: String]) in (Int(r["max_seq"] ?? "") ?? 0) > 0 }
            let key = try boot(h.checkRecords(volume: try h.volume(vmid, "scsi1"))) ? "scsi1" : "scsi0"
            print("fleecing backup: the guest's records are on \(key)")
            let report = try h.checkRecords(volume: try h.volume(vmid + 1, key))
            #expect(report["status"] == "consistent", "\(key): \(report)")
            let last = Int(report["last_contiguous"] ?? "") ?? -1
            #expect(last >= before && last <= after + 10, "last record \(last) not within heartbeats \(before)…\(after)")
        }

        /// The fleecing's watch holds the backup's QMP session, but hands QEMU's monitor
        /// back while a hook runs: `vm status` from the hook gets an answer at once.
        @Test func hookScriptsGetQEMUsMonitorDuringFleecing() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 495
            let h = try GuestHarness(label: "fleece-hook")
            defer { h.tearDown() }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
            try h.addStorage("dir", "fl", under: dir, extra: ["--content", "images"])
            try h.createGuest(vmid, disk: "local:64M", fsDisk: "local:32M")
            try await h.bootGuest(vmid)
            let hook = try RecordingHook(h)
            try hook.reset(recordStatus: true)
            let dumpdir = try #require(h.storageLocations()["local"]).location + "/dump"
            let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=fl",
                               "--script", hook.path, "--output-format", "json"])
            #expect(r.status == 0, "\(r)")
            #expect(logText(r.stderr).contains("INFO: started fleecing of scsi0, scsi1 (one QMP transaction)"), "\(r.stderr)")
            #expect(hook.phases == ["job-init", "job-start", "backup-start", "pre-stop", "pre-restart", "post-restart",
                                    "backup-end", "log-end", "job-end"], "\(hook.phases)")
            // pre-restart and post-restart run while fleecing is on: never paused, and the monitor is free.
            for call in hook.calls where ["pre-stop", "pre-restart", "post-restart", "backup-end"].contains(call[0]) {
                #expect(hook.env(call, "state") == "running", "\(call)")
                let ms = Int(hook.env(call, "statusms") ?? "") ?? 99999
                #expect(ms < 2500, "\(call[0]): 'vm status' took \(ms) ms (QEMU's monitor busy?)")
            }
            let summaries = try JSONDecoder().decode([Summary].self, from: Data(r.stdout.utf8))
            let s = try #require(summaries.first)
            #expect(s.ok && s.method == "fleecing", "\(s)")
            #expect(try fleeceImages(h, "fl", vmid).isEmpty, "fleecing images left")
            let archive = try #require(s.archive)
            try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: archive)
        }

        @Test func fleecingStorageTooSmallFailsTheBackupNotTheGuest() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 485
            let h = try GuestHarness(label: "fleece-full")
            // Our own 24 MiB tmpfs: nobody else's space is used up.
            let small = h.configDir + "/small"
            try FileSystem.createDirectory(small)
            try Command.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "snapdump-fleece-test", small])
            defer {
                h.tearDown()
                _ = try? Command.run(["umount", small])
            }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
            try h.addStorage("dir", "fl", under: small, extra: ["--content", "images"])
            // A guest writing as fast as it can over old data: every 64 KiB it reaches is copied to the fleecing image.
            try h.createGuest(vmid, disk: "local:256M", intervalMs: 0)
            try h.prefill(vmid, mib: 250, atMiB: 4)
            try await h.bootGuest(vmid)
            _ = try await h.waitForHeartbeat(vmid, above: 200, timeout: .seconds(30))
            let dumpdir = try #require(h.storageLocations()["local"]).location + "/dump"

            let watch = HeartbeatWatch(h, vmid)
            let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=fl",
                                              "--bwlimit", "1024", "--output-format", "json"])
            let end = bg.finish(timeout: 240)
            let beats = watch.stop()
            let err = logText(bg.stderr)
            #expect(end.status != 0 && !end.signaled, "\(end): \(err)")
            let s = try summary(bg)
            #expect(!s.ok && s.method == "fleecing", "\(s)")
            let error = s.error ?? ""
            #expect(error.contains("fleecing image") && error.contains("grew past")
                    && error.contains("fleecing aborted before the storage filled up, the guest keeps running"), "\(error)")
            // Never paused, never an I/O error: no pause was seen by the engine, no gap in the heartbeats, no error in the guest.
            for sign in ["the guest was paused during fleecing", "was paused by an I/O error", "I/O error on node"] {
                #expect(!err.contains(sign), "\(err)")
            }
            #expect(beats.maxGap < 2.5, "longest heartbeat gap: \(beats.maxGap) s")
            let console = try FileSystem.readText(h.consoleLog(vmid))
            #expect(!console.contains("WORKLOAD ERROR"), "the guest saw a write error")
            print("overflow: longest heartbeat gap \(String(format: "%.2f", beats.maxGap)) s, heartbeats \(beats.first)…\(beats.last)")
            #expect(try fleeceImages(h, "fl", vmid).isEmpty, "fleecing images left")
            try await expectInvariants(h, vmid, dumpdir: dumpdir)

            // All of the guest's writes are on its disk.
            let last = h.lastHeartbeat(vmid)
            try h.must(["vm", "shutdown", "\(vmid)"])
            let report = try h.checkRecords(volume: try h.volume(vmid))
            #expect(report["status"] == "consistent", "\(report)")
            #expect((Int(report["last_contiguous"] ?? "") ?? -1) >= last, "\(report), last heartbeat \(last)")
        }

        @Test func signalsDuringFleecingKeepTheInvariants() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 490
            let h = try GuestHarness(label: "fleece-signal")
            defer { h.tearDown() }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
            try h.addStorage("dir", "fl", under: dir, extra: ["--content", "images"])
            try h.createGuest(vmid, disk: "local:128M")
            try h.prefill(vmid, mib: 24, atMiB: 64)
            try await h.bootGuest(vmid)
            let dumpdir = try #require(h.storageLocations()["local"]).location + "/dump"
            let args = ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=fl", "--bwlimit", "1024"]

            func startAndWait() throws -> BackgroundBackup {
                nextSecond()
                let bg = try BackgroundBackup(h, args)
                let ok = bg.wait(until: { hasDat(dumpdir, vmid) && bg.stderr.contains("INFO: guest downtime:") })
                try #require(ok, "backup never reached the archive phase: \(bg.stderr)")
                usleep(300_000)
                return bg
            }

            for (sig, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
                let bg = try startAndWait()
                bg.signal(sig)
                let end = bg.finish(timeout: 60)
                #expect(!end.signaled && end.status != 0, "\(name): \(bg.stderr)")
                #expect(bg.stderr.contains("ERROR: Backup of VM \(vmid) failed - interrupted by signal \(name)"), "\(bg.stderr)")
                #expect(bg.stderr.contains("INFO: removed fleecing image"), "\(bg.stderr)")
                #expect(try fleeceImages(h, "fl", vmid).isEmpty, "\(name): fleecing images left")
                try await expectInvariants(h, vmid, dumpdir: dumpdir)
            }

            // SIGKILL leaves the job, the export and the image inside QEMU; the guest writes on through the job.
            func kill() async throws -> String {
                let bg = try startAndWait()
                bg.signal(SIGKILL)
                let end = bg.finish(timeout: 30)
                #expect(end.signaled && end.status == SIGKILL, "\(end)")
                let images = try fleeceImages(h, "fl", vmid)
                #expect(images.count == 1, "the killed run's fleecing image: \(images)")
                _ = try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid) + 20, timeout: .seconds(20))
                return images.first ?? "?"
            }

            // The next run removes it all and says so.
            let image = try await kill()
            let dat = try #require(try FileSystem.list(dumpdir).first { $0.hasPrefix("vzdump-qemu-\(vmid)-") && $0.hasSuffix(".dat") })
            nextSecond()
            let r = try h.run(["backup"] + args.filter { $0 != "--bwlimit" && $0 != "1024" })
            #expect(r.status == 0, "\(r)")
            let imagePath = try #require(h.storageLocations()["fl"]).location + "/images/\(vmid)/\(image)"
            for line in ["WARN: VM \(vmid) has a stale 'backup' lock left by an earlier run that was killed - removing it",
                         "WARN: removed NBD export snapdump-fleecing-scsi0, left by an earlier run that was killed",
                         "WARN: removed block job snapdump-fleecing-scsi0, left by an earlier run that was killed",
                         "WARN: removed block node snapdump-fleece-scsi0, left by an earlier run that was killed",
                         "WARN: removed fleecing image \(imagePath), left by an earlier run that was killed",
                         "WARN: removed unfinished archive \(dumpdir)/\(dat), left by an earlier run that was killed"] {
                #expect(r.stderr.contains(line), "missing: \(line)\n\(r.stderr)")
            }
            #expect(try fleeceImages(h, "fl", vmid).isEmpty, "fleecing images left")
            let archives = try FileSystem.list(dumpdir).filter { $0.hasPrefix("vzdump-qemu-\(vmid)-") && $0.hasSuffix(".vma") }
            try #require(archives.count == 1, "\(archives)")
            try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: dumpdir + "/" + archives[0])
            try FileSystem.remove(dumpdir + "/" + archives[0])

            // Or `vm unlock` does.
            _ = try await kill()
            let u = try h.run(["vm", "unlock", "\(vmid)"])
            #expect(u.status == 0, "\(u)")
            #expect(u.stderr.contains("WARN: removed block job snapdump-fleecing-scsi0, left by a backup that was killed"), "\(u)")
            #expect(try fleeceImages(h, "fl", vmid).isEmpty, "vm unlock left the fleecing image")
            for f in try FileSystem.list(dumpdir) where f.hasSuffix(".dat") { try FileSystem.remove(dumpdir + "/" + f) }
            try await expectInvariants(h, vmid, dumpdir: dumpdir)
        }
    }
}
