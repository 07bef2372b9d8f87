import Foundation
import Repository
import SnapdumpConfig
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// A guest's disk through its storage plugin (an rbd image has no file to `dd` into or `cmp`).
struct PluginDisk {
    let volume: VolumeID
    let plugin: any StoragePlugin

    init(_ h: GuestHarness, _ volid: String) throws {
        volume = try VolumeID(parsing: volid)
        plugin = try StorageRegistry(paths: h.paths).plugin(for: volume)
    }

    func write(_ bytes: [UInt8], at offset: Int) throws {
        let w = try plugin.openForWriting(volume)
        try bytes.withUnsafeBytes { try w.write($0, at: UInt64(offset)) }
        try w.sync()
        try w.close()
    }

    /// The volume's bytes now (snapshot nil) or at `snapshot`.
    func bytes(snapshot: String? = nil) throws -> [UInt8] {
        let src = try plugin.openBlockSource(volume, snapshot: snapshot)
        defer { try? src.close() }
        var out = [UInt8](repeating: 0, count: Int(src.size))
        try out.withUnsafeMutableBytes { b in
            var done = 0
            while done < b.count {
                let n = try src.read(at: UInt64(done), into: UnsafeMutableRawBufferPointer(rebasing: b[done...]))
                guard n > 0 else { throw HarnessError("short read of \(volume) at \(done)") }
                done += n
            }
        }
        return out
    }
}

/// Deterministic bytes (a seed per change, so a rewrite can repeat them).
func pseudoRandom(_ n: Int, seed: UInt64) -> [UInt8] {
    var s = seed
    return (0..<n).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: s >> 33)
    }
}

/// One repository and one guest with a 64 MiB disk: backups and what they left.
struct IncrementalRig {
    let h: GuestHarness
    let vmid: Int
    let repo: Repository
    let repoRoot: String
    let volid: String
    let storage: String
    /// The repository's storage id.
    var repoID = "r1"

    /// `snapdump backup` into the repository with the JSON summary; the log as text.
    func backup(_ extra: [String] = [], mode: String = "stop") throws -> (log: String, summary: BackupSummary) {
        nextSecond()
        let r = try h.run(["backup", "\(vmid)", "--mode", mode, "--storage", repoID, "--output-format", "json"] + extra)
        try #require(r.status == 0, "\(r)")
        return (TaskLogEvents.text(r.stderr), try #require(try backupSummaries(r.stdout).first))
    }

    /// Base snapshots on the storage, from `snapshot list --output-format json` (marked `base`).
    func bases() throws -> [String] {
        let out = try h.must(["snapshot", "list", storage, "--output-format", "json"]).stdout
        let list = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        for s in list {
            let name = s["snapshot"] as? String ?? ""
            #expect((s["base"] as? Bool) == BaseSnapshot.isBase(name), "snapshot list marks '\(name)' wrongly: \(s)")
        }
        return list.filter { $0["base"] as? Bool == true }.compactMap { $0["snapshot"] as? String }.sorted()
    }

    /// The restore of the newest snapshot, byte for byte.
    func restoredNewest() throws -> [UInt8] {
        let last = try #require(try repo.snapshots().last)
        let path = try restoreDisk(repo, last, to: h.configDir + "/restored-\(vmid).raw")
        defer { try? FileSystem.remove(path) }
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// A harness with storage `st` of `kind`, repository `r1` and a stopped guest `vmid` with a
    /// 64 MiB disk on `st`; the caller tears `h` down (here only if setting up failed).
    static func start(_ kind: TestStorageKind, vmid: Int, label: String) throws -> IncrementalRig {
        try Integration.need(kind.fixture)
        let h = try GuestHarness(label: label)
        do {
            try h.addStorage("st", kind)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "st:64M")
            return IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: try h.volume(vmid), storage: "st")
        } catch {
            h.tearDown()
            throw error
        }
    }

    /// The per-disk record the newest manifest keeps for scsi0.
    func newestRecord() throws -> Manifest.BaseSnapshotRecord? {
        let last = try #require(try repo.snapshots().last)
        return try repo.manifest(last).unprotected.baseSnapshots?.first { $0.filename == "drive-scsi0.img.fidx" }
    }
}

extension NothingLostTests {
    /// Incremental forever through the whole engine (issue 11): options, per-disk log and summary,
    /// the bases' life cycle (status, list, removal with the disk or the repository chain), and
    /// the storages the btrfs and reflink tests in RepositoryBackupTests do not cover.
    @Suite("Incremental forever through the engine", .serialized)
    struct IncrementalEngineTests {
        static let mib = 1 << 20

        /// `--full`, `full-every N` (command line and vzdump.conf), the per-disk log line and
        /// summary, the count in the manifests; storage status and snapshot list; a repository
        /// that lost its newest backup; `backup remove`, `prune` and `volume free` with bases.
        @Test func optionsLogAndBaseLifecycleOnBtrfs() async throws {
            let base = try Integration.need("SNAPDUMP_TEST_BTRFS")[0]
            let vmid = 474
            let h = try GuestHarness(label: "inc-engine-btrfs")
            defer { h.tearDown() }
            try h.addStorage("btrfs", "bt", under: base)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "bt:64M")
            let volid = try h.volume(vmid)
            let rig = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: volid, storage: "bt")
            let disk = try PluginDisk(h, volid)
            let mib = Self.mib
            // 40 MiB of data at 8 MiB: chunks 2…11 hold data, the other six are holes.
            try disk.write(pseudoRandom(40 * mib, seed: 1), at: 8 * mib)

