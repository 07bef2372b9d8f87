import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// Backups of the running test guest in every mode on every storage type,
/// through the real CLI: restore to a new VMID, then the record checker must
/// find a crash-consistent disk, and in snapshot mode the last record must lie
/// between the heartbeats seen just before and just after the backup.
@Suite("Backup of a running guest", .serialized, .enabled(if: Integration.available("SNAPDUMP_TEST_BTRFS")))
struct BackupIntegrationTests {
    struct Summary: Decodable {
        var vmid: Int
        var ok: Bool
        var mode: String?
        var requestedMode: String
        var fallbackReason: String?
        var downtimeMs: Int64?
        var downtimeKind: String?
        var downtimeParts: [String: Int64]?
        var archive: String?
        var error: String?
    }

    struct Outcome {
        var summary: Summary
        var stderr: String
        var before: Int
        var after: Int
    }

    func backup(_ h: GuestHarness, _ vmid: Int, _ args: [String]) throws -> Outcome {
        let before = h.lastHeartbeat(vmid)
        let r = try h.run(["backup", "\(vmid)", "--output-format", "json"] + args)
        let after = h.lastHeartbeat(vmid)
        let s = try JSONDecoder().decode([Summary].self, from: Data(r.stdout.utf8))
        try #require(s.count == 1, "backup output: \(r)")
        return Outcome(summary: s[0], stderr: TaskLogEvents.text(r.stderr), before: before, after: after)
    }

    /// Restores `archive` to `target` on `storage` and returns the checker's report.
    func restoreAndCheck(_ h: GuestHarness, archive: String, target: Int, storage: String) throws -> [String: String] {
        try h.must(["restore", archive, "\(target)", "--storage", storage])
        // The guest writes its records to the first SCSI disk *it* names sda; the kernel probes
        // disks asynchronously, so under load that can be scsi1 of a guest with two disks.
        // Check scsi0 unless it holds no record and scsi1 does.
        let first = try h.checkRecords(volume: try h.volume(target, "scsi0"))
        let config = try FileSystem.readText(h.paths.vmConfig(target))
        guard (Int(first["max_seq"] ?? "") ?? 0) == 0, config.contains("\nscsi1:") else { return first }
        let other = try h.checkRecords(volume: try h.volume(target, "scsi1"))
        return (Int(other["max_seq"] ?? "") ?? 0) > 0 ? other : first
    }

    /// Invariants after every backup, failed or not: guest running and writing, no lock, no snapshot, no temp file.
    func expectClean(_ h: GuestHarness, _ vmid: Int, dumpdir: String) async throws {
        let status = try h.must(["vm", "status", "\(vmid)"]).stdout
        #expect(status.contains("status: running"), "guest not running after backup: \(status)")
        #expect(!status.contains("lock:"), "lock left: \(status)")
        let hb = h.lastHeartbeat(vmid)
        _ = try await h.waitForHeartbeat(vmid, above: hb, timeout: .seconds(20))
        let snaps = try h.must(["snapshot", "list"]).stdout.split(separator: "\n").dropFirst()
        #expect(snaps.isEmpty, "snapshots left: \(snaps)")
        let leftovers = ((try? FileSystem.list(dumpdir)) ?? []).filter { $0.hasSuffix(".dat") || $0.contains(".tmp.") }
        #expect(leftovers.isEmpty, "temporary files left in \(dumpdir): \(leftovers)")
    }

