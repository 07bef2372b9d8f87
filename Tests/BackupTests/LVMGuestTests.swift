import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// Guests whose disks are LVs, inside the storage VM only (LVMInVMTests boots
/// it: this host's kernel has no device-mapper). The guest is QEMU nested
/// under TCG booting from its LV: SeaBIOS loads `BootSectorWriter` from the
/// LV's first sector, and it writes numbered records to MiB 1 of the LV —
/// on lvmthin for the whole test (paced by the timer), on lvm up to a count
/// and then halts. No OS is needed to check blocks: the rest of the disk is
/// filled with known data while the guest is stopped, and "the guest writes"
/// there through QEMU's own block layer too (HMP `qemu-io` on the guest's
/// device, the path a guest write takes, copy-before-write filter included).
/// A hook script holds the backup right after its freeze window
/// (`post-restart`, before the archive is read) while the test writes.
@Suite("Guests on lvm and lvmthin (storage VM only)", .serialized)
struct LVMGuestTests {
    struct Summary: Decodable {
        var ok: Bool
        var mode: String?
        var method: String?
        var fallbackReason: String?
        var downtimeMs: Int64?
        var downtimeKind: String?
        var downtimeParts: [String: Int64]?
        var archive: String?
        var error: String?
    }

    static let mib = 1 << 20
    static let diskSize = 32 << 20
    /// Where the test writes "as the guest" during a backup.
    static let guestWrite = (offset: 8 << 20, length: 1 << 20)

    /// The writer's records: 64 of 4 KiB from MiB 1 (clear of `guestWrite`).
    static let writerLayout = BootSectorWriter.Layout(firstSector: 2048, records: 64, sectorsPerRecord: 8)
    static var writerRange: Range<Int> { Int(writerLayout.firstSector) * 512..<writerLayout.endOffset }

    /// `bytes` without the writer's records, which a running writer changes all the time.
    static func masked(_ bytes: [UInt8]) -> [UInt8] {
        var b = bytes
        for i in writerRange where i < b.count { b[i] = 0 }
        return b
    }

    /// The writer's records in a whole disk's bytes: a consistent prefix, or the error naming the slot.
    static func records(_ bytes: [UInt8], _ name: String) throws -> BootSectorWriter.Report {
        try BootSectorWriter.check(region: Array(bytes[writerRange]), writerLayout, name: name)
    }

    /// The highest sequence the writer of VM `vmid` reported on its console so far.
    static func reported(_ h: GuestHarness, _ vmid: Int) -> UInt32 {
        BootSectorWriter.reportedSequence(console: (try? FileSystem.readText(h.consoleLog(vmid))) ?? "") ?? 0
    }

    static func waitForRecords(_ h: GuestHarness, _ vmid: Int, atLeast n: UInt32, timeout: Duration) async throws -> UInt32 {
        let deadline = ContinuousClock.now + timeout
        while true {
            let r = reported(h, vmid)
            if r >= n { return r }
            if ContinuousClock.now >= deadline {
                let tail = ((try? FileSystem.readText(h.consoleLog(vmid))) ?? "").suffix(400)
                throw HarnessError("VM \(vmid): the writer reported \(r) records, not \(n), within \(timeout); console: \(tail)")
            }
            try await Task.sleep(for: .milliseconds(500))
        }
    }