            let first = try rig.backup()
            #expect(first.log.contains("drive-scsi0: full read: no previous backup of vm/\(vmid)"), "\(first.log)")
            // Ten data chunks and the zero chunk (for the holes, stored once) are new.
            #expect(first.log.contains("drive-scsi0: full: 10 of 16 chunks read, \(ByteCount.format(UInt64(40 * mib))) read, 11 new chunks stored ("),
                    "\(first.log)")
            let d1 = try #require(first.summary.disks?.first)
            #expect(d1.name == "drive-scsi0" && d1.method == "full" && d1.chunks == 16 && d1.read == 10 && d1.fromPrevious == 0)
            #expect(d1.bytesRead == UInt64(40 * mib) && d1.newChunks == 11 && d1.storedBytes > 0)
            #expect(d1.fullReason?.contains("no previous backup") == true)
            #expect(try rig.newestRecord()?.incrementalRuns == 0)
            #expect(try rig.restoredNewest() == disk.bytes())

            // full-every 3: two incremental backups, then a full read; the count is in each manifest.
            var seed: UInt64 = 10
            func change(at offset: Int) throws {
                seed += 1
                try disk.write(pseudoRandom(4096, seed: seed), at: offset)
            }
            try change(at: 1 * mib)
            let second = try rig.backup(["--full-every", "3"])
            // Only the 4 KiB written is read, laid over the previous backup's chunk.
            #expect(second.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send), \(ByteCount.format(4096)) read, 1 new chunks stored ("),
                    "\(second.log)")
            #expect(second.log.contains("1 chunks patched (previous chunk + changed ranges)"), "\(second.log)")
            let d2 = try #require(second.summary.disks?.first)
            #expect(d2.method == "btrfs send" && d2.fullReason == nil && d2.read == 1 && d2.fromPrevious == 15 && d2.newChunks == 1, "\(d2)")
            #expect(d2.bytesRead == 4096 && d2.storedBytes > 0 && d2.storedBytes < UInt64(4 * mib) + 4096)
            #expect(try rig.newestRecord()?.incrementalRuns == 1)
            try change(at: 30 * mib)
            let third = try rig.backup(["--full-every", "3"])
            #expect(third.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send)"), "\(third.log)")
            // Random data: its blobs are stored uncompressed, not as frames, so nothing resumes at a frame.
            #expect(third.log.contains("1 chunks patched (previous chunk + changed ranges)") && !third.log.contains("resumed"), "\(third.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try rig.newestRecord()?.incrementalRuns == 2)
            try change(at: 40 * mib)
            let fourth = try rig.backup(["--full-every", "3"])
            #expect(fourth.log.contains("drive-scsi0: full read: full-every 3 reached"), "\(fourth.log)")
            #expect(fourth.summary.disks?.first?.fullReason == "full-every 3 reached" && fourth.summary.disks?.first?.fromPrevious == 0)
            #expect(try rig.newestRecord()?.incrementalRuns == 0)
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try rig.bases().count == 1, "the old base stays until the full backup's manifest, then goes")

            // --full, and full-every from vzdump.conf.
            try change(at: 41 * mib)
            let fifth = try rig.backup(["--full"])
            #expect(fifth.log.contains("drive-scsi0: full read: --full given"), "\(fifth.log)")
            #expect(fifth.log.contains("--full 1"), "the job's command line names --full: \(fifth.log)")
            try "full-every: 1\n".write(toFile: h.paths.vzdumpConfig, atomically: true, encoding: .utf8)
            let sixth = try rig.backup()
            #expect(sixth.log.contains("drive-scsi0: full read: full-every 1 reached"), "\(sixth.log)")
            try FileSystem.remove(h.paths.vzdumpConfig)
            try change(at: 2 * mib)
            let seventh = try rig.backup()
            #expect(seventh.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send)"), "\(seventh.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            let bad = try h.run(["backup", "\(vmid)", "--storage", "r1", "--full-every", "-1"])
            #expect(bad.status != 0 && bad.stderr.contains("full-every"), "\(bad)")

            // storage status counts the base, snapshot list marks it (checked in bases()).
            let bases = try rig.bases()
            #expect(bases == [BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1")])
            let status = try h.must(["storage", "status", "bt", "--output-format", "json"]).stdout
            let st = try #require((try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [[String: Any]])?.first)
            #expect(st["base_snapshots"] as? Int == 1, "\(st)")
            #expect(try h.must(["storage", "status", "bt"]).stdout.contains("Bases"))

            // prune keeping the newest keeps its base.
            let pruned = try h.must(["prune", "r1", "--keep-last", "2"])
            #expect(try rig.repo.snapshots().count == 2, "\(pruned)")
            #expect(try rig.bases() == bases)

            // The repository lost the newest backup (its directory removed by hand): the next backup is full, saying why.
            let newest = try #require(try rig.repo.snapshots().last)
            try Command.run(["rm", "-rf", rig.repo.directory(of: newest)])
            try change(at: 3 * mib)
            let lost = try rig.backup()
            #expect(lost.log.contains("drive-scsi0: full read: ") && lost.log.contains("'\(bases[0])' of \(volid) belongs to no backup left in the repository"),
                    "\(lost.log)")
            #expect(lost.summary.disks?.first?.fromPrevious == 0)
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try rig.bases() == [BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1")], "the lost backup's base dropped")

            // `backup remove` of the guest's newest backup: its base goes at once.
            let newest2 = try #require(try rig.repo.snapshots().last)
            let removed = try h.must(["backup", "remove", RepositoryStore(storage: "r1", repository: rig.repo).volume(newest2).description])
            #expect(removed.stderr.contains("removed base snapshot '\(BaseSnapshot.name(backupTime: newest2.time, repository: "r1"))' of '\(volid)'"), "\(removed)")
            #expect(try rig.bases().isEmpty)
            let afterRemove = try rig.backup()
            #expect(afterRemove.log.contains("drive-scsi0: full read: "), "\(afterRemove.log)")
            #expect(try rig.bases().count == 1)

            // `volume free`: refused while another snapshot exists (the base stays), else the base goes with the disk.
            try h.must(["snapshot", "create", volid, "--name", "manual"])
            let refused = try h.run(["volume", "free", volid])
            #expect(refused.status != 0 && refused.stderr.contains("manual"), "\(refused)")
            #expect(try rig.bases().count == 1)
            try h.must(["snapshot", "delete", volid, "--name", "manual"])
            try h.must(["volume", "free", volid])
            #expect(try rig.bases().isEmpty)
            #expect(try h.must(["snapshot", "list", "bt"]).stdout.split(separator: "\n").count == 1, "header only")
        }

        /// Compressible data (its chunks stored as 1 MiB zstd frames): a change in a chunk's third
        /// frame resumes the chunk's hash from the state the previous backup recorded at 2 MiB
        /// (`drive-scsi0.img.fidx.midstates`, kept by the newest backup only), also where the
        /// chunk was taken unread by the backup in between; restores and verifies.
        @Test func changedChunkResumesAtItsFirstChangedFrame() async throws {
            let rig = try IncrementalRig.start(.btrfs, vmid: 486, label: "inc-engine-resume")
            let h = rig.h
            defer { h.tearDown() }
            let disk = try PluginDisk(h, rig.volid)
            let mib = Self.mib
            // Text-like data: 16 distinct byte values, compresses about 2:1.
            var seed: UInt64 = 99
            let data = (0..<(16 * mib)).map { _ -> UInt8 in
                seed = seed &* 6364136223846793005 &+ 1442695040888963407
                return 0x41 + UInt8(truncatingIfNeeded: seed >> 60)
            }
            try disk.write(data, at: 0)
            _ = try rig.backup()
            func statesFiles() throws -> [String] {
                try rig.repo.snapshots().filter {
                    FileSystem.exists(rig.repo.directory(of: $0) + "/drive-scsi0.img.fidx.midstates")
                }.map(\.path)
            }
            #expect(try statesFiles() == [try #require(try rig.repo.snapshots().last).path])
            // Chunk 1 (4-8 MiB): 4 KiB at 6 MiB + 100, in its third frame.
            try disk.write([UInt8](repeating: 0x7A, count: 4096), at: 6 * mib + 100)
            let second = try rig.backup()
            #expect(second.log.contains("1 chunks patched (previous chunk + changed ranges), 1 of them resumed at their first changed frame"),
                    "\(second.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            // Chunk 2 (8-12 MiB), taken unread by the second backup: its states came along.
            try disk.write([UInt8](repeating: 0x7B, count: 4096), at: 11 * mib)
            let third = try rig.backup()
            #expect(third.log.contains("1 chunks patched (previous chunk + changed ranges), 1 of them resumed at their first changed frame"),
                    "\(third.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try statesFiles() == [try #require(try rig.repo.snapshots().last).path])
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")
        }

        /// The engine on zfspool (zfs-fuse) and rbd (the Ceph fixture): two backups with a 4 KiB
        /// write into a hole, an identical rewrite and a discard (zeros where the storage cannot
        /// discard) between them read exactly the chunks the storage reports (those three; on zfs-fuse
        /// also the old holes), store two, and restore byte for byte.
        @Test(arguments: [TestStorageKind.zfspool, .rbd])
        func incrementalForeverOnZFSAndRBD(_ kind: TestStorageKind) async throws {
            let vmid = kind == .zfspool ? 475 : 476
            let rig = try IncrementalRig.start(kind, vmid: vmid, label: "inc-engine-\(kind.rawValue)")
            let h = rig.h, volid = rig.volid
            defer { h.tearDown() }
            let disk = try PluginDisk(h, volid)
            let mib = Self.mib
            try disk.write(pseudoRandom(40 * mib, seed: 2), at: 8 * mib)
            let method = kind == .zfspool ? "zfs send" : "rbd diff"

            let first = try rig.backup()
            #expect(first.log.contains("drive-scsi0: full read: no previous backup"), "\(first.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try rig.bases() == [BaseSnapshot.name(backupTime: try rig.repo.snapshots()[0].time, repository: "r1")])

            // Chunk 0: 4 KiB into a hole. Chunk 5: 64 KiB of identical data written again. Chunk 8: 256 KiB discarded.
            try disk.write(pseudoRandom(4096, seed: 3), at: 1 * mib)
            let same = try disk.bytes()
            try disk.write(Array(same[21 * mib..<21 * mib + 65536]), at: 21 * mib)
            if kind == .rbd {
                let pool = "\(h.tag)-st"
                let image = try #require(volid.split(separator: ":").last)
                let ceph = try CephFixture.require()
                try Command.run(["qemu-io", "-f", "raw", "-c", "discard \(33 * mib) 262144",
                                 "rbd:\(pool)/\(image):conf=\(ceph.conf):id=admin:keyring=\(ceph.keyring)"])
            } else {
                // zfs-fuse cannot punch holes ("keep size mode is unsupported"): zeros written instead.
                try disk.write([UInt8](repeating: 0, count: 262144), at: 33 * mib)
            }
            let after = try disk.bytes()
            #expect(after[33 * mib..<33 * mib + 262144].allSatisfy { $0 == 0 } && after[21 * mib..<22 * mib] == same[21 * mib..<22 * mib])

            // rbd diff lists the three (the discard as zeros, not read). zfs-fuse's pool has no hole birth times, so
            // `zfs send -i` sends a FREE record for every hole, old ones too: the five chunks that were holes at both
            // snapshots (1, 12…15) are reported as well (a superset is safe) but as zeros, so not read either:
            // they were the zero chunk and only zeros changed in them, so their digests come from the previous index.
            // Only the changed ranges are read (zfs: whole 128 KiB records; rbd: 1.3 MiB seen, its extents of a
            // discarded range and of a write into a new object are coarser), never whole chunks (3 × 4 MiB).
            let second = try rig.backup()
            #expect(second.log.contains("drive-scsi0: incremental: "), "\(second.log)")
            let d = try #require(second.summary.disks?.first)
            #expect(d.method == method && d.fromPrevious == 16 - 3 && d.newChunks == 2, "\(d)")
            #expect(d.read <= 3 && d.bytesRead >= 4096 + 65536 && d.bytesRead <= 2 << 20, "\(d)")
            #expect(try rig.restoredNewest() == after, "restore of the incremental backup differs from the disk")
            #expect(try rig.bases() == [BaseSnapshot.name(backupTime: try rig.repo.snapshots()[1].time, repository: "r1")], "old base not dropped")
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir", expectRunning: false)
            let status = try h.must(["storage", "status", "st", "--output-format", "json"]).stdout
            #expect(status.contains("\"base_snapshots\":1"), "\(status)")
            // The base goes with the disk.
            try h.must(["vm", "destroy", "\(vmid)"])
            #expect(try rig.bases().isEmpty)
        }

        /// zfs-fuse without a read clone (issue 11): the full backup records the raw file's object and size
        /// on its base snapshot; the next backup follows that object through the `zfs send` stream and takes
        /// the changed data from it (nothing read from the snapshot). A file created beside the disk (its
        /// directory written) sends the backup to a clone to find the file, still the same object, data
        /// still from the stream; the disk file replaced by a copy (its object freed) or by an older file
        /// swapped with it (another object, found through clones of both snapshots when the base's record
        /// is missing) is a full read. Every restore equals the disk byte for byte.
        @Test func zfsFuseFollowsTheFileThroughTheStream() async throws {
            let rig = try IncrementalRig.start(.zfspool, vmid: 477, label: "inc-zfs-stream")
            let h = rig.h
            defer { h.tearDown() }
            let disk = try PluginDisk(h, rig.volid)
            let mib = Self.mib
            let path = try disk.plugin.path(of: disk.volume).path
            let directory = (path as NSString).deletingLastPathComponent
            let dataset = try ZFSRecords.dataset(holding: path)
            func recorded(_ base: String) throws -> String { try ZFSRecords.identity(disk.volume.volname, on: dataset, snapshot: base) }
            func liveIdentity() throws -> String { try ZFSRecords.liveIdentity(path) }
            func newestBase() throws -> String { BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1") }
            let stream = "changed data taken from the zfs send stream; 0 B read from the snapshot itself"
            try disk.write(pseudoRandom(40 * mib, seed: 7), at: 8 * mib)
            // Older than every base: renamed over the disk later.
            try Command.run(["cp", path, directory + "/older"])
            try Command.run(["dd", "if=/dev/urandom", "of=\(directory)/older", "bs=4096", "count=1", "seek=\(10 * 256)", "conv=notrunc", "status=none"])

            let first = try rig.backup()
            #expect(first.log.contains("drive-scsi0: full read: no previous backup"), "\(first.log)")
            #expect(try recorded(newestBase()) == liveIdentity(), "the full read records the file's object and size on its base")

            try disk.write(pseudoRandom(4096, seed: 8), at: 1 * mib)
            let second = try rig.backup()
            #expect(second.log.contains("drive-scsi0: incremental: ") && second.log.contains(stream), "\(second.log)")
            #expect(try rig.restoredNewest() == disk.bytes(), "restore of the stream-fed backup differs from the disk")
            #expect(try recorded(newestBase()) == liveIdentity(), "the identity the stream proved is recorded on the new base")
            #expect(!(try Command.run(["zfs", "list", "-H", "-o", "name"]).contains(ZFSPoolPlugin.clonePrefix)), "no read clone left")

            // A file created beside the disk: the directory is written, the file is looked up in a clone (the same object).
            try Data("x".utf8).write(to: URL(fileURLWithPath: directory + "/unrelated"))
            try disk.write(pseudoRandom(8192, seed: 9), at: 20 * mib + 4096)
            let third = try rig.backup()
            #expect(third.log.contains("drive-scsi0: incremental: ") && third.log.contains(stream), "\(third.log)")
            #expect(third.summary.disks?.first?.read == 1, "\(third.summary)")
            #expect(try rig.restoredNewest() == disk.bytes())
            try FileSystem.remove(directory + "/unrelated")

            // A file older than the base swapped with the disk, the base's record removed (as an older snapdump
            // left it): the base's file is looked up in a clone of the base, another object: read whole.
            try Command.run(["zfs", "inherit", "snapdump:object:\(disk.volume.volname)", "\(dataset)@\(try newestBase())"])
            #expect(try recorded(newestBase()) == "-")
            // Swapped, so the base's object lives on under another name (not freed: the stream alone cannot tell).
            try Command.run(["mv", path, directory + "/kept"])
            try Command.run(["mv", directory + "/older", path])
            let fourth = try rig.backup()
            #expect(fourth.log.contains("drive-scsi0: full read: ") && fourth.log.contains("(replaced or renamed)"), "\(fourth.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try recorded(newestBase()) == liveIdentity(), "the new file's object is recorded")
            try FileSystem.remove(directory + "/kept")

            // The disk file replaced by a changed copy: the recorded object is freed, read whole.
            try Command.run(["cp", path, path + ".new"])
            try Command.run(["dd", "if=/dev/urandom", "of=\(path).new", "bs=4096", "count=1", "seek=\(30 * 256)", "conv=notrunc", "status=none"])
            try Command.run(["mv", path + ".new", path])
            let fifth = try rig.backup()
            #expect(fifth.log.contains("drive-scsi0: full read: ") && fifth.log.contains("was freed (the file was removed or replaced)"), "\(fifth.log)")
            #expect(try rig.restoredNewest() == disk.bytes())

            try disk.write(pseudoRandom(4096, seed: 10), at: 50 * mib)
            let sixth = try rig.backup()
            #expect(sixth.log.contains("drive-scsi0: incremental: ") && sixth.log.contains(stream), "\(sixth.log)")
            #expect(try rig.restoredNewest() == disk.bytes())
            #expect(try rig.bases() == [try newestBase()])
        }

        /// A guest with two rbd images (issue 11): one group snapshot of both is read (no pause), and the
        /// base keeps on each image a user snapshot of the same name taken just before it, which librbd 16
        /// can diff from (it cannot from a group snapshot). A write into a hole, an identical rewrite and a
        /// discard on each image between two backups: exactly those chunks are reported, each restore
        /// equals its image byte for byte. The group snapshot and the marks go together: `backup remove`
        /// of the newest backup, `vm unlock` after a killed run, `volume free`, `vm destroy`.
        @Test func twoRBDImagesOfOneGuest() async throws {
            let ceph = try CephFixture.require()
            let vmid = 479
            let h = try GuestHarness(label: "inc-engine-rbd2")
            defer { h.tearDown() }
            try h.addStorage("st", .rbd)
            let pool = "\(h.tag)-st"
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "st:64M", fsDisk: "st:64M")
            let volids = [try h.volume(vmid), try h.volume(vmid, "scsi1")]
            let images = volids.map { String($0.split(separator: ":").last!) }
            let rig = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: volids[0], storage: "st")
            let disks = try volids.map { try PluginDisk(h, $0) }
            let names = ["drive-scsi0", "drive-scsi1"]
            let mib = Self.mib
            for (i, d) in disks.enumerated() { try d.write(pseudoRandom(40 * mib, seed: 30 + UInt64(i)), at: 8 * mib) }

            func json(_ args: [String]) throws -> [[String: Any]] {
                try #require(try JSONSerialization.jsonObject(with: Data(try ceph.cli(["rbd"] + args + ["--format", "json"]).utf8)) as? [[String: Any]])
            }
            /// The guest's group snapshots (none when the group is gone).
            func groupSnapshots() throws -> [String] {
                guard try ceph.cli(["rbd", "group", "ls", pool]).split(separator: "\n").contains("vm-\(vmid)") else { return [] }
                return try json(["group", "snap", "ls", "\(pool)/vm-\(vmid)"]).compactMap { $0["snapshot"] as? String }.sorted()
            }
            /// The user snapshots (marks) of an image.
            func marks(_ image: String) throws -> [String] {
                try json(["snap", "ls", "\(pool)/\(image)"]).compactMap { $0["name"] as? String }.sorted()
            }
            /// The newest backup's base: one group snapshot and a mark on each image, listed once per image.
            func expectOnlyBase(_ base: String, _ context: String) throws {
                #expect(try rig.bases() == [base, base], "\(context)")
                #expect(try groupSnapshots() == [base], "\(context)")
                for i in images { #expect(try marks(i) == [base], "\(context): \(i)") }
            }
            func newestBase() throws -> String { BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1") }
            func restoresEqualImages() throws {
                let last = try #require(try rig.repo.snapshots().last)
                for (d, name) in zip(disks, names) {
                    let path = try restoreDisk(rig.repo, last, to: h.configDir + "/restored-\(vmid).raw", file: name + ".img.fidx")
                    defer { try? FileSystem.remove(path) }
                    #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == (try d.bytes()), "restore of \(name) of \(last) differs from \(d.volume)")
                }
            }
            func discard(_ image: String, at offset: Int, _ length: Int) throws {
                try Command.run(["qemu-io", "-f", "raw", "-c", "discard \(offset) \(length)",
                                 "rbd:\(pool)/\(image):conf=\(ceph.conf):id=admin:keyring=\(ceph.keyring)"])
            }

            let first = try rig.backup()
            for n in names { #expect(first.log.contains("\(n): full read: no previous backup"), "\(first.log)") }
            try restoresEqualImages()
            try expectOnlyBase(try newestBase(), "after the first backup")

            // scsi0: 4 KiB into a hole (chunk 0), 64 KiB rewritten identically (5), 256 KiB discarded (8).
            // scsi1: 4 KiB into a hole (chunk 12), 64 KiB rewritten identically (3), 256 KiB discarded (10). librbd's
            // extents of a write into a new object start at the object's start (1 MiB here).
            let changes = [(write: 1, same: 21, discard: 33), (write: 49, same: 12, discard: 40)]
            for (i, c) in changes.enumerated() {
                try disks[i].write(pseudoRandom(4096, seed: 40 + UInt64(i)), at: c.write * mib)
                let same = try disks[i].bytes()
                try disks[i].write(Array(same[c.same * mib..<c.same * mib + 65536]), at: c.same * mib)
                try discard(images[i], at: c.discard * mib, 262144)
                let after = try disks[i].bytes()
                #expect(after[c.same * mib..<(c.same + 1) * mib] == same[c.same * mib..<(c.same + 1) * mib])
                #expect(after[c.discard * mib..<c.discard * mib + 262144].allSatisfy { $0 == 0 })
            }
            let second = try rig.backup()
            for n in names {
                #expect(second.log.contains("\(n): incremental: "), "\(second.log)")
                let d = try #require(second.summary.disks?.first { $0.name == n })
                // The three chunks, each read only where it changed (the discard not at all), two new chunks.
                #expect(d.method == "rbd diff" && d.fromPrevious == 13 && d.newChunks == 2, "\(d)")
                #expect(d.read <= 3 && d.bytesRead >= 4096 + 65536 && d.bytesRead <= 2 << 20, "\(d)")
            }
            try restoresEqualImages()
            try expectOnlyBase(try newestBase(), "the old base (group snapshot and marks) dropped")
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir", expectRunning: false)

            // `backup remove` of the newest backup: its base goes, group snapshot, marks and group alike.
            let newest = try #require(try rig.repo.snapshots().last)
            try h.must(["backup", "remove", RepositoryStore(storage: "r1", repository: rig.repo).volume(newest).description])
            #expect(try rig.bases().isEmpty && groupSnapshots().isEmpty)
            for i in images { #expect(try marks(i).isEmpty) }
            #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty, "rbd group left")
            let third = try rig.backup()
            for n in names { #expect(third.log.contains("\(n): full read: "), "\(third.log)") }
            let recorded = try newestBase()
            try expectOnlyBase(recorded, "after the third backup")

            // Killed after its new snapshot (stalled in the upload by --bwlimit): `vm unlock` removes the
            // killed run's group snapshot and marks, the recorded base stays and the next backup is incremental.
            try disks[0].write(pseudoRandom(4096, seed: 50), at: 2 * mib)
            try disks[1].write(pseudoRandom(4096, seed: 51), at: 3 * mib)
            nextSecond()
            let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "stop", "--storage", "r1", "--bwlimit", "1"])
            try #require(bg.wait(until: { ((try? groupSnapshots()) ?? []).count == 2 && !rig.repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty }),
                         "never took its snapshot: \(bg.stderr)")
            bg.signal(SIGKILL)
            #expect(bg.finish(timeout: 30).signaled)
            let leftover = try #require(try groupSnapshots().first { $0 != recorded })
            let unlock = try h.must(["vm", "unlock", "\(vmid)"])
            for v in volids { #expect(unlock.stderr.contains("removed base snapshot '\(leftover)' of '\(v)'"), "\(unlock.stderr)") }
            try expectOnlyBase(recorded, "after vm unlock")
            try disks[0].write(pseudoRandom(4096, seed: 52), at: 60 * mib)
            let fourth = try rig.backup()
            #expect(fourth.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (rbd diff)"), "\(fourth.log)")
            #expect(fourth.log.contains("drive-scsi1: incremental: 1 of 16 chunks read (rbd diff)"), "\(fourth.log)")
            try restoresEqualImages()
            try expectOnlyBase(try newestBase(), "after the fourth backup")
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir", expectRunning: false)

            // `volume free` of one image: its mark and the group snapshot go with it (of both images: librbd removes
            // a group snapshot as a whole); the other image keeps its mark, still a correct base for it (older than
            // what was read). `vm destroy` removes the rest, and the group.
            let kept = try newestBase()
            try h.must(["volume", "free", volids[0]])
            #expect(try groupSnapshots().isEmpty && marks(images[1]) == [kept])
            #expect(try rig.bases() == [kept])
            #expect(!(try ceph.cli(["rbd", "ls", pool])).contains(images[0]))
            try h.must(["vm", "destroy", "\(vmid)"])
            #expect(try rig.bases().isEmpty)
            #expect(try ceph.cli(["rbd", "group", "ls", pool]).isEmpty && ceph.cli(["rbd", "ls", pool]).isEmpty, "rbd group or image left")
        }

        /// A running guest with two rbd images, snapshot mode: the marks are taken while QEMU holds the
        /// images' exclusive locks, the group snapshot needs no pause, the second backup is incremental on
        /// both disks, and each restore equals the group snapshot it was read from (not the mark taken
        /// before it), the guest's records on it consistent.
        @Test func runningGuestWithTwoRBDImages() async throws {
            try Integration.need(TestStorageKind.rbd.fixture)
            let vmid = 481
            let h = try GuestHarness(label: "inc-engine-rbd2run")
            defer { h.tearDown() }
            try h.addStorage("st", .rbd)
            let root = try h.addRepository("r1")
            try await h.startGuest(vmid, disk: "st:64M", more: ["st:16M"])
            let volids = [try h.volume(vmid), try h.volume(vmid, "scsi1")]
            let rig = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: volids[0], storage: "st")
            let disks = try volids.map { try PluginDisk(h, $0) }
            let names = ["drive-scsi0", "drive-scsi1"]

            /// Restores each disk of the newest backup, compares it with the group snapshot it was read from,
            /// and returns the record checker's report of the disk the guest writes to.
            func restoresEqualTheirBase() throws -> GuestHarness.RecordCheck? {
                let last = try #require(try rig.repo.snapshots().last)
                let base = BaseSnapshot.name(backupTime: last.time, repository: "r1")
                var written: GuestHarness.RecordCheck?
                for (d, name) in zip(disks, names) {
                    let path = try restoreDisk(rig.repo, last, to: h.configDir + "/restored-\(vmid).raw", file: name + ".img.fidx")
                    defer { try? FileSystem.remove(path) }
                    #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == (try d.bytes(snapshot: base)),
                            "restore of \(name) of \(last) differs from its base")
                    let check = try h.checkRecords(path, format: "raw", checker: h.checker)
                    // The guest's kernel names either disk sda: the records are on one of them.
                    if (Int(check.fields["max_seq"] ?? "") ?? 0) > 0 { written = check }
                }
                return written
            }

            let first = try rig.backup(mode: "snapshot")
            #expect(first.summary.mode == .snapshot && first.summary.downtimeKind == "none (atomic snapshot)", "\(first.log)")
            for n in names { #expect(first.log.contains("\(n): full read: no previous backup"), "\(first.log)") }
            let firstCheck = try #require(try restoresEqualTheirBase(), "no records on either restored disk")
            #expect(firstCheck.consistent, "restore of the first backup: \(firstCheck.output)")
            _ = try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid) + 20)

            let second = try rig.backup(mode: "snapshot")
            #expect(second.summary.downtimeKind == "none (atomic snapshot)", "\(second.log)")
            for n in names {
                let d = try #require(second.summary.disks?.first { $0.name == n })
                #expect(d.method == "rbd diff" && d.fullReason == nil && d.read + d.fromPrevious == d.chunks, "\(d) \(second.log)")
            }
            // The guest wrote into one of them: fewer chunks read than the two disks hold.
            let disks2 = second.summary.disks ?? []
            #expect(disks2.reduce(0) { $0 + $1.read } < disks2.reduce(0) { $0 + $1.chunks } && disks2.reduce(0) { $0 + $1.read } > 0, "\(disks2)")
            let check = try #require(try restoresEqualTheirBase(), "no records on either restored disk")
            #expect(check.consistent, "restore of the incremental backup of a running guest: \(check.output)")
            let base = BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1")
            #expect(try rig.bases() == [base, base])
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir")
        }

        /// A running guest writing records, snapshot mode: the second backup is incremental, its
        /// restore equals the base snapshot it read byte for byte and is record-consistent. The
        /// guest stopped and started between two backups: still incremental (the storage, not
        /// QEMU, knows what changed).
        @Test func runningGuestAndRestartOnBtrfs() async throws {
            let base = try Integration.need("SNAPDUMP_TEST_BTRFS")[0]
            let vmid = 477
            let h = try GuestHarness(label: "inc-engine-running")
            defer { h.tearDown() }
            try h.addStorage("btrfs", "bt", under: base)
            let root = try h.addRepository("r1")
            try await h.startGuest(vmid, disk: "bt:64M")
            let volid = try h.volume(vmid)
            let rig = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root), repoRoot: root, volid: volid, storage: "bt")
            let disk = try PluginDisk(h, volid)

            /// The restore of the newest backup equals the base snapshot it was read from.
            func restoreEqualsItsBase() throws -> String {
                let last = try #require(try rig.repo.snapshots().last)
                let path = try restoreDisk(rig.repo, last, to: h.configDir + "/restored-\(vmid).raw")
                let restored = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
                #expect(restored == (try disk.bytes(snapshot: BaseSnapshot.name(backupTime: last.time, repository: "r1"))), "restore of \(last) differs from its base")
                return path
            }

            let first = try rig.backup(mode: "snapshot")
            #expect(first.summary.mode == .snapshot && first.log.contains("drive-scsi0: full read: no previous backup"), "\(first.log)")
            _ = try restoreEqualsItsBase()
            _ = try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid) + 20)

            let second = try rig.backup(mode: "snapshot")
            let d2 = try #require(second.summary.disks?.first)
            #expect(d2.method == "btrfs send" && d2.fromPrevious > 0 && d2.read + d2.fromPrevious == d2.chunks && d2.read < d2.chunks,
                    "\(d2) \(second.log)")
            let path = try restoreEqualsItsBase()
            let check = try h.checkRecords(path, format: "raw", checker: h.checker)
            #expect(check.consistent, "restore of the incremental backup of a running guest: \(check.output)")
            try FileSystem.remove(path)
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir")

            // Stopped and started: QEMU's state is gone, the base on the storage is not.
            try h.must(["vm", "stop", "\(vmid)"])
            try h.must(["vm", "start", "\(vmid)"])
            _ = try await h.waitForHeartbeat(vmid, above: 0, timeout: .seconds(120))
            let third = try rig.backup(mode: "snapshot")
            let d3 = try #require(third.summary.disks?.first)
            #expect(d3.method == "btrfs send" && d3.fromPrevious > 0 && d3.read < d3.chunks, "\(d3) \(third.log)")
            try FileSystem.remove(try restoreEqualsItsBase())
            #expect(try rig.bases() == [BaseSnapshot.name(backupTime: try rig.repo.snapshots().last!.time, repository: "r1")])
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir")
        }

        /// Two repositories backing up one guest alternately: one base per disk and repository, so
        /// each backup reads only what changed since the previous one into the same repository.
        @Test func twoRepositoriesAlternatelyOnBtrfs() async throws {
            let base = try Integration.need("SNAPDUMP_TEST_BTRFS")[0]
            let vmid = 478
            let h = try GuestHarness(label: "inc-engine-two-repos")
            defer { h.tearDown() }
            try h.addStorage("btrfs", "bt", under: base)
            let root1 = try h.addRepository("r1"), root2 = try h.addRepository("r2")
            try h.createGuest(vmid, disk: "bt:64M")
            let volid = try h.volume(vmid)
            let r1 = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root1), repoRoot: root1, volid: volid, storage: "bt")
            let r2 = IncrementalRig(h: h, vmid: vmid, repo: try Repository(root: root2), repoRoot: root2, volid: volid, storage: "bt", repoID: "r2")
            let disk = try PluginDisk(h, volid)
            let mib = Self.mib
            try disk.write(pseudoRandom(40 * mib, seed: 4), at: 8 * mib)
            func baseNames() throws -> [String] {
                [BaseSnapshot.name(backupTime: try r1.repo.snapshots().last!.time, repository: "r1"),
                 BaseSnapshot.name(backupTime: try r2.repo.snapshots().last!.time, repository: "r2")].sorted()
            }

            #expect(try r1.backup().log.contains("drive-scsi0: full read: no previous backup"))
            #expect(try r2.backup().log.contains("drive-scsi0: full read: no previous backup"))
            #expect(try r1.bases() == baseNames(), "one base per repository")

            try disk.write(pseudoRandom(4096, seed: 5), at: 1 * mib)
            let a = try r1.backup()
            #expect(a.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send)"), "\(a.log)")
            #expect(try r1.restoredNewest() == disk.bytes())
            try disk.write(pseudoRandom(4096, seed: 6), at: 41 * mib)
            // Since r2's base: both writes.
            let b = try r2.backup()
            #expect(b.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (btrfs send)"), "\(b.log)")
            #expect(try r2.restoredNewest() == disk.bytes())
            try disk.write(pseudoRandom(4096, seed: 7), at: 50 * mib)
            // Since r1's base: the last two.
            let c = try r1.backup()
            #expect(c.log.contains("drive-scsi0: incremental: 2 of 16 chunks read (btrfs send)"), "\(c.log)")
            #expect(try r1.restoredNewest() == disk.bytes())
            #expect(try r1.bases() == baseNames(), "each repository's old base dropped, the other's kept")
            try await expectInvariants(h, vmid, dumpdir: h.configDir + "/no-dumpdir", expectRunning: false)

            // `backup remove` of r2's newest: only r2's base goes; r1 stays incremental.
            let newest = try #require(try r2.repo.snapshots().last)
            try h.must(["backup", "remove", RepositoryStore(storage: "r2", repository: r2.repo).volume(newest).description])
            #expect(try r1.bases() == [BaseSnapshot.name(backupTime: try r1.repo.snapshots().last!.time, repository: "r1")])
            try disk.write(pseudoRandom(4096, seed: 8), at: 2 * mib)
            #expect(try r1.backup().log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send)"))

            // r2 backs up again, then its storage is removed from storage.cfg: the next backup into r1 drops r2's base.
            #expect(try r2.backup().log.contains("drive-scsi0: full read: "))
            #expect(try r1.bases().count == 2)
            try h.must(["storage", "remove", "r2"])
            try disk.write(pseudoRandom(4096, seed: 9), at: 3 * mib)
            let d = try r1.backup()
            #expect(d.log.contains("drive-scsi0: incremental: 1 of 16 chunks read (btrfs send)"), "\(d.log)")
            #expect(d.log.contains("of a repository storage no longer configured"), "\(d.log)")
            #expect(try r1.bases() == [BaseSnapshot.name(backupTime: try r1.repo.snapshots().last!.time, repository: "r1")])
            try h.must(["vm", "destroy", "\(vmid)"])
            #expect(try r1.bases().isEmpty)
        }
    }
}

