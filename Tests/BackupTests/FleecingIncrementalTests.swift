import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// What a disk's bitmaps in QEMU say about the recorded base (no QEMU needed).
@Suite("Fleecing dirty bitmaps: the recorded base")
struct FleecingBitmapDecisionTests {
    typealias B = FleecingIncremental.Bitmap
    let old = BaseSnapshot.name(backupTime: 1_700_000_000, repository: "r1")
    let killed = BaseSnapshot.name(backupTime: 1_700_000_100, repository: "r1")
    let older = BaseSnapshot.name(backupTime: 1_699_999_000, repository: "r1")

    @Test func recordingBaseIsUsedAsItIs() {
        #expect(FleecingIncremental.examine(base: old, ours: [B(name: old, recording: true)], node: "n") == .recording)
    }

    @Test func stoppedBaseTakesTheNewerOnesOfAKilledRun() {
        // A killed run's transaction stopped the base and started its own: together they hold every write since.
        #expect(FleecingIncremental.examine(base: old, ours: [B(name: older, recording: false), B(name: old, recording: false),
                                                                B(name: killed, recording: true)], node: "n") == .mergeNewer([killed]))
    }

    @Test func goneOrStoppedWithNothingNewerIsAFullRead() {
        guard case .unusable(let why) = FleecingIncremental.examine(base: old, ours: [], node: "n") else { Issue.record("used"); return }
        #expect(why == "dirty bitmap '\(old)' is gone: QEMU restarted since the last backup (a bitmap of a raw disk lives only as long"
                + " as its QEMU process: stopped and started, killed or migrated)")
        // Stopped, and only older ones (or a newer one that no longer records): some writes may be in none of them.
        for ours in [[B(name: old, recording: false), B(name: older, recording: true)],
                     [B(name: old, recording: false), B(name: killed, recording: false)]] {
            guard case .unusable(let why) = FleecingIncremental.examine(base: old, ours: ours, node: "n") else { Issue.record("used: \(ours)"); continue }
            #expect(why.contains("stopped recording"), "\(why)")
        }
    }
}

extension NothingLostTests {
    /// Incremental forever through fleecing (issue 11): a raw image on `dir`
    /// without reflink cannot say what changed, so the base is a dirty bitmap in
    /// QEMU, started in the fleecing's transaction, alive as long as QEMU.
    @Suite("Incremental forever with fleecing dirty bitmaps", .serialized, .enabled(if: Integration.available("SNAPDUMP_TEST_DIR")))
    struct FleecingIncrementalTests {
        /// A running guest (no workload: only the test writes, through QEMU's device) fleeced into a
        /// repository: the second backup reads exactly the chunks written between the two, its restore
        /// equals the image; stopped and started: a full read that says why; snapdump SIGKILLed in its
        /// upload, and a backup that fails (SIGTERM): the next one is incremental and holds every write
        /// made before, during and after the broken run; --full reads everything and keeps one base.
        @Test func dirtyBitmapAcrossRestartKillAndFailure() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 481
            let h = try GuestHarness(label: "repo-incr-fleece")
            defer { h.tearDown() }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images"])
            try h.addStorage("dir", "fl", under: dir, extra: ["--content", "images"])
            let g = try BitmapGuest(h, vmid: vmid, storage: "local", repository: try h.addRepository("r1"))
            let image = g.image
            #expect(image.hasSuffix(".raw"), "\(image)")
            let mib = 1 << 20
            let fleecing = ["--fleecing", "enabled=1,storage=fl"]

            /// The bitmaps on the disk's node, each with whether it records; none persistent (a raw node cannot store one).
            func bitmaps() async throws -> [String: Bool] {
                let all = try await g.bitmaps()
                #expect(all.allSatisfy { $0["persistent"]?.boolValue == false }, "\(all)")
                return Dictionary(all.compactMap { b in b["name"]?.stringValue.map { ($0, b["recording"]?.boolValue ?? false) } },
                                  uniquingKeysWith: { a, _ in a })
            }
            func backup(_ extra: [String] = []) throws -> (log: String, summary: BackupSummary) {
                let b = try g.backup(fleecing + extra)
                #expect(b.log.contains("snapshot method: fleecing"), "\(b.log)")
                return b
            }
            func fleeceImages() throws -> [String] {
                let dir = try #require(h.storageLocations()["fl"]).location + "/images/\(vmid)"
                return ((try? FileSystem.list(dir)) ?? []).filter { $0.contains("-fleece-") }
            }
            func expectClean() throws {
                let status = try h.must(["vm", "status", "\(vmid)"]).stdout
                #expect(status.contains("status: running") && !status.contains("lock:"), "\(status)")
                let left = try fleeceImages()
                #expect(left.isEmpty, "fleecing images left: \(left)")
            }
            /// A backup in the background, slowed down, once its fleecing (and bitmap) started.
            func startSlowBackup() throws -> BackgroundBackup {
                try g.startSlowBackup(fleecing, reached: { $0.contains("with the fleecing") }, missing: "never started its fleecing")
            }

