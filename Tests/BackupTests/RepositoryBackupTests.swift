import Archive
import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// Helpers for backups into a repository storage through the real binary.
extension GuestHarness {
    /// Adds repository storage `id` in a fresh directory below the harness and initialises it; returns its root.
    func addRepository(_ id: String, under base: String? = nil, extra: [String] = []) throws -> String {
        let root = (base ?? configDir) + "/repo-\(id)-\(tag)"
        try must(["storage", "add", "repo", id, "--path", root] + extra)
        try must(["repo", "init", id])
        return root
    }
}

/// Chunk files in a repository (`.chunks/xxxx/<64 hex>`), `.bad` ones not counted.
func chunkFiles(_ root: String) -> [String] {
    var out: [String] = []
    for prefix in (try? FileSystem.list(root + "/.chunks")) ?? [] {
        for name in (try? FileSystem.list(root + "/.chunks/" + prefix)) ?? [] where name.count == 64 {
            out.append(prefix + "/" + name)
        }
    }
    return out.sorted()
}

/// The summaries `snapdump backup --output-format json` prints.
func backupSummaries(_ stdout: String) throws -> [BackupSummary] {
    try JSONDecoder().decode([BackupSummary].self, from: Data(stdout.utf8))
}

/// Reads snapshot `s`'s disk back into a file and returns its path.
func restoreDisk(_ repo: Repository, _ s: SnapshotName, to path: String, file: String = "drive-scsi0.img.fidx") throws -> String {
    let index = try repo.index(s, file: file)
    let out = try File.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
    try out.truncate(to: index.size)
    try ChunkReader(repository: repo, snapshot: s).restore(index, sparse: true) { offset, bytes in
        try out.write(bytes, at: offset)
    }
    try out.close()
    return path
}

extension NothingLostTests {
    /// `snapdump backup --storage <repo>`: the whole engine, a repository as target.
    @Suite("Backups into a repository", .serialized,
           .enabled(if: Integration.available("SNAPDUMP_TEST_DIR", "SNAPDUMP_TEST_BTRFS")))
    struct RepositoryBackupTests {
        /// Stop mode of a stopped guest: the snapshot holds the disk exactly (restored and compared), the
        /// config, snapdump.json and the task log; a second backup of the unchanged disk writes no chunk;
        /// notes-template, protected and prune-backups apply to repository snapshots.
        @Test func stopModeDedupNotesProtectedPrune() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 470
            let h = try GuestHarness(label: "repo-stop")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "d:64M")
            try h.prefill(vmid, mib: 12, atMiB: 20)
            let disk = try h.volumePath(try h.volume(vmid))