/// `full` and `full-every`: one parser for the command line, jobs and vzdump.conf, in the job's command line.
@Suite("full and full-every options")
struct FullReadOptionTests {
    @Test func sameEverywhere() throws {
        let e = try BackupParameters([("vmid", "100"), ("full", "1"), ("full-every", "7")]).effective(vzdumpConf: VzdumpValues())
        #expect(e.options.full && e.options.fullEvery == 7)
        let conf = try VzdumpValues.parse("full-every: 3\n", file: "vzdump.conf")
        let c = try BackupParameters([("vmid", "100")]).effective(vzdumpConf: conf)
        #expect(!c.options.full && c.options.fullEvery == 3)
        // The command line wins over vzdump.conf.
        #expect(try BackupParameters([("vmid", "100"), ("full-every", "0")]).effective(vzdumpConf: conf).options.fullEvery == 0)
        let d = try BackupParameters([("vmid", "100")]).effective(vzdumpConf: VzdumpValues())
        #expect(!d.options.full && d.options.fullEvery == 0)
        #expect(throws: ConfigError.self) { try VzdumpValues.parse("full-every: -1\n", file: "vzdump.conf") }
        #expect(throws: BackupError.self) { try BackupParameters([("vmid", "100"), ("full", "maybe")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("vmid", "100"), ("full-every", "1e3")]) }

        let job = BackupJob(options: e.options, paths: SnapdumpPaths(configDir: "/nonexistent", runDir: "/nonexistent/run"), log: TaskLog(echo: false))
        job.settings = e.settings
        #expect(job.commandLine(vmids: [100]).contains(" --full 1 --full-every 7"), "\(job.commandLine(vmids: [100]))")
        let plain = BackupJob(options: d.options, paths: SnapdumpPaths(configDir: "/nonexistent", runDir: "/nonexistent/run"), log: TaskLog(echo: false))
        #expect(!plain.commandLine(vmids: [100]).contains("full"))
    }
}