            try await g.boot()
            let first = try backup()
            #expect(first.log.contains("drive-scsi0: full read: no previous backup of vm/\(vmid)"), "\(first.log)")
            #expect(first.log.contains("dirty bitmap '\(try g.newestBase())' started on scsi0 with the fleecing"), "\(first.log)")
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try expectClean()
            // Shown and counted as the other bases are (QEMU asked on its status monitor).
            let shown = try g.snapshotRows()
            #expect(shown.map(\.name) == [try g.newestBase()] && shown.allSatisfy { $0.base && $0.used != nil }, "\(shown)")
            #expect(try g.basesCounted(on: "local") == 1)

            // Five chunks: new data in holes (0, 15) and over data (5), zeroes over data (7), and zero bytes into a hole (13: the same content).
            try await g.write([(1 * mib, 4096, "-P 0x5a"), (21 * mib, 65536, "-P 0xa5"), (62 * mib, 4096, "-P 0x33"),
                                  (30 * mib, 65536, "-z"), (53 * mib, 65536, "-P 0")])
            let dirty = try g.snapshotRows()
            #expect(dirty.count == 1 && (dirty.first?.used ?? 0) >= 2 * 4096 + 3 * 65536, "Used: the bytes written since the base: \(dirty)")
            let second = try backup()
            // Five chunks changed; only their dirty ranges are read, over the previous chunks: chunk 7's zeroes read as
            // zeros in the export's block status, so nothing of it is read (4 chunks read, 5 patched).
            #expect(second.log.contains("drive-scsi0: incremental: 4 of 16 chunks read (QEMU dirty bitmap)"), "\(second.log)")
            #expect(second.log.contains("5 chunks patched"), "\(second.log)")
            #expect(second.summary.chunks?.fromPrevious == 11, "\(String(describing: second.summary.chunks))")
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try expectClean()

            // A write during a backup (chunk 11) is not in it but in the next one: the fleecing's transaction started the
            // new bitmap at the backup's point in time. A whole chunk before it (9) keeps the slowed backup busy meanwhile.
            try await g.write([(36 * mib, 4 * mib, "-P 0x66")])
            let during = try startSlowBackup()
            try await g.write([(45 * mib, 4096, "-P 0x67")], statusMonitor: true)
            #expect(try fleeceImages().count == 1, "the write must come while the fleecing runs: \(during.stderr)")
            let dend = during.finish(timeout: 120)
            #expect(dend.status == 0 && !dend.signaled, "\(during.stderr)")
            #expect(during.stderr.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(during.stderr)")
            let afterDuring = try backup()
            #expect(afterDuring.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(afterDuring.log)")
            try h.must(["vm", "stop", "\(vmid)"])
            try g.expectRestoreEqualsImage()

            // Stopped and started: the bitmap died with QEMU, the backup reads everything and says why.
            let gone = try g.newestBase()
            try await g.boot()
            #expect(try g.snapshotRows().isEmpty, "the base died with QEMU")
            try await g.write([(42 * mib, 4096, "-P 0x77")])
            let third = try backup()
            #expect(third.log.contains("drive-scsi0: full read: dirty bitmap '\(gone)' is gone: QEMU restarted since the last backup"), "\(third.log)")
            #expect(third.summary.chunks?.fromPrevious == 0, "\(String(describing: third.summary.chunks))")
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try expectClean()

            // snapdump SIGKILLed in its upload (QEMU keeps the old bitmap stopped, the new one recording, the fleecing):
            // a whole chunk written before it (2, which keeps it busy until the signal), one write after it (3). The next run removes the fleecing, merges, stays incremental.
            let recorded = try g.newestBase()
            try await g.write([(8 * mib, 4 * mib, "-P 0x7e")])
            let killed = try startSlowBackup()
            killed.signal(SIGKILL)
            #expect(killed.finish(timeout: 30).signaled)
            let left = try await bitmaps()
            #expect(left.count == 2 && left[recorded] == false, "the killed run's transaction stopped the old one and started a new one: \(left)")
            try await g.write([(13 * mib, 4096, "-P 0x7f")])
            let fourth = try backup()
            #expect(fourth.log.contains("into the recorded '\(recorded)'"), "\(fourth.log)")
            #expect(fourth.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (QEMU dirty bitmap)"), "\(fourth.log)")
            try g.expectRestoreEqualsImage()
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try expectClean()

            // A backup that fails (SIGTERM in its upload) keeps the old base with every write since it:
            // a whole chunk before the failed backup (8), one write after (14).
            let kept = try g.newestBase()
            try await g.write([(32 * mib, 4 * mib, "-P 0x7b")])
            let failed = try startSlowBackup()
            failed.signal(SIGTERM)
            let fend = failed.finish(timeout: 120)
            #expect(fend.status != 0 && !fend.signaled, "\(failed.stderr)")
            #expect(failed.stderr.contains("kept dirty bitmap '\(kept)'"), "\(failed.stderr)")
            #expect(try await bitmaps() == [kept: true], "\(failed.stderr)")
            try expectClean()
            try await g.write([(56 * mib, 4096, "-P 0x7c")])
            let fifth = try backup()
            #expect(fifth.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (QEMU dirty bitmap)"), "\(fifth.log)")
            try g.expectRestoreEqualsImage()