            let hook = try RecordingHook(h)
            try hook.reset()
            let r = try h.run(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1", "--output-format", "json",
                               "--notes-template", "{{guestname}} on {{node}}", "--script", hook.path])
            #expect(r.status == 0, "\(r)")
            #expect(hook.phases == ["job-init", "job-start", "backup-start", "backup-end", "log-end", "job-end"], "\(hook.phases)")
            let s1 = try #require(try backupSummaries(r.stdout).first)
            let chunks1 = try #require(s1.chunks, "no chunk statistics in \(r.stdout)")
            // 12 MiB of random data spans 3 or 4 chunks of 4 MiB, plus the zero chunk once.
            #expect(chunks1.new >= 3 && chunks1.new <= 5, "\(chunks1)")
            #expect(chunks1.new + chunks1.reused == 16, "64 MiB = 16 chunks: \(chunks1)")
            #expect(chunkFiles(root).count == chunks1.new)
            #expect(chunks1.storedBytes >= 12 << 20, "random data does not compress: \(chunks1)")
            #expect(s1.readBytes < 64 << 20, "holes are not read: \(s1.readBytes)")

            let repo = try Repository(root: root)
            let snaps = try repo.snapshots()
            try #require(snaps.count == 1, "\(snaps)")
            let snap = snaps[0]
            #expect(s1.archive == "r1:backup/\(snap)")
            let files = Set(try FileSystem.list(repo.directory(of: snap)))
            for f in ["drive-scsi0.img.fidx", "qemu-server.conf.blob", "snapdump.json.blob", "index.json.blob", "client.log.blob"] {
                #expect(files.contains(f), "\(f) missing in \(files)")
            }
            let restored = try restoreDisk(repo, snap, to: h.configDir + "/restored.raw")
            #expect(try Command.run(["cmp", disk, restored]).isEmpty, "restored disk differs")
            let conf = String(decoding: try repo.blob(snap, file: "qemu-server.conf.blob"), as: UTF8.self)
            #expect(conf.contains("name: guest\(vmid)"), "\(conf)")
            let meta = try SnapdumpMetadata.decode(try repo.blob(snap, file: "snapdump.json.blob"))
            #expect(meta.mode == "stop")
            #expect(meta.devices.first?.digest == (try repo.index(snap, file: "drive-scsi0.img.fidx")).indexChecksum)
            let start = try #require(hook.calls.first { $0.first == "backup-start" })
            #expect(hook.env(start, "TARGET") == "r1:backup/\(snap)")
            #expect(hook.env(start, "LOGFILE") == h.paths.taskLogDir + "/qemu-\(vmid).log")
            #expect(hook.env(start, "STOREID") == "r1" && hook.env(start, "DUMPDIR") == "")
            let logText = String(decoding: try #require(try repo.log(snap)), as: UTF8.self)
            #expect(logText.contains("INFO: creating repository backup 'r1:backup/\(snap)'"), "\(logText)")
            #expect(logText.contains("INFO: Finished Backup of VM \(vmid)"), "\(logText)")
            #expect(try repo.notes(snap) == "guest\(vmid) on \(NotesTemplate.nodeName())")

            // Unchanged disk: only index, blobs and manifest are written.
            nextSecond()
            let before = chunkFiles(root)
            let r2 = try h.run(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1", "--output-format", "json", "--protected", "1"])
            #expect(r2.status == 0, "\(r2)")
            let chunks2 = try #require(try backupSummaries(r2.stdout).first?.chunks)
            #expect(chunks2.new == 0 && chunks2.storedBytes == 0 && chunks2.reused == 16, "\(chunks2)")
            #expect(chunkFiles(root) == before, "a backup of an unchanged disk wrote chunks")
            let snaps2 = try repo.snapshots()
            try #require(snaps2.count == 2)
            #expect(repo.isProtected(snaps2[1]))

            // Retention on the repository: keep-last=1 keeps the newest and the protected one, removes the first.
            nextSecond()
            let r3 = try h.run(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1", "--prune-backups", "keep-last=1"])
            #expect(r3.status == 0, "\(r3)")
            #expect(r3.stderr.contains("INFO: removing backup 'r1:backup/\(snap)'"), "\(r3.stderr)")
            let snaps3 = try repo.snapshots()
            #expect(snaps3.count == 2 && !snaps3.contains(snap) && snaps3.contains(snaps2[1]), "\(snaps3)")
        }

        /// `restore repo1:backup/vm/<vmid>/<time> <new vmid>`: the disk comes back identical, on the storage
        /// asked for; a flipped byte in a chunk fails the restore with the chunk's digest and the snapshot named,
        /// and leaves no config and no volume behind.
        @Test func restoreFromRepositoryAndCorruptChunk() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 472
            let h = try GuestHarness(label: "repo-restore")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            try h.addStorage("dir", "d2", under: dirBase)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "d:48M")
            try h.prefill(vmid, mib: 10, atMiB: 8)
            try h.must(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1"])
            let repo = try Repository(root: root)
            let snap = try #require(try repo.snapshots().first)

            let r = try h.run(["restore", "r1:backup/\(snap)", "473", "--storage", "d2"])
            #expect(r.status == 0, "\(r)")
            #expect(r.stderr.contains("restore repository backup: r1:backup/\(snap)"), "\(r.stderr)")
            #expect(r.stderr.contains("progress 100%"), "\(r.stderr)")
            #expect(r.stderr.contains("verified SHA-256 of every chunk"), "\(r.stderr)")
            let newVolume = try h.volume(473)
            #expect(newVolume.hasPrefix("d2:"), "\(newVolume)")
            #expect(try Command.run(["cmp", try h.volumePath(try h.volume(vmid)), try h.volumePath(newVolume)]).isEmpty)
            #expect(try h.configText(473).contains("name: guest\(vmid)"))

            // A byte flipped inside a data chunk's blob.
            let index = try repo.index(snap, file: "drive-scsi0.img.fidx")
            let bad = try #require(index.digests.first { $0 != DeviceDigest.zeroChunkDigest })
            let path = "\(root)/.chunks/\(bad.hex.prefix(4))/\(bad.hex)"
            var blob = try FileSystem.readBytes(path)
            blob[blob.count - 100] ^= 0x40
            chmod(path, 0o600)
            try FileSystem.writeAtomically(path, bytes: blob, mode: 0o600)
            let volumesBefore = try h.must(["volume", "list", "d2"]).stdout
            let f = try h.run(["restore", "r1:backup/\(snap)", "474", "--storage", "d2"])
            #expect(f.status != 0, "\(f)")
            #expect(f.stderr.contains("chunk \(bad.hex) of snapshot \(snap)"), "the error names chunk and snapshot: \(f.stderr)")
            #expect(!VMConfig.exists(vmid: 474, paths: h.paths), "a config was written")
            #expect(try h.must(["volume", "list", "d2"]).stdout == volumesBefore, "a volume was left")
        }

        /// The backup commands and jobs name repository backups like archives: `backup list` (text and
        /// JSON), `backup notes|protect|unprotect|remove`, `prune` (--dry-run, keep-last, protected kept),
        /// and a jobs.cfg job with `storage <repo>` run by `job run`.
        @Test func commandsAndJobsOnRepositoryBackups() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 475
            let h = try GuestHarness(label: "repo-cmds")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            _ = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "d:16M")
            try h.prefill(vmid, mib: 2, atMiB: 4)
            try h.must(["job", "add", "--id", "j1", "--schedule", "sat 02:00", "--vmid", "\(vmid)", "--mode", "stop", "--storage", "r1"])
            var volids: [String] = []
            for _ in 0..<3 {
                nextSecond()
                let r = try h.run(["job", "run", "j1"])
                #expect(r.status == 0, "\(r)")
            }
            let list = try h.must(["backup", "list", "r1", "--output-format", "json"]).stdout
            let entries = try #require(try JSONSerialization.jsonObject(with: Data(list.utf8)) as? [[String: Any]])
            volids = entries.compactMap { $0["volid"] as? String }.sorted()
            try #require(volids.count == 3, "\(list)")
            #expect(volids.allSatisfy { $0.hasPrefix("r1:backup/vm/\(vmid)/") }, "\(volids)")
            #expect(entries.allSatisfy { ($0["size"] as? Int) == 16 << 20 }, "\(list)")

            try h.must(["backup", "notes", volids[0], "--set", "first one"])
            #expect(try h.must(["backup", "notes", volids[0]]).stdout == "first one\n")
            #expect(try h.must(["backup", "list", "r1"]).stdout.contains("first one"))
            try h.must(["backup", "protect", volids[0]])

            // keep-last=1: the newest kept, the oldest protected, the middle one removed — not with --dry-run.
            let dry = try h.must(["prune", "r1", "--keep-last", "1", "--dry-run", "--output-format", "json"]).stdout
            #expect(dry.contains("\"mark\":\"protected\"") && dry.contains("\"mark\":\"remove\"") && dry.contains("\"mark\":\"keep\""), "\(dry)")
            #expect(try h.must(["backup", "list", "r1"]).stdout.contains(volids[1]), "dry run removed a backup")
            try h.must(["prune", "r1", "--keep-last", "1"])
            let after = try h.must(["backup", "list", "r1"]).stdout
            #expect(after.contains(volids[0]) && !after.contains(volids[1]) && after.contains(volids[2]), "\(after)")

            let refused = try h.run(["backup", "remove", volids[0]])
            #expect(refused.status != 0 && refused.stderr.contains("protected"), "\(refused)")
            try h.must(["backup", "unprotect", volids[0]])
            try h.must(["backup", "remove", volids[0]])
            #expect(!(try h.must(["backup", "list", "r1"]).stdout.contains(volids[0])))
            let missing = try h.run(["backup", "notes", volids[0]])
            #expect(missing.status != 0 && missing.stderr.contains("does not exist"), "\(missing)")
        }

        /// SIGKILL while chunks are uploaded: no snapshot appears, verify is clean, and gc (cutoff 0) removes
        /// the killed run's chunks. gc started during a running backup (that started before it and ends after
        /// it) removes none of its chunks: the backup restores bit for bit and verify is clean.
        @Test func sigkillThenGCAndGCDuringABackup() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 476
            let h = try GuestHarness(label: "repo-gc")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "d:64M")
            try h.prefill(vmid, mib: 40, atMiB: 8)
            let repo = try Repository(root: root)

            let killed = try BackgroundBackup(h, ["\(vmid)", "--mode", "stop", "--storage", "r1", "--bwlimit", "4096"])
            try #require(killed.wait(until: { chunkFiles(root).count >= 3 }), "no chunks written: \(killed.stderr)")
            killed.signal(SIGKILL)
            #expect(killed.finish(timeout: 30).signaled)
            #expect(try repo.snapshots().isEmpty, "a killed backup became visible")
            #expect(repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").count == 1)
            let orphans = chunkFiles(root)
            #expect(orphans.count >= 3)
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")
            nextSecond()
            let gc = try h.run(["repo", "gc", "r1", "--atime-cutoff", "0"])
            #expect(gc.status == 0, "\(gc)")
            #expect(gc.stdout.contains("removed stale writer registration"), "\(gc.stdout)")
            #expect(chunkFiles(root).isEmpty, "orphans left after gc: \(chunkFiles(root))")

            // A backup that starts before gc and ends after it.
            nextSecond()
            let running = try BackgroundBackup(h, ["\(vmid)", "--mode", "stop", "--storage", "r1", "--bwlimit", "4096"])
            try #require(running.wait(until: { chunkFiles(root).count >= 3 }), "no chunks written: \(running.stderr)")
            let gc2 = try h.run(["repo", "gc", "r1", "--atime-cutoff", "0"])
            #expect(gc2.status == 0, "\(gc2)")
            #expect(gc2.stdout.contains("cutoff moved before it"), "\(gc2.stdout)")
            #expect(gc2.stdout.contains("removed: 0 chunks"), "\(gc2.stdout)")
            let end = running.finish(timeout: 120)
            #expect(end.status == 0 && !end.signaled, "\(running.stderr)")
            #expect(running.stderr.contains("WARN: removed unfinished backup 'r1:backup/vm/\(vmid)/"), "\(running.stderr)")
            let snap = try #require(try repo.snapshots().first)
            let restored = try restoreDisk(repo, snap, to: h.configDir + "/restored.raw")
            #expect(try Command.run(["cmp", try h.volumePath(try h.volume(vmid)), restored]).isEmpty)
            let v2 = try h.run(["repo", "verify", "r1"])
            #expect(v2.status == 0, "\(v2)")
        }

        /// The repository's filesystem fills up mid-backup: the backup fails naming the cause, no snapshot
        /// and no snapshot directory is left, the guest is not locked.
        @Test func repositoryFilesystemFull() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let small = try Integration.require("SNAPDUMP_TEST_SMALLFS")
            let vmid = 477
            let h = try GuestHarness(label: "repo-full")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            let root = try h.addRepository("r1", under: small)
            defer { try? FileManager.default.removeItem(atPath: root) }
            try h.createGuest(vmid, disk: "d:128M")
            // 100 MiB of random data: more than the 64 MiB filesystem holds.
            try h.prefill(vmid, mib: 100, atMiB: 16)
            let r = try h.run(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1"])
            #expect(r.status != 0, "\(r)")
            let error = try #require(r.stderr.split(separator: "\n").first { $0.hasPrefix("ERROR: Backup of VM \(vmid) failed") }, "\(r.stderr)")
            #expect(error.localizedCaseInsensitiveContains("no space left on device"), "\(error)")
            let repo = try Repository(root: root)
            #expect(try repo.snapshots().isEmpty)
            #expect(repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty, "the failed run's directory is left")
            #expect(!(try h.configText(vmid)).contains("lock:"))
        }

        /// An encrypted repository (key without passphrase): every chunk written by a backup is an
        /// encrypted blob, the manifest is signed, and the restore with the key gives the disk back.
        @Test func encryptedRepositoryBackupAndRestore() async throws {
            let dirBase = try Integration.require("SNAPDUMP_TEST_DIR")
            let vmid = 478
            let h = try GuestHarness(label: "repo-enc")
            defer { h.tearDown() }
            try h.addStorage("dir", "d", under: dirBase)
            let key = h.configDir + "/enc.key"
            _ = try Command.run([SnapdumpBinary.binary, "repo", "key", "create", key])
            let root = try h.addRepository("enc", extra: ["--encryption-key", key])
            try h.createGuest(vmid, disk: "d:24M")
            try h.prefill(vmid, mib: 6, atMiB: 2)
            try h.must(["backup", "\(vmid)", "--mode", "stop", "--storage", "enc"])
            let plain = try Repository(root: root)
            for (d, _) in try plain.chunks.allChunks() {
                #expect(DataBlob.Kind(magic: try plain.chunks.read(d))!.isEncrypted, "chunk \(d.hex) is not encrypted")
            }
            let snap = try #require(try plain.snapshots().first)
            let m = try Repository(root: root, crypt: try KeyFile.crypt(from: key)).manifest(snap)
            #expect(m.signature != nil && m.files.allSatisfy { $0.cryptMode == .encrypt }, "\(m.files)")
            let r = try h.run(["restore", "enc:backup/\(snap)", "479", "--storage", "d"])
            #expect(r.status == 0, "\(r)")
            #expect(try Command.run(["cmp", try h.volumePath(try h.volume(vmid)), try h.volumePath(try h.volume(479))]).isEmpty)
        }

        /// Snapshot mode of a running guest on btrfs: the storage snapshot is read while the guest
        /// runs, removed after; the backup is a consistent image of the disk. SIGTERM during the upload:
        /// no snapshot appears, nothing is left, the guest runs. SIGKILL during the upload: no snapshot
        /// appears; the next backup removes the unfinished directory, verify is clean.
        @Test func snapshotModeSignalsAndKill() async throws {
            let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
            let vmid = 471
            let h = try GuestHarness(label: "repo-snap")
            defer { h.tearDown() }
            try h.addStorage("btrfs", "bt", under: btrfs)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "bt:128M")
            try h.prefill(vmid, mib: 24, atMiB: 64)
            try await h.bootGuest(vmid)
            let repo = try Repository(root: root)
            let noDumpdir = h.configDir + "/no-dumpdir"

            let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "r1"])
            #expect(r.status == 0, "\(r)")
            #expect(r.stderr.contains("INFO: guest downtime:"), "\(r.stderr)")
            // btrfs tracks changes: the snapshot read is kept as the next backup's base.
            #expect(r.stderr.contains("INFO: drive-scsi0: full read: no previous backup"), "\(r.stderr)")
            #expect(!r.stderr.contains("removed storage snapshot"), "\(r.stderr)")
            try #require(try repo.snapshots().count == 1)
            try await expectInvariants(h, vmid, dumpdir: noDumpdir)

            // Suspend mode: the guest is paused while its disk is read, running again after.
            nextSecond()
            let sus = try h.run(["backup", "\(vmid)", "--mode", "suspend", "--storage", "r1"])
            #expect(sus.status == 0, "\(sus)")
            #expect(sus.stderr.contains("INFO: backup mode: suspend"), "\(sus.stderr)")
            try #require(try repo.snapshots().count == 2)
            let meta = try SnapdumpMetadata.decode(try repo.blob(try repo.snapshots()[1], file: "snapdump.json.blob"))
            #expect(meta.mode == "suspend" && (meta.downtimeMs ?? 0) > 0, "\(meta)")
            try await expectInvariants(h, vmid, dumpdir: noDumpdir)

            // SIGTERM while the chunks are uploaded (slowed by --bwlimit).
            for (sig, name) in [(SIGTERM, "SIGTERM"), (SIGKILL, "SIGKILL")] {
                nextSecond()
                let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "snapshot", "--storage", "r1", "--bwlimit", "2048"])
                let reached = bg.wait(until: {
                    bg.stderr.contains("INFO: guest downtime:") && !repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty
                        && bg.stderr.contains("% (")
                })
                try #require(reached, "never reached the upload: \(bg.stderr)")
                bg.signal(sig)
                let end = bg.finish(timeout: 60)
                #expect(try repo.snapshots().count == 2, "\(name): a snapshot appeared")
                if sig == SIGTERM {
                    #expect(!end.signaled && end.status != 0, "\(end) \(bg.stderr)")
                    #expect(bg.stderr.contains("interrupted by signal SIGTERM"), "\(bg.stderr)")
                    #expect(repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty, "SIGTERM left a snapshot directory")
                    try await expectInvariants(h, vmid, dumpdir: noDumpdir)
                } else {
                    #expect(end.signaled, "\(end)")
                    #expect(repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").count == 1, "the killed run's directory")
                }
            }
            // The run after the kill: removes the leftovers (lock, storage snapshot, unfinished directory).
            nextSecond()
            let r2 = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "r1"])
            #expect(r2.status == 0, "\(r2)")
            #expect(r2.stderr.contains("WARN: removed unfinished backup 'r1:backup/vm/\(vmid)/"), "\(r2.stderr)")
            #expect(repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty)
            #expect(try repo.snapshots().count == 3)
            try await expectInvariants(h, vmid, dumpdir: noDumpdir)
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")
        }

        /// Incremental forever on btrfs (issue 11), stop mode of a stopped guest (read from a storage snapshot all the same): the second backup
        /// reads exactly the chunks written between the two; each restore equals the disk byte for byte;
        /// one base snapshot is left. A base deleted by hand: the next backup reads everything and says
        /// why. A run killed after its new snapshot: the next one (or `vm unlock`) removes that snapshot, stays
        /// incremental from the base the last finished backup recorded.
        @Test func incrementalForeverOnBtrfs() async throws {
            try await checkIncrementalForever(vmid: 472, type: "btrfs", fixture: "SNAPDUMP_TEST_BTRFS", method: "btrfs send")
        }

        /// The same on a `reflink 1` directory on XFS: the block maps of the two clones compared.
        @Test func incrementalForeverOnReflinkXFS() async throws {
            try await checkIncrementalForever(vmid: 473, type: "dir", fixture: "SNAPDUMP_TEST_XFS", method: "FIEMAP",
                                              extra: ["--content", "images,backup", "--reflink", "1"])
        }

        private func checkIncrementalForever(vmid: Int, type: String, fixture: String, method: String, extra: [String] = []) async throws {
            let base = try Integration.require(fixture)
            let h = try GuestHarness(label: "repo-incr-\(type)")
            defer { h.tearDown() }
            try h.addStorage(type, "bt", under: base, extra: extra)
            let root = try h.addRepository("r1")
            try h.createGuest(vmid, disk: "bt:64M")
            try h.prefill(vmid, mib: 40, atMiB: 8)
            let repo = try Repository(root: root)
            let volid = try h.volume(vmid)
            let disk = try h.volumePath(volid)
            let noDumpdir = h.configDir + "/no-dumpdir"
            /// 4 KiB of random data at `offset` of the disk: one chunk changed.
            func write(at offset: Int) throws {
                try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=4096", "seek=\(offset / 4096)", "count=1",
                                 "conv=notrunc,fsync", "status=none"])
            }
            func bases() throws -> [String] {
                try h.must(["snapshot", "list", "bt"]).stdout.split(separator: "\n")
                    .filter { $0.contains(BaseSnapshot.prefix) }
                    .compactMap { $0.split(separator: " ").first { $0.hasPrefix(BaseSnapshot.prefix) }.map(String.init) }
            }
            func backup() throws -> (stderr: String, summary: BackupSummary) {
                nextSecond()
                // JSON: the summary on stdout, the log as JSON lines on stderr.
                let r = try h.run(["backup", "\(vmid)", "--mode", "stop", "--storage", "r1", "--output-format", "json"])
                try #require(r.status == 0, "\(r)")
                return (r.stderr, try #require(try backupSummaries(r.stdout).first))
            }
            func restoredEqualsDisk() throws {
                let last = try #require(try repo.snapshots().last)
                let restored = try restoreDisk(repo, last, to: h.configDir + "/restored.raw")
                #expect(try Command.run(["cmp", disk, restored]).isEmpty, "restore of \(last) differs from the disk")
            }
            let mib = 1 << 20

            let first = try backup()
            #expect(first.stderr.contains("drive-scsi0: full read: no previous backup of vm/\(vmid)"), "\(first.stderr)")
            try restoredEqualsDisk()
            #expect(try bases() == [BaseSnapshot.name(backupTime: try repo.snapshots()[0].time, repository: "r1")])

            // Three chunks changed: two holes written (chunks 0 and 15), one data chunk overwritten (5).
            for offset in [1 * mib, 21 * mib, 62 * mib] { try write(at: offset) }
            let second = try backup()
            #expect(second.stderr.contains("drive-scsi0: incremental: 3 of 16 chunks read (\(method))"), "\(second.stderr)")
            #expect(second.summary.chunks?.read == 3 && second.summary.chunks?.fromPrevious == 13, "\(String(describing: second.summary.chunks))")
            try restoredEqualsDisk()
            #expect(try bases() == [BaseSnapshot.name(backupTime: try repo.snapshots()[1].time, repository: "r1")], "old base not dropped")
            try await expectInvariants(h, vmid, dumpdir: noDumpdir, expectRunning: false)

            // The base deleted by hand: a full read, with the reason.
            let gone = try bases()[0]
            try h.must(["snapshot", "delete", volid, "--name", gone])
            try write(at: 30 * mib)
            let third = try backup()
            #expect(third.stderr.contains("drive-scsi0: full read: base snapshot '\(gone)' of \(volid) no longer exists"), "\(third.stderr)")
            #expect(third.summary.chunks?.fromPrevious == 0)
            try restoredEqualsDisk()
            #expect(try bases().count == 1)

            // Killed after its new snapshot (stalled in the upload by --bwlimit): the old base stays.
            let kept = try bases()[0]
            try write(at: 45 * mib)
            nextSecond()
            let bg = try BackgroundBackup(h, ["\(vmid)", "--mode", "stop", "--storage", "r1", "--bwlimit", "1"])
            try #require(bg.wait(until: { ((try? bases()) ?? []).count == 2 && !repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty }),
                         "never took its snapshot: \(bg.stderr)")
            bg.signal(SIGKILL)
            #expect(bg.finish(timeout: 30).signaled)
            let leftover = try #require(try bases().first { $0 != kept })
            try write(at: 50 * mib)
            let fifth = try backup()
            #expect(fifth.stderr.contains("removed base snapshot '\(leftover)'"), "\(fifth.stderr)")
            #expect(fifth.stderr.contains("drive-scsi0: incremental: 2 of 16 chunks read (\(method))"), "\(fifth.stderr)")
            try restoredEqualsDisk()
            #expect(try bases() == [BaseSnapshot.name(backupTime: try repo.snapshots().last!.time, repository: "r1")])
            try await expectInvariants(h, vmid, dumpdir: noDumpdir, expectRunning: false)

            // Killed again: `vm unlock` removes the killed run's snapshot and keeps the recorded base.
            let recorded = try bases()[0]
            try write(at: 55 * mib)
            nextSecond()
            let bg2 = try BackgroundBackup(h, ["\(vmid)", "--mode", "stop", "--storage", "r1", "--bwlimit", "1"])
            try #require(bg2.wait(until: { ((try? bases()) ?? []).count == 2 && !repo.unfinishedSnapshots(type: "vm", id: "\(vmid)").isEmpty }),
                         "never took its snapshot: \(bg2.stderr)")
            bg2.signal(SIGKILL)
            #expect(bg2.finish(timeout: 30).signaled)
            let leftover2 = try #require(try bases().first { $0 != recorded })
            let unlock = try h.must(["vm", "unlock", "\(vmid)"])
            #expect(unlock.stderr.contains("removed base snapshot '\(leftover2)'"), "\(unlock.stderr)")
            #expect(try bases() == [recorded])
            try write(at: 3 * mib)
            let sixth = try backup()
            #expect(sixth.stderr.contains("drive-scsi0: incremental: 2 of 16 chunks read (\(method))"), "\(sixth.stderr)")
            try restoredEqualsDisk()
            try await expectInvariants(h, vmid, dumpdir: noDumpdir, expectRunning: false)
            let v = try h.run(["repo", "verify", "r1"])
            #expect(v.status == 0, "\(v)")
            // The base goes with the disk.
            try h.must(["vm", "destroy", "\(vmid)"])
            #expect(try bases().isEmpty)
        }
    }
}
