import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

extension NothingLostTests {
    /// Incremental forever on qcow2 images (issue 11): a persistent dirty bitmap
    /// in the image, started in the overlays' transaction, is the base.
    @Suite("Incremental forever with qcow2 dirty bitmaps", .serialized, .enabled(if: Integration.available("SNAPDUMP_TEST_DIR")))
    struct QCOW2IncrementalTests {
        /// A running guest (no workload: only the test writes, through QEMU's device) backed up
        /// into a repository in snapshot mode: the second backup reads exactly the chunks written
        /// between the two (a write of the same bytes counts: the bitmap cannot tell), the restore
        /// equals the image; a write the guest makes during a backup (into the overlay, merged back
        /// by block-commit) is in the next one; a failed backup keeps the old base with every write since. Stopped and started between two backups: still
        /// incremental. A stop-mode backup reads the bitmap from the image file. QEMU SIGKILLed:
        /// the bitmap is inconsistent, a full read says so. snapdump killed with QEMU running: still incremental.
        @Test func dirtyBitmapAcrossOverlayRestartStopModeAndKill() async throws {
            let dir = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 476
            let h = try GuestHarness(label: "repo-incr-qcow2")
            defer { h.tearDown() }
            try h.addStorage("dir", "qc", under: dir, extra: ["--content", "images", "--format", "qcow2"])
            let g = try BitmapGuest(h, vmid: vmid, storage: "qc", repository: try h.addRepository("r1"))
            let image = g.image
            let mib = 1 << 20

            /// The image's bitmaps as QEMU holds them (a new persistent one reaches the file only when QEMU stores it): all persistent.
            func bitmaps() async throws -> [String] {
                let all = try await g.bitmaps()
                #expect(all.allSatisfy { $0["persistent"]?.boolValue == true }, "a bitmap QEMU does not store is left: \(all)")
                return all.compactMap { $0["name"]?.stringValue }.sorted()
            }
            /// A slowed-down backup in the background, once its window started the new bitmap.
            func startSlowBackup(bwlimit: Int) throws -> BackgroundBackup {
                try g.startSlowBackup(bwlimit: bwlimit, reached: { $0.contains("dirty bitmap '\(QCOW2Incremental.newPrefix)") && $0.contains("guest downtime") },
                                      missing: "never reached its window")
            }
            func expectClean(running: Bool = true) throws {
                let status = try h.must(["vm", "status", "\(vmid)"]).stdout
                #expect(status.contains(running ? "status: running" : "status: stopped") && !status.contains("lock:"), "\(status)")
                let files = try FileSystem.list((image as NSString).deletingLastPathComponent)
                #expect(files == [(image as NSString).lastPathComponent], "overlays left: \(files)")
            }

            try await g.boot()
            let first = try g.backup()
            #expect(first.log.contains("drive-scsi0: full read: no previous backup of vm/\(vmid)"), "\(first.log)")
            #expect(first.log.contains("dirty bitmap '\(QCOW2Incremental.newPrefix)\(try g.newestBase())' started"), "\(first.log)")
            #expect(try await bitmaps() == [try g.newestBase()])
            try expectClean()
            // Shown and counted as the other bases are (QEMU asked on its status monitor).
            let shown = try g.snapshotRows()
            #expect(shown.map(\.name) == [try g.newestBase()] && shown.allSatisfy { $0.base && $0.used != nil }, "\(shown)")
            #expect(try g.basesCounted(on: "qc") == 1)

            // Five chunks: new data in holes (0, 15) and over data (5), zeroes over data (7), and zero bytes written into a hole (13: the same content).
            try await g.write([(1 * mib, 4096, "-P 0x5a"), (21 * mib, 65536, "-P 0xa5"), (62 * mib, 4096, "-P 0x33"),
                                  (30 * mib, 65536, "-z"), (53 * mib, 65536, "-P 0")])
            let second = try g.backup()
            // Five chunks changed; only their dirty ranges are read, over the previous chunks: chunk 7's zeroes are
            // zeros in the image's block status, so nothing of it is read (4 chunks read, 5 patched).
            #expect(second.log.contains("drive-scsi0: incremental: 4 of 16 chunks read (QEMU dirty bitmap)"), "\(second.log)")
            #expect(second.log.contains("5 chunks patched"), "\(second.log)")
            #expect(second.summary.chunks?.read == 4 && second.summary.chunks?.fromPrevious == 11, "\(String(describing: second.summary.chunks))")
            #expect(try await bitmaps() == [try g.newestBase()])
            try expectClean()

            // Stopped (QMP quit) and started between two backups: the bitmap is stored in the image and loaded again.
            try h.must(["vm", "stop", "\(vmid)"])
            try g.expectRestoreEqualsImage()
            try await g.boot()
            try await g.write([(42 * mib, 4096, "-P 0x77")])
            // A write during the backup goes into the overlay; block-commit brings it into the image and into the new bitmap.
            let bg = try startSlowBackup(bwlimit: 512)
            try await g.write([(44 * mib, 4096, "-P 0x7a")])
            let overlays = try FileSystem.list((image as NSString).deletingLastPathComponent).filter { $0.hasSuffix(".overlay.qcow2") }
            #expect(overlays.count == 1, "the write must land in the overlay, before the merge: \(overlays) \(bg.stderr)")
            let end = bg.finish(timeout: 120)
            #expect(end.status == 0 && !end.signaled, "\(bg.stderr)")
            #expect(bg.stderr.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(bg.stderr)")
            try expectClean()

            // A backup that fails (SIGTERM in its upload) keeps the old base, with every write since it:
            // one before the failed backup (chunk 8), one during it (14).
            let kept = try g.newestBase()
            try await g.write([(33 * mib, 4096, "-P 0x7b")])
            let failed = try startSlowBackup(bwlimit: 256)
            try await g.write([(56 * mib, 4096, "-P 0x7c")])
            failed.signal(SIGTERM)
            let fend = failed.finish(timeout: 120)
            #expect(fend.status != 0 && !fend.signaled, "\(failed.stderr)")
            #expect(try await bitmaps() == [kept], "\(failed.stderr)")
            try expectClean()

            // Stop mode: the bitmap read from the image file (qemu-nbd -B), the new one added there:
            // chunks 11 (written during the third backup), 8 and 14 (around the failed one), 12.
            try await g.write([(50 * mib, 4096, "-P 0x78")])
            let fourth = try g.backup(mode: "stop")
            #expect(fourth.log.contains("drive-scsi0: incremental: 4 of 16 chunks read (QEMU dirty bitmap)"), "\(fourth.log)")
            #expect(try await bitmaps() == [try g.newestBase()])
            try expectClean()
            try h.must(["vm", "stop", "\(vmid)"])
            try g.expectRestoreEqualsImage()

            // QEMU killed: the loaded bitmap was never stored back (in-use), so the next backup reads everything.
            try await g.boot()
            try await g.write([(10 * mib, 4096, "-P 0x79")])
            let recorded = try g.newestBase()
            let pid = try #require(h.pid(vmid))
            kill(pid, SIGKILL)
            #expect(await h.waitForExit(vmid, pid: pid, timeout: .seconds(20)))
            try await g.boot()
            let fifth = try g.backup()
            #expect(fifth.log.contains("drive-scsi0: full read: dirty bitmap '\(recorded)' of \(image) is inconsistent"), "\(fifth.log)")
            #expect(fifth.summary.chunks?.fromPrevious == 0, "\(String(describing: fifth.summary.chunks))")
            #expect(try await bitmaps() == [try g.newestBase()])
            try expectClean()

            // --full reads everything and still leaves one base; the next backup is incremental from it.
            nextSecond()
            let full = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "r1", "--full"])
            #expect(full.status == 0 && full.stderr.contains("drive-scsi0: full read: --full given"), "\(full)")
            #expect(try await bitmaps() == [try g.newestBase()])
            try await g.write([(20 * mib, 4096, "-P 0x7d")])
            let sixth = try g.backup()
            #expect(sixth.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(sixth.log)")