    /// Crash-consistent, and the last record lies between the heartbeats seen just
    /// before and just after the backup (the console may lag the disk by a few records).
    func expectSnapshotConsistent(_ report: [String: String], _ o: Outcome, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(report["status"] == "consistent", "\(report)", sourceLocation: sourceLocation)
        let last = Int(report["last_contiguous"] ?? "") ?? -1
        #expect(last >= o.before && last <= o.after + 10, "last record \(last) not within heartbeats \(o.before)…\(o.after)",
                sourceLocation: sourceLocation)
    }

    @Test func snapshotOnBtrfsIsLiveAndCrashConsistent() async throws {
        let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-btrfs")
        defer { h.tearDown() }
        try h.addStorage("btrfs", "bt", under: btrfs)
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(300, disk: "bt:128M")
        _ = try await h.waitForHeartbeat(300, above: 100, timeout: .seconds(30))

        let o = try backup(h, 300, ["--mode", "snapshot", "--storage", "local", "--compress", "zstd"])
        #expect(o.summary.ok, "\(o.summary.error ?? "") \(o.stderr)")
        #expect(o.summary.mode == "snapshot")
        #expect(o.summary.fallbackReason == nil)
        #expect((o.summary.downtimeMs ?? 0) < 5000)
        #expect(o.stderr.contains("INFO: guest downtime:"))
        let archive = try #require(o.summary.archive)
        #expect(archive.hasSuffix(".vma.zst") && FileSystem.exists(archive))
        #expect(FileSystem.exists(archive.replacingOccurrences(of: ".vma.zst", with: ".log")))
        try await expectClean(h, 300, dumpdir: (archive as NSString).deletingLastPathComponent)

        let report = try restoreAndCheck(h, archive: archive, target: 301, storage: "local")
        expectSnapshotConsistent(report, o)
    }

    @Test func rawDirFallsBackToSuspendLoudly() async throws {
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-fallback")
        defer { h.tearDown() }
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(310, disk: "local:128M")

        let o = try backup(h, 310, ["--mode", "snapshot", "--storage", "local"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.requestedMode == "snapshot" && o.summary.mode == "suspend")
        #expect(o.stderr.contains("WARN: mode failure - some volumes do not support snapshots (scsi0 on local: raw files on dir storage)"))
        #expect(o.stderr.contains("INFO: trying 'suspend' mode instead"))
        #expect(o.summary.downtimeKind == "paused" && (o.summary.downtimeMs ?? 0) > 0)
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 310, dumpdir: (archive as NSString).deletingLastPathComponent)
        let report = try restoreAndCheck(h, archive: archive, target: 311, storage: "local")
        #expect(report["status"] == "consistent", "\(report)")
    }

    @Test func refuseFallbackTouchesNothing() async throws {
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-refuse")
        defer { h.tearDown() }
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(320, disk: "local:128M")
        let configBefore = try FileSystem.readText(h.configDir + "/qemu/320.conf")

        let r = try h.run(["backup", "320", "--mode", "snapshot", "--storage", "local", "--snapshot-fallback", "refuse"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("mode failure - some volumes do not support snapshots"))
        #expect(!r.stderr.contains("suspending guest"))
        #expect(try FileSystem.readText(h.configDir + "/qemu/320.conf") == configBefore)
        try await expectClean(h, 320, dumpdir: dir)
    }

    /// Two disks cloned one by one: the guest is paused around the clones
    /// (one disk alone is not: a FICLONE is atomic by itself, see
    /// SnapshotPlanTests).
    @Test func reflinkOnXFSPausesForMilliseconds() async throws {
        let xfs = try Integration.require("SNAPDUMP_TEST_XFS")
        let h = try GuestHarness(label: "bk-xfs")
        defer { h.tearDown() }
        try h.addStorage("dir", "xfs", under: xfs, extra: ["--content", "images,backup", "--reflink", "1"])
        try await h.startGuest(330, disk: "xfs:128M", more: ["xfs:16M"])
        let o = try backup(h, 330, ["--mode", "snapshot", "--storage", "xfs", "--compress", "gzip"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.mode == "snapshot")
        #expect(o.summary.downtimeKind == "paused for snapshot" || o.summary.downtimeKind == "frozen for snapshot")
        // Paused and resumed over the window's one QMP session, each step timed.
        #expect(o.summary.downtimeParts.map { Set($0.keys).isSuperset(of: ["pause", "snapshot", "resume"]) } == true, "\(o.stderr)")
        let archive = try #require(o.summary.archive)
        #expect(archive.hasSuffix(".vma.gz"))
        try await expectClean(h, 330, dumpdir: (archive as NSString).deletingLastPathComponent)
        let report = try restoreAndCheck(h, archive: archive, target: 331, storage: "xfs")
        expectSnapshotConsistent(report, o)
    }

    @Test func zfsSnapshotOfARunningGuest() async throws {
        let pool = try Integration.require("SNAPDUMP_TEST_ZPOOL")
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-zfs")
        defer { h.tearDown() }
        try h.addZFSPool("tank", pool: pool)
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(340, disk: "tank:128M")
        let o = try backup(h, 340, ["--mode", "snapshot", "--storage", "local", "--compress", "zstd"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.mode == "snapshot")
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 340, dumpdir: (archive as NSString).deletingLastPathComponent)
        let zsnaps = try Command.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", pool])
        #expect(!zsnaps.contains("vm-340"), "zfs snapshots left: \(zsnaps)")
        let report = try restoreAndCheck(h, archive: archive, target: 341, storage: "local")
        expectSnapshotConsistent(report, o)
    }

    /// The guest runs from an RBD image through QEMU's librbd driver; the backup
    /// snapshots the image (`rbd snap create`) and reads the snapshot through
    /// librbd; the restore writes a new image through librbd.
    @Test func rbdSnapshotOfARunningGuest() async throws {
        let ceph = try CephFixture.require()
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-rbd")
        defer { h.tearDown() }
        let pool = try h.addRBD("ceph", ceph: ceph)
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(370, disk: "ceph:128M")
        let qemu = try #require(h.pid(370).flatMap { try? FileSystem.readText("/proc/\($0)/cmdline") })
        #expect(qemu.contains("driver=rbd,pool=\(pool),image=vm-370-disk-0"), "QEMU does not open the image through librbd: \(qemu)")

        let o = try backup(h, 370, ["--mode", "snapshot", "--storage", "local", "--compress", "zstd"])
        #expect(o.summary.ok, "\(o.summary.error ?? "") \(o.stderr)")
        #expect(o.summary.mode == "snapshot" && o.summary.fallbackReason == nil, "\(o.stderr)")
        print("[rbd] guest downtime \(o.summary.downtimeMs ?? -1) ms (\(o.summary.downtimeKind ?? "?")): \(o.summary.downtimeParts ?? [:])")
        // One image: its rbd snapshot is atomic by itself, so the guest is never paused (and the
        // test guest has no filesystem for the agent to freeze): no downtime at all.
        #expect(o.summary.downtimeMs == nil && o.summary.downtimeParts == nil && o.summary.downtimeKind == "none (atomic snapshot)", "\(o.stderr)")
        #expect(o.stderr.contains("INFO: guest downtime: 0 ms (atomic snapshot; the guest was neither paused nor had a filesystem frozen)"), "\(o.stderr)")
        #expect(!o.stderr.contains("paused for snapshot"), "\(o.stderr)")
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 370, dumpdir: (archive as NSString).deletingLastPathComponent)
        let left = try ceph.snapshots(pool)
        #expect(left.isEmpty, "rbd snapshots left: \(left)")

        let report = try restoreAndCheck(h, archive: archive, target: 371, storage: "ceph")
        expectSnapshotConsistent(report, o)
        let images = try ceph.cli(["rbd", "ls", pool]).split(separator: "\n")
        #expect(images.sorted() == ["vm-370-disk-0", "vm-371-disk-0"], "images: \(images)")
    }

    /// Two RBD images: one group snapshot of both (RBD group `vm-<vmid>`), so the guest
    /// is not paused; the archive holds each image as it was at the group snapshot —
    /// the `pre-restart` hook, run after the window and before the archive is read,
    /// overwrites the second image's head, and the restore still has the old bytes —
    /// and no group or snapshot is left.
    @Test func rbdGroupSnapshotOfTwoImagesWithoutAPause() async throws {
        let ceph = try CephFixture.require()
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-rbdgrp")
        defer { h.tearDown() }
        let pool = try h.addRBD("ceph", ceph: ceph)
        try h.addStorage("dir", "local", under: dir, extra: ["--content", "images,backup"])
        try await h.startGuest(372, disk: "ceph:128M", more: ["ceph:16M"])
        // The guest writes its records from 1 MiB on; the first MiB of scsi1 holds a pattern written from the host.
        let second = try h.volumePath("ceph:vm-372-disk-1")
        try Command.run(["qemu-io", "-f", "raw", "-c", "write -q -P 0x5a 0 1M", second])
        let hook = h.configDir + "/overwrite-hook.sh", failOnce = h.configDir + "/fail-once", seen = h.configDir + "/group-snapshots"
        try FileSystem.writeAtomically(hook, """
            #!/bin/sh
            [ "$1" = pre-restart ] || exit 0
            if [ -e '\(failOnce)' ]; then
                rm -f '\(failOnce)'
                rbd --conf '\(ceph.conf)' group snap ls '\(pool)/vm-372' > '\(seen)'
                echo 'hook fails on purpose' >&2
                exit 1
            fi
            exec qemu-io -f raw -c 'write -q -P 0xee 0 1M' '\(second)'

            """)
        chmod(hook, 0o755)

        // A backup that fails after its group snapshot (the hook, right after the window): the
        // group snapshot and the group go, the guest runs on.
        try FileSystem.writeAtomically(failOnce, "")
        let failed = try backup(h, 372, ["--mode", "snapshot", "--storage", "local", "--script", hook])
        #expect(!failed.summary.ok, "\(failed.stderr)")
        #expect(failed.stderr.contains("failed in phase 'pre-restart'"), "\(failed.stderr)")
        // The hook saw the group snapshot.
        #expect(((try? FileSystem.readText(seen)) ?? "").contains("snapdump-"), "group snapshots at pre-restart: \((try? FileSystem.readText(seen)) ?? "none")")
        // (Its dump directory is checked for partial files after the next backup, which names it.)
        try await expectClean(h, 372, dumpdir: h.configDir)
        #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty, "rbd group left after a failed backup")
        #expect(try ceph.cli(["rbd", "snap", "ls", "--all", "\(pool)/vm-372-disk-0"]).isEmpty)

        let o = try backup(h, 372, ["--mode", "snapshot", "--storage", "local", "--compress", "zstd", "--script", hook])
        #expect(o.summary.ok, "\(o.summary.error ?? "") \(o.stderr)")
        #expect(o.summary.mode == "snapshot" && o.summary.fallbackReason == nil, "\(o.stderr)")
        print("[rbd group] guest downtime \(o.summary.downtimeMs ?? -1) ms (\(o.summary.downtimeKind ?? "-")): \(o.summary.downtimeParts ?? [:])")
        // Never paused (and no filesystem in the test guest to freeze): no downtime at all.
        #expect(o.summary.downtimeMs == nil && o.summary.downtimeKind == "none (atomic snapshot)" && o.summary.downtimeParts == nil, "\(o.stderr)")
        #expect(o.stderr.contains("INFO: guest downtime: 0 ms (atomic snapshot; the guest was neither paused nor had a filesystem frozen)"), "\(o.stderr)")
        #expect(!o.stderr.contains("paused for snapshot") && !o.stderr.contains("suspending"), "\(o.stderr)")
        #expect(o.stderr.contains("created storage snapshot") && o.stderr.contains("2 volume(s) on ceph in "), "\(o.stderr)")
        if let line = o.stderr.split(separator: "\n").first(where: { $0.contains("created storage snapshot") }) { print("[rbd group] \(line)") }
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 372, dumpdir: (archive as NSString).deletingLastPathComponent)
        #expect(try ceph.snapshots(pool).isEmpty)
        #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty, "rbd groups left")
        for image in ["vm-372-disk-0", "vm-372-disk-1"] {
            let all = try ceph.cli(["rbd", "snap", "ls", "--all", "\(pool)/\(image)"])
            #expect(all.isEmpty, "snapshots left on \(image): \(all)")
        }
        // The hook did overwrite the head.
        #expect(try Command.capture(["qemu-io", "-f", "raw", "-c", "read -q -P 0xee 0 1M", second]).stdout.isEmpty)

        // The guest's workload writes to the first SCSI disk its kernel names (/dev/sda): with two disks
        // probed at once, under load, that is sometimes scsi1. Its records are on whichever it is.
        try h.must(["restore", archive, "373", "--storage", "ceph"])
        let config = try h.must(["vm", "config", "373"]).stdout.split(separator: "\n")
        func volid(_ key: String) throws -> String {
            let line = try #require(config.first { $0.hasPrefix(key + ":") }, "no \(key) in \(config)")
            return String(line.dropFirst(key.count + 2).split(separator: ",")[0])
        }
        let reports = try [volid("scsi0"), volid("scsi1")].map { try h.checkRecords(volume: $0) }
        let written = reports.filter { (Int($0["max_seq"] ?? "") ?? 0) > 0 }
        #expect(written.count == 1, "records on \(written.count) restored disks: \(reports)")
        if let report = written.first {
            print("[rbd group] records \(report), heartbeats \(o.before)…\(o.after)")
            expectSnapshotConsistent(report, o)
        }
        let restored = try h.volumePath(try volid("scsi1"))
        let check = try Command.capture(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", restored])
        #expect(check.status == 0 && !check.stdout.contains("Pattern verification failed"), "restored scsi1: \(check.stdout)")
    }

    /// A backup killed after its group snapshot left the snapshot and the group `vm-<vmid>`:
    /// `vm unlock` removes both with the stale lock; a snapshot of someone else's stays.
    @Test func vmUnlockRemovesTheGroupSnapshotAKilledBackupLeft() throws {
        let ceph = try CephFixture.require()
        let h = try GuestHarness(label: "bk-rbdunl")
        defer { h.tearDown() }
        let pool = try h.addRBD("ceph", ceph: ceph)
        try h.must(["vm", "create", "374", "--memory", "64", "--scsi0", "ceph:8M", "--scsi1", "ceph:8M"])
        let volumes = ["ceph:vm-374-disk-0", "ceph:vm-374-disk-1"]
        try h.must(["snapshot", "create"] + volumes + ["--name", "snapdump-1700000000"])
        #expect(try ceph.cli(["rbd", "group", "ls", pool]) == "vm-374\n")
        let path = h.configDir + "/qemu/374.conf"
        try FileSystem.writeAtomically(path, try FileSystem.readText(path) + "lock: backup\n")

        let r = try h.must(["vm", "unlock", "374"])
        #expect(r.stderr.contains("WARN: removed snapshot 'snapdump-1700000000'"), "\(r.stderr)")
        #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty, "rbd group left")
        #expect(try h.must(["snapshot", "list"]).stdout.split(separator: "\n").dropFirst().isEmpty)
        #expect(!(try FileSystem.readText(path)).contains("lock:"))

        // Not snapdump's: left alone.
        try h.must(["snapshot", "create"] + volumes + ["--name", "mine"])
        try FileSystem.writeAtomically(path, try FileSystem.readText(path) + "lock: backup\n")
        try h.must(["vm", "unlock", "374"])
        #expect(try ceph.cli(["rbd", "group", "ls", pool]) == "vm-374\n")
        try h.must(["snapshot", "delete"] + volumes + ["--name", "mine"])
        #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty, "rbd group left")
    }

    @Test func qcow2OnDirUsesQEMUOverlays() async throws {
        let dir = try Integration.require("SNAPDUMP_TEST_DIR")
        let h = try GuestHarness(label: "bk-qcow2")
        defer { h.tearDown() }
        try h.addStorage("dir", "qc", under: dir, extra: ["--content", "images,backup", "--format", "qcow2"])
        try await h.startGuest(350, disk: "qc:128M")
        let o = try backup(h, 350, ["--mode", "snapshot", "--storage", "qc"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.mode == "snapshot")
        #expect(o.stderr.contains("QEMU qcow2 overlays"))
        #expect(o.stderr.contains("merged overlay of scsi0"))
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 350, dumpdir: (archive as NSString).deletingLastPathComponent)
        let image = try h.must(["volume", "path", "qc:350/vm-350-disk-0.qcow2"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let images = try FileSystem.list((image as NSString).deletingLastPathComponent)
        #expect(images == ["vm-350-disk-0.qcow2"], "overlay files left: \(images)")
        let report = try restoreAndCheck(h, archive: archive, target: 351, storage: "qc")
        expectSnapshotConsistent(report, o)
    }

    @Test func stopModeRestartsTheGuest() async throws {
        let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let h = try GuestHarness(label: "bk-stop")
        defer { h.tearDown() }
        try h.addStorage("btrfs", "bt", under: btrfs, extra: ["--content", "images,backup"])
        try await h.startGuest(360, disk: "bt:128M")
        let pidBefore = h.pid(360)
        let o = try backup(h, 360, ["--mode", "stop", "--storage", "bt", "--stopwait", "1"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.mode == "stop" && o.summary.downtimeKind == "stopped")
        #expect(o.stderr.contains("stopping virtual guest"))
        let pidAfter = h.pid(360)
        #expect(pidAfter != nil && pidAfter != pidBefore, "guest not restarted")
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 360, dumpdir: (archive as NSString).deletingLastPathComponent)
        // A clean shutdown: the archive holds every record the guest wrote before stopping.
        let report = try restoreAndCheck(h, archive: archive, target: 361, storage: "bt")
        #expect(report["status"] == "consistent", "\(report)")
        #expect((Int(report["last_contiguous"] ?? "") ?? -1) >= o.before)
    }

    /// Rewrites one line of VM `vmid`'s config (the CLI has no `vm set`).
    func editConfig(_ h: GuestHarness, _ vmid: Int, _ key: String, _ change: (String) -> String) throws {
        let path = h.configDir + "/qemu/\(vmid).conf"
        let lines = try FileSystem.readText(path).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.contains { $0.hasPrefix(key + ":") }, "no \(key) in \(path)")
        try FileSystem.writeAtomically(path, lines.map { $0.hasPrefix(key + ":") ? change($0) : $0 }.joined(separator: "\n"))
    }

    /// Issue 13, item 3: the restart after a stop-mode backup uses every drive the guest
    /// started with, not only the backed-up ones; a `backup=0` disk used to leave it stopped.
    @Test func stopModeWithABackup0DiskRestartsTheGuestWithIt() async throws {
        let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let h = try GuestHarness(label: "bk-stop-b0")
        defer { h.tearDown() }
        try h.addStorage("btrfs", "bt", under: btrfs, extra: ["--content", "images,backup"])
        try h.createGuest(362, disk: "bt:128M", fsDisk: "bt:32M")
        try editConfig(h, 362, "scsi1") { $0 + ",backup=0" }
        try await h.bootGuest(362)
        let pidBefore = h.pid(362)
        let o = try backup(h, 362, ["--mode", "stop", "--storage", "bt", "--stopwait", "1"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.stderr.contains("exclude disk 'scsi1'"), "\(o.stderr)")
        let pidAfter = try #require(h.pid(362), "guest left stopped: \(o.stderr)")
        #expect(pidAfter != pidBefore)
        // Restarted with the excluded disk too.
        let cmdline = try FileSystem.readText("/proc/\(pidAfter)/cmdline").replacingOccurrences(of: "\0", with: " ")
        #expect(cmdline.contains("node-name=drive-scsi1"), "\(cmdline)")
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 362, dumpdir: (archive as NSString).deletingLastPathComponent)
        let list = try Command.run([SnapdumpBinary.binary, "vma", "list", archive])
        #expect(list.contains("drive-scsi0") && !list.contains("drive-scsi1"), "\(list)")
    }

    /// Issue 13, item 4, and issue 15: with a mounted filesystem and the agent answering, the
    /// window is fs-freeze, snapshot, fs-thaw — each step logged and stored (log, summary,
    /// snapdump.json), the host flushed before it; with `freeze-fs-on-backup=0` in the VM's
    /// `agent:` property there is no freeze at all.
    @Test func freezeWindowPartsAndFreezeFsOnBackup0() async throws {
        let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let h = try GuestHarness(label: "bk-nofreeze")
        defer { h.tearDown() }
        try h.addStorage("btrfs", "bt", under: btrfs, extra: ["--content", "images,backup"])
        try h.createGuest(364, disk: "bt:128M", fsDisk: "bt:32M")
        try await h.bootGuest(364)

        let frozen = try backup(h, 364, ["--mode", "snapshot", "--storage", "bt"])
        #expect(frozen.summary.ok, "\(frozen.stderr)")
        let parts = try #require(frozen.summary.downtimeParts, "\(frozen.stderr)")
        #expect(Set(parts.keys) == ["fs-freeze", "snapshot", "fs-thaw"], "\(parts)")
        let line = try #require(frozen.stderr.split(separator: "\n").first { $0.hasPrefix("INFO: guest downtime:") })
        #expect(line.contains("ms (fs-freeze ") && line.contains(", snapshot ") && line.contains(", fs-thaw "), "\(line)")
        let flushed = try #require(frozen.stderr.range(of: "INFO: flushed host caches"), "\(frozen.stderr)")
        let freeze = try #require(frozen.stderr.range(of: "INFO: issuing guest-agent 'fs-freeze'"))
        #expect(flushed.lowerBound < freeze.lowerBound)
        let archive1 = try #require(frozen.summary.archive)
        let json = try Command.run([SnapdumpBinary.binary, "vma", "config", archive1, "--config", "snapdump.json"])
        #expect(json.contains("\"downtimeParts\"") && json.contains("\"fs-freeze\""), "\(json)")
        try await expectClean(h, 364, dumpdir: (archive1 as NSString).deletingLastPathComponent)

        try editConfig(h, 364, "agent") { _ in "agent: enabled=1,freeze-fs-on-backup=0" }
        nextSecond()
        let o = try backup(h, 364, ["--mode", "snapshot", "--storage", "bt"])
        #expect(o.summary.ok, "\(o.stderr)")
        #expect(o.summary.mode == "snapshot")
        #expect(o.stderr.contains("skipping guest-agent 'fs-freeze': disabled in VM options"), "\(o.stderr)")
        #expect(!o.stderr.contains("issuing guest-agent 'fs-freeze'"), "\(o.stderr)")
        #expect(o.summary.downtimeMs == nil, "nothing frozen or paused: \(o.stderr)")
        let archive = try #require(o.summary.archive)
        try await expectClean(h, 364, dumpdir: (archive as NSString).deletingLastPathComponent)
    }
}