            // --full reads everything and still leaves one base; the next backup is incremental from it.
            let full = try backup(["--full"])
            #expect(full.log.contains("drive-scsi0: full read: --full given"), "\(full.log)")
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try await g.write([(20 * mib, 4096, "-P 0x7d")])
            let sixth = try backup()
            #expect(sixth.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(sixth.log)")

            // The disk grown in QEMU: QEMU resizes the bitmap, but a shrink would have cut off what it recorded: a full read says why.
            let qmp = try await VMLifecycle(paths: h.paths).connectQMP(vmid: vmid)
            _ = try await qmp.execute("block_resize", arguments: ["node-name": "drive-scsi0", "size": .int(Int64(68 * mib))])
            await qmp.close()
            try await g.write([(66 * mib, 4096, "-P 0x7a")])
            let grown = try backup()
            #expect(grown.log.contains("drive-scsi0: full read: the size of scsi0 changed since the last backup (\(64 * mib) to \(68 * mib) bytes)"),
                    "\(grown.log)")
            #expect(try await bitmaps() == [try g.newestBase(): true])
            try h.must(["vm", "stop", "\(vmid)"])
            try g.expectRestoreEqualsImage()
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")

            // The chain's newest backup removed: its base goes from QEMU, the list and the count. QEMU stopped: gone too.
            try await g.boot()
            _ = try backup()
            let last = try g.newestBase()
            #expect(try g.snapshotRows().map(\.name) == [last])
            let removal = try g.removeNewestBackup()
            #expect(removal.contains("removed dirty bitmap '\(last)' of '\(g.volume)'"), "\(removal)")
            #expect(try await bitmaps() == [:])
            #expect(try g.snapshotRows().isEmpty)
            #expect(try g.basesCounted(on: "local") == 0)
            _ = try backup()
            #expect(try g.snapshotRows().map(\.name) == [try g.newestBase()])
            try h.must(["vm", "stop", "\(vmid)"])
            #expect(try g.snapshotRows().isEmpty, "the base died with QEMU")
        }
    
        /// A guest writing records all the time, two disks (one transaction starts and stops both bitmaps):
        /// the incremental backups (the guest writing while the fleecing runs, and between) read less than
        /// all of each disk and restore to a record-consistent disk.
        /// (Record consistency shows no torn mix; a missed write is caught by the byte-exact test above:
        /// a restore missing the newest records can still be a consistent prefix.)
        @Test func runningGuestWritingRecords() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 482
            let h = try GuestHarness(label: "repo-incr-fleece-rec")
            defer { h.tearDown() }
            try h.addStorage("dir", "local", under: dir, extra: ["--content", "images"])
            try h.addStorage("dir", "fl", under: dir, extra: ["--content", "images"])
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "local:64M", fsDisk: "local:32M")
            try await h.bootGuest(vmid)
            let repo = try Repository(root: root)
            func backup() throws -> (log: String, disks: [BackupSummary.Disk]) {
                nextSecond()
                let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "r1", "--fleecing", "enabled=1,storage=fl",
                                   "--output-format", "json"])
                try #require(r.status == 0, "\(r)")
                let summary = try #require(try backupSummaries(r.stdout).first)
                let disks = try #require(summary.disks)
                try #require(disks.count == 2, "\(disks)")
                return (TaskLogEvents.text(r.stderr), disks)
            }
            let first = try backup()
            #expect(first.disks.allSatisfy { $0.method == "full" }, "\(first.log)")
            for round in 1...2 {
                _ = try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid) + 20)
                let next = try backup()
                for d in next.disks {
                    #expect(d.method == "QEMU dirty bitmap" && d.fromPrevious > 0 && d.read + d.fromPrevious == d.chunks,
                            "round \(round): \(d) \(next.log)")
                }
                // The guest writes its records to the disk it names sda, scsi0 or (probed first under load) scsi1.
                let last = try #require(try repo.snapshots().last)
                var checks: [String: GuestHarness.RecordCheck] = [:]
                for file in ["drive-scsi0.img.fidx", "drive-scsi1.img.fidx"] {
                    let path = try restoreDisk(repo, last, to: h.configDir + "/restored-\(vmid).raw", file: file)
                    checks[file] = try h.checkRecords(path, format: "raw", checker: h.checker)
                    try FileSystem.remove(path)
                }
                let withRecords = checks.filter { ($0.value.fields["max_seq"].flatMap { Int($0) } ?? 0) > 0 }
                #expect(withRecords.count == 1 && withRecords.allSatisfy { $0.value.consistent },
                        "round \(round): restore of the incremental backup of a running guest: \(checks.mapValues(\.output))")
            }
        }
    }
}