    /// Known content: pseudo-random from `seed` (the boot sector and the
    /// writer's records go over it when the guest is created).
    static func pattern(seed: UInt64) -> [UInt8] {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var out = [UInt8](repeating: 0, count: diskSize)
        out.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in (4096 / 8)..<words.count {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                words[i] = x
            }
        }
        return out
    }

    static func write(_ bytes: [UInt8], to device: String) throws {
        let f = try #require(FileHandle(forWritingAtPath: device), "cannot open \(device) for writing")
        defer { try? f.close() }
        try f.write(contentsOf: Data(bytes))
        try f.synchronize()
    }

    static func read(_ device: String, count: Int = diskSize) throws -> [UInt8] {
        let f = try #require(FileHandle(forReadingAtPath: device), "cannot open \(device)")
        defer { try? f.close() }
        return [UInt8](try f.read(upToCount: count) ?? Data())
    }

    /// The first differing byte, for a message that says where.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String {
        guard a.count == b.count else { return "sizes \(a.count) and \(b.count)" }
        guard let i = a.indices.first(where: { a[$0] != b[$0] }) else { return "none" }
        return "at byte \(i) (MiB \(i >> 20))"
    }

    /// `bytes` as the guest sees them after the test's write during a backup.
    static func afterGuestWrite(_ bytes: [UInt8], value: UInt8) -> [UInt8] {
        var b = bytes
        for i in guestWrite.offset..<(guestWrite.offset + guestWrite.length) { b[i] = value }
        return b
    }

    /// Writes `value` over `guestWrite` through QEMU's block layer: the guest's own write path.
    static func writeAsGuest(_ h: GuestHarness, _ vmid: Int, value: UInt8) async throws {
        let qmp = try await QMPClient.connect(path: h.paths.qmpSocket(vmid), timeout: .seconds(10))
        let r = await asyncResult {
            try await qmp.execute("human-monitor-command", arguments: [
                "command-line": .string("qemu-io -d scsi0 \"write -P \(value) \(guestWrite.offset) \(guestWrite.length)\"")],
                timeout: .seconds(60))
        }
        await qmp.close()
        _ = try r.get()
    }

    /// A hook that stops the backup at `post-restart` (the guest runs again, the
    /// point-in-time views exist, nothing is read yet) until the test lets it go.
    struct HoldingHook {
        let dir: String
        var path: String { dir + "/hook.sh" }
        var reached: Bool { FileSystem.exists(dir + "/held") }

        init(_ h: GuestHarness) throws {
            dir = h.configDir + "/hold"
            try FileSystem.createDirectory(dir)
            try FileSystem.writeAtomically(path, """
            #!/bin/sh
            [ "$1" = post-restart ] || exit 0
            touch '\(dir)/held'
            i=0
            while [ ! -e '\(dir)/go' ] && [ $i -lt 600 ]; do sleep 1; i=$((i + 1)); done
            exit 0

            """, mode: 0o755)
        }

        func release() throws { try FileSystem.writeAtomically(dir + "/go", "") }
    }

    func summary(_ bg: BackgroundBackup) throws -> Summary {
        let out = try FileSystem.readText(bg.stdoutPath)
        let s = try JSONDecoder().decode([Summary].self, from: Data(out.utf8))
        try #require(s.count == 1, "\(out)")
        return s[0]
    }

    func summary(_ r: SnapdumpBinary.Result) throws -> Summary {
        let s = try JSONDecoder().decode([Summary].self, from: Data(r.stdout.utf8))
        try #require(s.count == 1, "\(r)")
        return s[0]
    }

    func lvNames(_ vg: String) throws -> [String] {
        try Command.run(["lvm", "lvs", "--noheadings", "-o", "lv_name", vg])
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func expectRunning(_ h: GuestHarness, _ vmid: Int, _ when: String, lockAllowed: Bool = false,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let status = try h.must(["vm", "status", "\(vmid)"]).stdout
        #expect(status.contains("status: running") && (lockAllowed || !status.contains("lock:")), "VM \(vmid) \(when): \(status)", sourceLocation: sourceLocation)
    }

    /// The restored disk of `target` (its scsi0), read whole.
    func restoredDisk(_ h: GuestHarness, _ archive: String, _ target: Int, storage: String) throws -> [UInt8] {
        try h.must(["restore", archive, "\(target)", "--storage", storage])
        let line = try #require(try h.configText(target).split(separator: "\n").first { $0.hasPrefix("scsi0:") })
        let volid = String(line.dropFirst("scsi0: ".count).split(separator: ",")[0])
        return try Self.read(try h.volumePath(volid))
    }

    enum Writing {
        /// `n` records, then halt (the disk stays as it is).
        case until(UInt32)
        /// Records for as long as the guest runs, about 4 a second (4 timer ticks apart:
        /// each write costs the storage VM's one CPU a nested SeaBIOS disk request).
        case forever
    }

    /// Creates VM `vmid` with a 32 MiB disk on `storage` holding `content`, the
    /// writer in its first sector, and starts it; returns its volume id and the
    /// disk's content (with `.until`, the records written; with `.forever`,
    /// none: compare `masked`).
    func startGuest(_ h: GuestHarness, _ vmid: Int, storage: String, content: [UInt8], writing: Writing,
                    more: [String] = []) async throws -> (volid: String, content: [UInt8]) {
        try h.must(["vm", "create", "\(vmid)", "--memory", "32", "--agent", "0", "--scsi0", "\(storage):32M"] + more)
        let line = try #require(try h.configText(vmid).split(separator: "\n").first { $0.hasPrefix("scsi0:") })
        let volid = String(line.dropFirst("scsi0: ".count).split(separator: ",")[0])
        var disk = Self.masked(content)
        switch writing {
        case .until(let n): disk.replaceSubrange(0..<512, with: try BootSectorWriter.image(Self.writerLayout, limit: n, progressEvery: 8))
        case .forever: disk.replaceSubrange(0..<512, with: try BootSectorWriter.image(Self.writerLayout, ticksBetweenWrites: 4, progressEvery: 8))
        }
        try Self.write(disk, to: try h.volumePath(volid))
        let t0 = Date()
        try h.start(vmid)
        try await h.waitForConsole(vmid, "WRITER START", timeout: .seconds(180))
        let booted = Date().timeIntervalSince(t0)
        switch writing {
        case .until(let n):
            let done = try await h.waitForConsole(vmid, "WRITER DONE", timeout: .seconds(300))
            #expect(done == "WRITER DONE " + String(format: "%08X", n), "\(done)")
            disk = try Self.read(try h.volumePath(volid))
            let r = try Self.records(disk, volid)
            #expect(r.lastSequence == n, "\(volid): \(r)")
        case .forever:
            _ = try await Self.waitForRecords(h, vmid, atLeast: 8, timeout: .seconds(300))
        }
        print("[lvm guest] VM \(vmid) booted from \(volid) in \(String(format: "%.1f", booted)) s, writing after \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        try expectRunning(h, vmid, "after start")
        return (volid, disk)
    }

    /// lvmthin, the guest writing records all along: snapshot mode takes one
    /// thin snapshot of the running guest's disk without pausing it, the
    /// guest's writes during the backup stay out of the archive, the restore
    /// holds the snapshot's content — a consistent record prefix from between
    /// the backup's start and its hold; then live `move-disk` lvmthin → dir →
    /// lvm → lvmthin while it writes: each target holds a consistent prefix
    /// (checked with the guest paused), each source is freed, and after a hard
    /// stop the last (thin) target holds every record the guest reported.
    @Test func lvmthinSnapshotBackupAndLiveMoves() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        let pool = "tpg\(UUID().uuidString.prefix(6).lowercased())"
        try Command.run(["lvm", "lvcreate", "-q", "-L", "160M", "-T", "\(vg)/\(pool)"])
        defer { _ = try? Command.capture(["lvm", "lvremove", "-q", "-f", "\(vg)/\(pool)"]) }
        let h = try GuestHarness("lvm-thin")
        defer { h.tearDown() }
        let scratch = try Integration.scratchDirectory("lvm-guest")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try h.must(["storage", "add", "lvmthin", "thin", "--vgname", vg, "--thinpool", pool])
        try h.must(["storage", "add", "lvm", "thick", "--vgname", vg])
        try h.addStorage("dir", "local", under: scratch, extra: ["--content", "images,backup"])
        let vmid = 700
        let (volid, before) = try await startGuest(h, vmid, storage: "thin", content: Self.pattern(seed: 1), writing: .forever)
        #expect(volid == "thin:vm-\(vmid)-disk-0")

        let hook = try HoldingHook(h)
        let reportedBefore = Self.reported(h, vmid)
        let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--script", hook.path, "--output-format", "json"])
        #expect(bg.wait(until: { hook.reached }, timeout: 300), "the backup never reached post-restart: \(bg.stderr)")
        // The snapshot exists: the writer had written at most this + 8 (it reports every 8th record).
        let reportedAtHold = Self.reported(h, vmid)
        let during = try lvNames(vg)
        #expect(during.contains { $0.hasPrefix("snap_vm-\(vmid)-disk-0_snapdump") }, "no thin snapshot during the backup: \(during)")
        try await Self.writeAsGuest(h, vmid, value: 0x5a)
        let live = try Self.read(try h.volumePath(volid))
        let expectedLive = Self.afterGuestWrite(before, value: 0x5a)
        #expect(Self.masked(live) == Self.masked(expectedLive), "the guest's write did not reach its LV: difference \(Self.firstDifference(Self.masked(live), Self.masked(expectedLive)))")
        try hook.release()
        let end = bg.finish(timeout: 600)
        let log = TaskLogEvents.text(bg.stderr)
        #expect(end.status == 0 && !end.signaled, "\(end): \(log)")
        let s = try summary(bg)
        #expect(s.ok && s.mode == "snapshot" && s.fallbackReason == nil, "\(s)")
        // One thin LV: its snapshot is atomic by itself; no agent, so nothing frozen either.
        #expect(s.downtimeMs == nil && s.downtimeParts == nil, "\(s)")
        #expect(log.contains("(atomic snapshot; the guest was neither paused nor had a filesystem frozen)"), "\(log)")
        #expect(log.contains("created storage snapshot") && log.contains("removed storage snapshot"), "\(log)")
        try expectRunning(h, vmid, "after the backup")
        let after = try lvNames(vg)
        #expect(!after.contains { $0.hasPrefix("snap_") }, "snapshots left: \(after)")
        let archive = try #require(s.archive)

        let restored = try restoredDisk(h, archive, vmid + 1, storage: "thin")
        #expect(Self.masked(restored) == Self.masked(before), "restored disk is not the snapshot's content: difference \(Self.firstDifference(Self.masked(restored), Self.masked(before)))")
        let inArchive = try Self.records(restored, "the restored disk")
        #expect(inArchive.lastSequence >= reportedBefore && inArchive.lastSequence <= reportedAtHold + 8,
                "the snapshot holds records up to \(inArchive.lastSequence); the writer reported \(reportedBefore) before the backup, \(reportedAtHold) at its hold")
        print("[lvm guest] lvmthin snapshot backup + restore done at \(Int(Date().timeIntervalSince(t0))) s: records up to \(inArchive.lastSequence) (reported \(reportedBefore) before, \(reportedAtHold) at the hold)")

        // Live moves while the guest writes: lvmthin → dir → lvm → lvmthin, the old volume deleted each
        // time. The last one goes to lvmthin from lvm in the same VG: the thin target gets a name no LV of
        // the VG has (the lvm source still holds vm-<vmid>-disk-0 while the mirror runs).
        var now = volid
        for target in ["local", "thick", "thin"] {
            let source = try VolumeID(parsing: now)
            let m0 = Date()
            let r0 = Self.reported(h, vmid)
            let r = try h.run(["vm", "move-disk", "\(vmid)", "scsi0", target, "--delete"])
            #expect(r.status == 0, "move-disk \(now) to \(target): \(r)")
            let took = Date().timeIntervalSince(m0)
            try expectRunning(h, vmid, "after moving to \(target)")
            let line = try #require(try h.configText(vmid).split(separator: "\n").first { $0.hasPrefix("scsi0:") })
            now = String(line.dropFirst("scsi0: ".count).split(separator: ",")[0])
            #expect(now.hasPrefix(target + ":"), "scsi0 is \(now) after the move to \(target)")
            // Wait until the guest has written on the target, then look at it with the guest paused.
            _ = try await Self.waitForRecords(h, vmid, atLeast: Self.reported(h, vmid) + 8, timeout: .seconds(120))
            try h.must(["vm", "suspend", "\(vmid)"])
            let reportedPaused = Self.reported(h, vmid)
            let moved = try Self.read(try h.volumePath(now))
            try h.must(["vm", "resume", "\(vmid)"])
            #expect(Self.masked(moved) == Self.masked(expectedLive), "data after the move to \(target): difference \(Self.firstDifference(Self.masked(moved), Self.masked(expectedLive)))")
            let onTarget = try Self.records(moved, now)
            #expect(onTarget.lastSequence >= reportedPaused && onTarget.lastSequence <= reportedPaused + 8 && onTarget.lastSequence > r0,
                    "\(now) holds records up to \(onTarget.lastSequence), the writer reported \(reportedPaused) (\(r0) before the move)")
            // The source is freed: its LV gone from the VG, or its file from the dir storage.
            let lvs = try lvNames(vg)
            if source.storage == "local" {
                let files = h.storageFiles().filter { $0.contains("/images/") }
                #expect(files.isEmpty, "source file on dir not freed: \(files)")
            } else {
                #expect(!lvs.contains(source.volname), "source LV \(source) not freed: \(lvs)")
            }
            let targetVolume = try VolumeID(parsing: now)
            #expect(target == "local" || lvs.contains(targetVolume.volname), "no LV for \(now): \(lvs)")
            print("[lvm guest] live move-disk \(source) → \(now) in \(String(format: "%.1f", took)) s while writing (records \(r0) → \(onTarget.lastSequence))")
        }
        // A hard stop: every record the guest reported is on the last (thin) target, none torn.
        _ = try await Self.waitForRecords(h, vmid, atLeast: Self.reported(h, vmid) + 16, timeout: .seconds(120))
        try h.must(["vm", "stop", "\(vmid)"])
        let reportedLast = Self.reported(h, vmid)
        let final = try Self.records(try Self.read(try h.volumePath(now)), now)
        #expect(final.lastSequence >= reportedLast && final.lastSequence <= reportedLast + 8 && final.writtenRecords == 64,
                "after the stop \(now) holds records up to \(final.lastSequence), the writer reported \(reportedLast)")
        print("[lvm guest] writer stopped: \(now) holds records 1…\(final.lastSequence) consistently (reported \(reportedLast))")
        print("[lvm guest] lvmthin case took \(Int(Date().timeIntervalSince(t0))) s")
    }

    /// Incremental forever on lvmthin through the whole engine (issue 11), stop mode into a
    /// repository storage on a directory in the VM. Between two backups: a 4 KiB write, 256 KiB
    /// discarded (`blkdiscard` unmaps four 64 KiB thin blocks) and 64 KiB written again with the
    /// bytes it held. thin_delta reports exactly those three chunks — the identical rewrite too: a
    /// write to a block the base snapshot shares gets a new block, whatever its bytes — and the
    /// engine reads two of them (the discarded range is known zeros: patched, not read), 128 KiB
    /// (whole thin blocks), and stores two new chunks (the rewritten chunk's digest is the old one).
    /// The restore equals the LV at the second snapshot byte for byte. The guest started and stopped
    /// again between two backups (its writer rewrites its records): still incremental, one chunk.
    /// The base snapshot removed by hand: a full read that says so.
    @Test func lvmthinIncrementalForeverThroughTheEngine() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        let mib = Self.mib
        let pool = "tpi\(UUID().uuidString.prefix(6).lowercased())"
        try Command.run(["lvm", "lvcreate", "-q", "-L", "128M", "-T", "\(vg)/\(pool)"])
        defer { _ = try? Command.capture(["lvm", "lvremove", "-q", "-f", "\(vg)/\(pool)"]) }
        let h = try GuestHarness("lvm-inc")
        defer { h.tearDown() }
        try h.must(["storage", "add", "lvmthin", "thin", "--vgname", vg, "--thinpool", pool])
        let root = try h.addRepository("r1")
        let vmid = 750
        // 16 records of 4 KiB from MiB 1 + 4 KiB (slots 1…16): two thin blocks, both in chunk 0.
        let (volid, _) = try await startGuest(h, vmid, storage: "thin", content: Self.pattern(seed: 6), writing: .until(16))
        try h.must(["vm", "stop", "\(vmid)"])
        let rig = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: volid, storage: "thin")
        let disk = try PluginDisk(h, volid)
        let chunks = Self.diskSize / (4 * mib)
        func newestBase() throws -> String {
            BaseSnapshot.name(backupTime: try #require(try rig.repo.snapshots().last).time, repository: "r1")
        }

        let first = try rig.backup()
        #expect(first.log.contains("drive-scsi0: full read: no previous backup of vm/\(vmid)"), "\(first.log)")
        #expect(try rig.restoredNewest() == disk.bytes(), "restore of the first backup differs from the LV")
        let base1 = try newestBase()
        #expect(try rig.bases() == [base1])

        // Chunk 1: 4 KiB written. Chunk 2: 256 KiB discarded. Chunk 5: 64 KiB written again as it is.
        try disk.write(pseudoRandom(4096, seed: 61), at: 5 * mib + 8192)
        try Command.run(["blkdiscard", "-o", "\(9 * mib)", "-l", "262144", try h.volumePath(volid)])
        let same = try disk.bytes()
        #expect(same[9 * mib..<9 * mib + 262144].allSatisfy { $0 == 0 }, "the discarded range does not read as zeros")
        try disk.write(Array(same[21 * mib..<21 * mib + 65536]), at: 21 * mib)
        let changed = try disk.bytes()
        #expect(changed == same)

        let second = try rig.backup()
        #expect(second.log.contains("drive-scsi0: incremental: 2 of \(chunks) chunks read (thin_delta), \(ByteCount.format(131072)) read, 2 new chunks stored ("),
                "\(second.log)")
        #expect(second.log.contains("3 chunks patched (previous chunk + changed ranges)"), "\(second.log)")
        let d2 = try #require(second.summary.disks?.first)
        #expect(d2.method == "thin_delta" && d2.fullReason == nil && d2.read == 2 && d2.fromPrevious == chunks - 3
                && d2.bytesRead == 131072 && d2.newChunks == 2, "\(d2)")
        let base2 = try newestBase()
        #expect(try rig.bases() == [base2], "the old base was not dropped")
        let atSnapshot = try disk.bytes(snapshot: base2)
        #expect(atSnapshot == changed, "the second snapshot is not the LV as changed: difference \(Self.firstDifference(atSnapshot, changed))")
        let restored = try rig.restoredNewest()
        #expect(restored == atSnapshot, "restore of the incremental backup: difference \(Self.firstDifference(restored, atSnapshot))")

        // Started and stopped again: QEMU knew nothing of the base, the pool still does.
        try? FileSystem.remove(h.consoleLog(vmid))
        try h.start(vmid)
        try await h.waitForConsole(vmid, "WRITER DONE", timeout: .seconds(300))
        try h.must(["vm", "stop", "\(vmid)"])
        let third = try rig.backup()
        let d3 = try #require(third.summary.disks?.first)
        #expect(third.log.contains("drive-scsi0: incremental: 1 of \(chunks) chunks read (thin_delta)"), "\(third.log)")
        #expect(d3.method == "thin_delta" && d3.read == 1 && d3.fromPrevious == chunks - 1 && d3.bytesRead == 131072, "\(d3)")
        #expect(try rig.restoredNewest() == disk.bytes(), "restore after the restart differs from the LV")
        print("[lvm guest] incremental on lvmthin after a restart: \(d3.read) chunk read, \(d3.bytesRead) bytes, \(d3.newChunks) new (the writer's records rewritten)")

        // The base removed by hand: a full read, with the reason; the new base replaces it.
        let base3 = try newestBase()
        let snapLV = "snap_\(disk.volume.volname)_\(base3)"
        #expect(try lvNames(vg).contains(snapLV), "no LV \(snapLV)")
        try Command.run(["lvm", "lvremove", "-q", "-f", "\(vg)/\(snapLV)"])
        try disk.write(pseudoRandom(4096, seed: 62), at: 13 * mib)
        let fourth = try rig.backup()
        #expect(fourth.log.contains("drive-scsi0: full read: base snapshot '\(base3)' of \(volid) no longer exists (deleted by hand?)"), "\(fourth.log)")
        let d4 = try #require(fourth.summary.disks?.first)
        #expect(d4.method == "full" && d4.fromPrevious == 0 && d4.read + d4.fromPrevious == chunks, "\(d4)")
        #expect(try rig.restoredNewest() == disk.bytes(), "restore of the full backup differs from the LV")
        #expect(try rig.bases() == [try newestBase()])
        try h.must(["vm", "destroy", "\(vmid)"])
        let left = try lvNames(vg).filter { $0.contains("vm-\(vmid)-") }
        #expect(left.isEmpty, "LVs left after vm destroy: \(left)")
        print("[lvm guest] incremental forever on lvmthin case took \(Int(Date().timeIntervalSince(t0))) s")
    }

    /// lvmthin, a writing guest with two thin LVs: LVM snapshots one origin per
    /// `lvcreate -s`, so the guest is paused around the two calls (one LV alone
    /// is atomic, 0 ms). A backup measures that pause with its breakdown
    /// (`SNAPDUMP_LVM_DOWNTIME_RUNS=3` for BENCHMARKS.md's downtime table: each
    /// costs most of a minute here); the last one's restore holds a consistent
    /// record prefix, and both disks' snapshots are gone.
    @Test func lvmthinTwoVolumesPausedAroundTheirSnapshots() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        let pool = "tp2\(UUID().uuidString.prefix(6).lowercased())"
        try Command.run(["lvm", "lvcreate", "-q", "-L", "160M", "-T", "\(vg)/\(pool)"])
        defer { _ = try? Command.capture(["lvm", "lvremove", "-q", "-f", "\(vg)/\(pool)"]) }
        let h = try GuestHarness("lvm-thin2")
        defer { h.tearDown() }
        let scratch = try Integration.scratchDirectory("lvm-guest")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try h.must(["storage", "add", "lvmthin", "thin", "--vgname", vg, "--thinpool", pool])
        try h.addStorage("dir", "local", under: scratch, extra: ["--content", "images,backup"])
        let vmid = 730
        let (_, before) = try await startGuest(h, vmid, storage: "thin", content: Self.pattern(seed: 4), writing: .forever,
                                               more: ["--scsi1", "thin:8M"])
        var totals: [Int64] = []
        var last: Summary?
        var reportedBefore: UInt32 = 0, reportedAfter: UInt32 = 0
        let runs = max(1, Int(ProcessInfo.processInfo.environment["SNAPDUMP_LVM_DOWNTIME_RUNS"] ?? "") ?? 1)
        for run in 1...runs {
            reportedBefore = Self.reported(h, vmid)
            let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "local", "--compress", "0", "--output-format", "json"])
            reportedAfter = Self.reported(h, vmid)
            let log = TaskLogEvents.text(r.stderr)
            let s = try summary(r)
            #expect(r.status == 0 && s.ok && s.mode == "snapshot" && s.fallbackReason == nil, "run \(run): \(s): \(log)")
            let parts = s.downtimeParts ?? [:]
            #expect(s.downtimeMs != nil && parts["pause"] != nil && parts["snapshot"] != nil && parts["resume"] != nil,
                    "run \(run): the guest was not paused around its snapshots: \(s)")
            let window = log.split(separator: "\n").first { $0.contains("guest downtime:") }.map(String.init) ?? "(no downtime line)"
            print("[lvm guest] two thin LVs, run \(run): \(s.downtimeMs ?? -1) ms \(parts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) — \(window)")
            totals.append(s.downtimeMs ?? -1)
            try expectRunning(h, vmid, "after backup \(run)")
            let left = try lvNames(vg).filter { $0.hasPrefix("snap_") }
            #expect(left.isEmpty, "run \(run): snapshots left: \(left)")
            last = s
            nextSecond()
        }
        print("[lvm guest] two thin LVs: downtime median \(totals.sorted()[totals.count / 2]) ms of \(totals)")
        let restored = try restoredDisk(h, try #require(last?.archive), vmid + 1, storage: "thin")
        #expect(Self.masked(restored) == Self.masked(before), "restored scsi0: difference \(Self.firstDifference(Self.masked(restored), Self.masked(before)))")
        let inArchive = try Self.records(restored, "the restored scsi0")
        #expect(inArchive.lastSequence >= reportedBefore && inArchive.lastSequence <= reportedAfter + 8,
                "the last backup holds records up to \(inArchive.lastSequence); reported \(reportedBefore) before it, \(reportedAfter) after")
        print("[lvm guest] two thin LVs case took \(Int(Date().timeIntervalSince(t0))) s")
    }

    /// Plain lvm cannot snapshot: snapshot mode refuses with `--snapshot-fallback refuse`,
    /// falls back to suspend loudly by default, and with fleecing keeps the guest running
    /// while the guest's writes during the backup stay out of the archive — with the
    /// fleecing images on a dir storage, and on an lvmthin one (issue 9: "or thin volumes").
    @Test func lvmSnapshotModeRefusesFallsBackOrFleeces() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        var pools: [String] = []
        defer { for p in pools { _ = try? Command.capture(["lvm", "lvremove", "-q", "-f", "\(vg)/\(p)"]) } }
        let h = try GuestHarness("lvm-thick")
        defer { h.tearDown() }
        let scratch = try Integration.scratchDirectory("lvm-guest")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try h.must(["storage", "add", "lvm", "thick", "--vgname", vg])
        try h.addStorage("dir", "local", under: scratch, extra: ["--content", "images,backup"])
        try h.addStorage("dir", "fl", under: scratch, extra: ["--content", "images"])
        let pool = "tpf\(UUID().uuidString.prefix(6).lowercased())"
        try Command.run(["lvm", "lvcreate", "-q", "-L", "128M", "-T", "\(vg)/\(pool)"])
        pools.append(pool)
        try h.must(["storage", "add", "lvmthin", "thinfl", "--vgname", vg, "--thinpool", pool])
        let vmid = 710
        let (_, before) = try await startGuest(h, vmid, storage: "thick", content: Self.pattern(seed: 2), writing: .until(40))

        let refused = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "local", "--snapshot-fallback", "refuse"])
        #expect(refused.status != 0, "\(refused)")
        #expect(refused.stderr.contains("thick LVM volumes have no snapshots") && refused.stderr.contains("refusing (--snapshot-fallback refuse)"),
                "\(refused.stderr)")
        try expectRunning(h, vmid, "after the refused backup")

        let fallback = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "local", "--output-format", "json"])
        let fs = try summary(fallback)
        #expect(fallback.status == 0 && fs.ok && fs.mode == "suspend", "\(fallback)")
        #expect(fs.fallbackReason?.contains("scsi0 on thick: thick LVM volumes have no snapshots") == true, "\(fs)")
        #expect(TaskLogEvents.text(fallback.stderr).contains("trying 'suspend' mode"), "\(fallback.stderr)")
        try expectRunning(h, vmid, "after the suspend fallback")

        // Fleecing, its images on a dir storage (qcow2 files) and on an lvmthin one (thin LVs holding the qcow2).
        let hook = try HoldingHook(h)
        var pointInTime = before
        for (fl, value) in [("fl", UInt8(0xa5)), ("thinfl", UInt8(0x3c))] {
            try? FileSystem.remove(hook.dir + "/go")
            try? FileSystem.remove(hook.dir + "/held")
            let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=\(fl)",
                                              "--script", hook.path, "--output-format", "json"])
            #expect(bg.wait(until: { hook.reached }, timeout: 300), "\(fl): the backup never reached post-restart: \(bg.stderr)")
            let images = fl == "fl" ? h.storageFiles().filter { $0.contains("/vm-\(vmid)-fleece-0.qcow2") }
                                    : try lvNames(vg).filter { $0 == "vm-\(vmid)-fleece-0" }
            #expect(images.count == 1, "\(fl): no fleecing image during the backup")
            try await Self.writeAsGuest(h, vmid, value: value)
            try hook.release()
            let end = bg.finish(timeout: 600)
            let log = TaskLogEvents.text(bg.stderr)
            #expect(end.status == 0 && !end.signaled, "\(fl): \(end): \(log)")
            let s = try summary(bg)
            #expect(s.ok && s.mode == "snapshot" && s.method == "fleecing", "\(fl): \(s)")
            #expect(log.contains("INFO: snapshot method: fleecing") && log.contains("using fleecing instead"), "\(log)")
            #expect(log.contains("fleecing images on storage '\(fl)': vm-\(vmid)-fleece-0"), "\(log)")
            #expect(!log.contains("paused for") && !log.contains("suspending") && s.downtimeParts?["pause"] == nil, "\(log)")
            try expectRunning(h, vmid, "after the fleecing backup (\(fl))")
            let leftFiles = h.storageFiles().filter { $0.contains("-fleece-") }, leftLVs = try lvNames(vg).filter { $0.contains("-fleece-") }
            #expect(leftFiles.isEmpty && leftLVs.isEmpty, "\(fl): fleecing images left: \(leftFiles) \(leftLVs)")
            let live = try Self.read(try h.volumePath("thick:vm-\(vmid)-disk-0"))
            let expectedLive = Self.afterGuestWrite(pointInTime, value: value)
            #expect(live == expectedLive, "\(fl): the guest's write did not reach its LV")
            let restored = try restoredDisk(h, try #require(s.archive), vmid + (fl == "fl" ? 1 : 2), storage: "thick")
            #expect(restored == pointInTime, "\(fl): restored disk is not the point-in-time content: difference \(Self.firstDifference(restored, pointInTime))")
            pointInTime = expectedLive
            nextSecond()
        }
        print("[lvm guest] lvm case (refuse, fallback, fleecing) took \(Int(Date().timeIntervalSince(t0))) s")
    }

    /// SIGKILL of a fleecing backup whose image is a thin LV (`LVMThinFleecing`):
    /// the killed run leaves the LV (and QEMU's job and export); the next run
    /// removes them and says so, and after a second kill `vm unlock` does.
    @Test func killedFleecingBackupOnLvmthinLeavesNothing() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        let pool = "tpk\(UUID().uuidString.prefix(6).lowercased())"
        try Command.run(["lvm", "lvcreate", "-q", "-L", "128M", "-T", "\(vg)/\(pool)"])
        defer { _ = try? Command.capture(["lvm", "lvremove", "-q", "-f", "\(vg)/\(pool)"]) }
        let h = try GuestHarness("lvm-kill")
        defer { h.tearDown() }
        let scratch = try Integration.scratchDirectory("lvm-guest")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try h.must(["storage", "add", "lvm", "thick", "--vgname", vg])
        try h.must(["storage", "add", "lvmthin", "thinfl", "--vgname", vg, "--thinpool", pool])
        try h.addStorage("dir", "local", under: scratch, extra: ["--content", "images,backup"])
        let vmid = 740
        _ = try await startGuest(h, vmid, storage: "thick", content: Self.pattern(seed: 5), writing: .until(40))
        let image = "vm-\(vmid)-fleece-0"
        let args = ["\(vmid)", "--mode", "snapshot", "--storage", "local", "--fleecing", "enabled=1,storage=thinfl", "--output-format", "json"]

        func killHeld() throws {
            let hook = try HoldingHook(h)
            try? FileSystem.remove(hook.dir + "/go")
            try? FileSystem.remove(hook.dir + "/held")
            let bg = try BackgroundBackup(h, args + ["--script", hook.path])
            #expect(bg.wait(until: { hook.reached }, timeout: 300), "the backup never reached post-restart: \(bg.stderr)")
            bg.signal(SIGKILL)
            let end = bg.finish(timeout: 60)
            try hook.release()     // the orphaned hook script exits
            #expect(end.signaled && end.status == SIGKILL, "\(end)")
            let lvs = try lvNames(vg)
            #expect(lvs.contains(image), "the killed run's fleecing LV is gone already: \(lvs)")
            try expectRunning(h, vmid, "after the kill", lockAllowed: true)
        }

        try killHeld()
        let next = try h.run(["backup"] + args)
        let log = TaskLogEvents.text(next.stderr)
        let ns = try summary(next)
        #expect(next.status == 0 && ns.ok, "\(log)")
        for line in ["WARN: VM \(vmid) has a stale 'backup' lock left by an earlier run that was killed - removing it",
                     "WARN: removed fleecing image /dev/\(vg)/\(image), left by an earlier run that was killed"] {
            #expect(log.contains(line), "missing: \(line)\n\(log)")
        }
        let afterNext = try lvNames(vg)
        #expect(!afterNext.contains { $0.contains("-fleece-") }, "fleecing LVs left after the next run: \(afterNext)")
        try expectRunning(h, vmid, "after the next run")

        nextSecond()
        try killHeld()
        let u = try h.run(["vm", "unlock", "\(vmid)"])
        #expect(u.status == 0, "\(u)")
        #expect(u.stderr.contains("WARN: removed block job snapdump-fleecing-scsi0, left by a backup that was killed"), "\(u)")
        #expect(u.stderr.contains("WARN: removed fleecing image /dev/\(vg)/\(image), left by a backup that was killed"), "\(u)")
        #expect(FileSystem.exists("/dev/\(vg)/vm-\(vmid)-disk-0"), "the guest's own LV link is gone")
        let afterUnlock = try lvNames(vg)
        #expect(!afterUnlock.contains { $0.contains("-fleece-") }, "vm unlock left the fleecing LV: \(afterUnlock)")
        try expectRunning(h, vmid, "after vm unlock")
        print("[lvm guest] killed fleecing on lvmthin case took \(Int(Date().timeIntervalSince(t0))) s")
    }

    /// A real read error under a running guest's LV (its device-mapper table
    /// reloaded with an `error` target over MiB 8, QEMU keeping it open): the
    /// backup — suspend fallback reading the LV, and fleecing reading it through
    /// QEMU's NBD export — fails naming the volume and the offset; the guest
    /// runs on, nothing is left (no archive, no fleecing image, no lock).
    @Test func readErrorUnderARunningGuestFailsTheBackupCleanly() async throws {
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let t0 = Date()
        let h = try GuestHarness("lvm-err")
        defer { h.tearDown() }
        let scratch = try Integration.scratchDirectory("lvm-guest")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try h.must(["storage", "add", "lvm", "thick", "--vgname", vg])
        try h.addStorage("dir", "local", under: scratch, extra: ["--content", "images,backup"])
        try h.addStorage("dir", "fl", under: scratch, extra: ["--content", "images"])
        let vmid = 720
        _ = try await startGuest(h, vmid, storage: "thick", content: Self.pattern(seed: 3), writing: .until(40))

        // The LV's own dm device: one linear segment on the PV, split around the bad MiB.
        let dm = "\(vg.replacingOccurrences(of: "-", with: "--"))-vm--\(vmid)--disk--0"
        let env = ["DM_DISABLE_UDEV": "1"]
        let original = try Command.run(["dmsetup", "table", dm], environment: env)
        let f = original.split(whereSeparator: \.isWhitespace).map(String.init)
        try #require(f.count == 5 && f[2] == "linear", "LV \(dm) is not one linear segment: \(original)")
        let sectors = try #require(Int(f[1])), start = try #require(Int(f[4]))
        let bad = Self.guestWrite.offset / 512, badLen = Self.mib / 512
        let table = "0 \(bad) linear \(f[3]) \(start)\n\(bad) \(badLen) error\n\(bad + badLen) \(sectors - bad - badLen) linear \(f[3]) \(start + bad + badLen)\n"
        func load(_ t: String) throws {
            try Command.run(["dmsetup", "suspend", dm], environment: env)
            defer { _ = try? Command.capture(["dmsetup", "resume", dm], environment: env) }
            try Command.run(["dmsetup", "load", dm], environment: env, input: t)
        }
        try load(table)
        defer { try? load(original) }
        // The backup reads the LV through the page cache, which still holds MiB 8 from
        // the test's own writes and reads: drop it, so the read reaches the error target.
        try Command.run(["blockdev", "--flushbufs", "/dev/\(vg)/vm-\(vmid)-disk-0"])

        let dumpdir = scratch + "/\(h.tag)-local/dump"
        for (label, extra) in [("suspend fallback", [String]()), ("fleecing", ["--fleecing", "enabled=1,storage=fl"])] {
            let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "local", "--output-format", "json"] + extra)
            let log = TaskLogEvents.text(r.stderr)
            #expect(r.status != 0, "\(label): backup over an unreadable MiB succeeded: \(log)")
            let s = try summary(r)
            let message = s.error ?? ""
            print("[lvm guest] read error, \(label): \(message)")
            for line in log.split(separator: "\n") where line.contains("ERROR") || line.contains("WARN") { print("[lvm guest]   log: \(line)") }
            #expect(!s.ok && (message.contains("vm-\(vmid)-disk-0") || message.contains("scsi0")), "\(label): \(s)")
            let offset = message.split(whereSeparator: { !$0.isNumber }).compactMap { UInt64($0) }.first { $0 >= 4 << 20 && $0 <= 9 << 20 }
            #expect(offset != nil, "\(label): no offset near MiB 8 in '\(message)'")
            #expect(label != "fleecing" || s.method == "fleecing", "\(s)")
            try expectRunning(h, vmid, "after the failed backup (\(label))")
            let files = (try? FileSystem.list(dumpdir)) ?? []
            let left = files.filter { $0.contains(".vma") || $0.contains(".dat") || $0.contains(".tmp") }
            #expect(left.isEmpty, "\(label): archive files left in \(dumpdir): \(left)")
            #expect(h.storageFiles().filter { $0.contains("-fleece-") }.isEmpty, "\(label): fleecing image left")
        }
        print("[lvm guest] read error case took \(Int(Date().timeIntervalSince(t0))) s")
    }
}
