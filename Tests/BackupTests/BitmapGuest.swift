import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// The guest of the dirty-bitmap tests (FleecingIncrementalTests, QCOW2IncrementalTests): the test guest
/// without workload, so only the test writes (through QEMU's device, as the guest would), one 64 MiB
/// disk `scsi0` holding 40 MiB of random data from 8 MiB on, backed up into repository `r1`.
struct BitmapGuest {
    let h: GuestHarness
    let vmid: Int
    let repo: Repository
    /// The disk's volume id and image file.
    let volume: String
    let image: String

    /// Creates the guest (not started) with its disk on storage `storage`.
    init(_ h: GuestHarness, vmid: Int, storage: String, repository root: String) throws {
        self.h = h
        self.vmid = vmid
        try h.must(["vm", "create", "\(vmid)", "--name", "guest\(vmid)", "--memory", "256", "--scsi0", "\(storage):64M", "--agent", "1",
                    "--kernel", h.guestDir + "/vmlinuz", "--initrd", h.guestDir + "/initramfs.gz",
                    "--append", "console=ttyS0 quiet panic=-1 snapdump.workload=0"])
        try h.prefill(vmid, mib: 40, atMiB: 8)
        repo = try Repository(root: root)
        volume = try h.volume(vmid)
        image = try h.volumePath(volume)
    }

    func boot() async throws {
        try? FileSystem.remove(h.consoleLog(vmid))
        try h.must(["vm", "start", "\(vmid)"])
        _ = try await h.waitForConsole(vmid, "SNAPDUMP-GUEST READY", timeout: .seconds(120))
        try await Task.sleep(for: .seconds(2))  // the agent answers a moment after READY
    }

    /// Writes through the guest's device (as the guest would): each `(offset, length, how)` is a
    /// `qemu-io write` (`-P <byte>` or `-z`). `statusMonitor`: through QEMU's second monitor, since a
    /// running fleecing holds the first one for its watch.
    func write(_ offsets: [(Int, Int, String)], statusMonitor: Bool = false) async throws {
        let qmp = statusMonitor ? try await QMPClient.connect(path: h.paths.qmpStatusSocket(vmid))
            : try await VMLifecycle(paths: h.paths).connectQMP(vmid: vmid)
        for (offset, length, how) in offsets {
            _ = try await qmp.execute("human-monitor-command", arguments: [
                "command-line": .string("qemu-io -d scsi0 \"write \(how) \(offset) \(length)\""),
            ])
        }
        await qmp.close()
    }

    /// The bitmaps QEMU holds on the disk's node, as `query-named-block-nodes` reports them.
    func bitmaps() async throws -> [JSONValue] {
        let qmp = try await VMLifecycle(paths: h.paths).connectQMP(vmid: vmid)
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": true])
        await qmp.close()
        let node = try #require(nodes.arrayValue?.first { $0["node-name"]?.stringValue == "drive-scsi0" })
        return node["dirty-bitmaps"]?.arrayValue ?? []
    }

    /// `snapdump backup` of the guest into `r1` (in the next second: snapshot names carry seconds); it must succeed.
    func backup(mode: String = "snapshot", _ extra: [String] = []) throws -> (log: String, summary: BackupSummary) {
        nextSecond()
        let r = try h.run(["backup", "\(vmid)", "--mode", mode, "--storage", "r1", "--output-format", "json"] + extra)
        try #require(r.status == 0, "\(r)")
        return (TaskLogEvents.text(r.stderr), try #require(try backupSummaries(r.stdout).first))
    }

    /// A snapshot-mode backup into `r1` in the background, slowed down to `bwlimit` KiB/s, once its log
    /// shows what `reached` looks for (else the test stops there, saying `missing` and the log).
    func startSlowBackup(bwlimit: Int = 256, _ extra: [String] = [], reached: @escaping (String) -> Bool, missing: String) throws -> BackgroundBackup {
        nextSecond()
        let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "r1", "--bwlimit", "\(bwlimit)"] + extra)
        try #require(bg.wait(until: { reached(bg.stderr) }), "\(missing): \(bg.stderr)")
        return bg
    }

    /// The base the newest backup in `r1` recorded.
    func newestBase() throws -> String { BaseSnapshot.name(backupTime: try repo.snapshots().last!.time, repository: "r1") }

    /// The restore of the newest backup against the image: the guest stopped, or running with no write
    /// since the backup (the test's writes are complete when `qemu-io` returns; the guest makes none).
    /// A qcow2 image is compared as the raw disk it holds (the guest stopped: QEMU locks it).
    func expectRestoreEqualsImage(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let last = try #require(try repo.snapshots().last)
        let restored = try restoreDisk(repo, last, to: h.configDir + "/restored.raw")
        var raw = image
        if image.hasSuffix(".qcow2") {
            raw = h.configDir + "/image.raw"
            try Command.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw])
        }
        #expect(try Command.run(["cmp", raw, restored]).isEmpty, "restore of \(last) differs from the image", sourceLocation: sourceLocation)
    }

    /// The rows of `snapshot list` for the disk (also once the guest is destroyed), as `(snapshot, used, base)`.
    func snapshotRows() throws -> [(name: String, used: UInt64?, base: Bool)] {
        let r = try h.must(["snapshot", "list", "--output-format", "json"])
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r.stdout)")
        return rows.filter { $0["volid"] as? String == volume }.map {
            ($0["snapshot"] as? String ?? "", ($0["used"] as? NSNumber)?.uint64Value, $0["base"] as? Bool ?? false)
        }
    }

    /// The number of base snapshots and bitmaps `storage status` counts on `storage`.
    func basesCounted(on storage: String) throws -> Int? {
        let r = try h.must(["storage", "status", storage, "--output-format", "json"])
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r.stdout)")
        return (rows.first?["base_snapshots"] as? NSNumber)?.intValue
    }

    /// `backup remove` of the newest backup in `r1` (the chain's end): its stderr.
    func removeNewestBackup() throws -> String {
        let list = try h.must(["backup", "list", "r1", "--output-format", "json"]).stdout
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(list.utf8)) as? [[String: Any]], "\(list)")
        let newest = try #require(entries.compactMap { $0["volid"] as? String }.max(), "\(list)")
        return try h.must(["backup", "remove", newest]).stderr
    }
}