            // snapdump killed in its upload, QEMU running on: the base it held in QEMU still records, so the
            // next run (which merges the killed run's overlay) stays incremental: chunks 2 (before) and 3 (during).
            try await g.write([(9 * mib, 4096, "-P 0x7e")])
            let killed = try startSlowBackup(bwlimit: 256)
            try await g.write([(13 * mib, 4096, "-P 0x7f")])
            killed.signal(SIGKILL)
            #expect(killed.finish(timeout: 30).signaled)
            let seventh = try g.backup()
            #expect(seventh.log.contains("merged overlay"), "\(seventh.log)")
            #expect(seventh.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (QEMU dirty bitmap)"), "\(seventh.log)")
            #expect(try await bitmaps() == [try g.newestBase()])
            try expectClean()
            try h.must(["vm", "stop", "\(vmid)"])
            try g.expectRestoreEqualsImage()
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")

            // The guest stopped: the base is read from the image file. The chain's newest backup removed: it goes
            // from the image; a base left at `vm destroy` goes with the image.
            let last = try g.newestBase()
            let stored = try g.snapshotRows()
            #expect(stored.map(\.name) == [last] && stored.allSatisfy { $0.base && $0.used == nil }, "\(stored)")
            let removal = try g.removeNewestBackup()
            #expect(removal.contains("removed dirty bitmap '\(last)' of '\(g.volume)'"), "\(removal)")
            #expect(try QCOW2ImageBitmaps.list(image: image).isEmpty)
            #expect(try g.snapshotRows().isEmpty)
            _ = try g.backup(mode: "stop")
            #expect(try g.snapshotRows().map(\.name) == [try g.newestBase()])
            #expect(try g.basesCounted(on: "qc") == 1)

            // The guest stopped, with a bitmap a killed run left (named as a base, recorded by no backup): qemu-nbd
            // opens the image while the bitmaps are parsed, so the stray one goes after the read, with the old base;
            // the new base is added once the read is done. Changed while stopped (qemu-io): still incremental.
            let stray = BaseSnapshot.name(backupTime: 86_400, repository: "r1")
            try QCOW2ImageBitmaps.add(image: image, name: stray)
            let old = try g.newestBase()
            try Command.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x6d \(6 * mib) 4k", image])
            let offline = try g.backup(mode: "stop")
            #expect(offline.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (QEMU dirty bitmap)"), "\(offline.log)")
            #expect(offline.log.contains("removed dirty bitmap '\(stray)' of \(image) that no finished backup recorded"), "\(offline.log)")
            #expect(offline.log.contains("removed old dirty bitmap '\(old)' of \(image)"), "\(offline.log)")
            #expect(try QCOW2ImageBitmaps.list(image: image) == [.init(name: try g.newestBase(), inconsistent: false)])
            try g.expectRestoreEqualsImage()
            try h.must(["vm", "destroy", "\(vmid)"])
            #expect(try g.snapshotRows().isEmpty)
            #expect(try g.basesCounted(on: "qc") == 0)
        }
    }
}
