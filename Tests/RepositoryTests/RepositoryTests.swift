import Foundation
import Testing
import SnapdumpSystem
@testable import Repository
import Archive

/// The repository on a real directory: dedup, restore, verify, gc, locks.
@Suite(.serialized) struct RepositoryTests {
    let mib = 1 << 20

    /// 3 chunks of data, 2 zero chunks, a short tail.
    func disk(seed: UInt64) -> [UInt8] {
        var d = pseudoRandom(3 * 4 * mib, seed: seed)
        d += [UInt8](repeating: 0, count: 8 * mib)
        d += pseudoRandom(12345, seed: seed + 1)
        return d
    }

    func backup(_ repo: Repository, vmid: String = "100", time: Int64, disk: [UInt8], notes: String? = nil) throws -> (SnapshotName, Manifest, Manifest.ChunkUploadStats) {
        let s = SnapshotName(id: vmid, time: time)
        let w = try BackupWriter(repository: repo, snapshot: s)
        _ = try addDisk(w, name: "drive-scsi0.img", disk)
        try w.addBlob(name: "qemu-server.conf.blob", data: Array("memory: 512\n".utf8))
        let stats = w.stats
        return (s, try w.finish(notes: notes), stats)
    }

    /// A backup thread's blob encoder writes a zstd blob of 1 MiB frames that
    /// `DataBlob.decode` reads back, and a new chunk's whole pages go past the page cache (O_DIRECT on the
    /// test directory's ext4): mincore finds none of them cached.
    @Test func newChunksAreEncodedAsBlobsAndBypassThePageCache() throws {
        let scratch = try Scratch("direct")
        let repo = try Repository.create(root: scratch.path("store"))
        let d = disk(seed: 21)
        let (s, _, _) = try backup(repo, time: 1_796_004_000, disk: d)
        let index = try repo.index(s, file: "drive-scsi0.img.fidx")
        for i in 0..<3 {
            let chunk = Array(d[i * 4 * mib..<(i + 1) * 4 * mib])
            let path = repo.chunks.path(of: index.digests[i])
            let stored = try FileSystem.readBytes(path)
            #expect(try DataBlob.decode(stored, crypt: nil, object: "chunk") == chunk, "chunk \(i)")
            #expect(Array(stored.prefix(8)) == DataBlob.Kind.zstd.magic)
            let frames = stored.withUnsafeBytes { DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: $0[12...]), length: chunk.count) }
            #expect(frames?.ends.count == 4, "chunk \(i)")
        }
        // Read above went through the page cache: a fresh backup into a second repository.
        let repo2 = try Repository.create(root: scratch.path("store2"))
        let (s2, _, _) = try backup(repo2, time: 1_796_004_000, disk: d)
        let index2 = try repo2.index(s2, file: "drive-scsi0.img.fidx")
        for i in 0..<3 {
            let path = repo2.chunks.path(of: index2.digests[i])
            let f = try File.openForReading(path)
            let size = Int(try f.size())
            #expect(size > 4096)
            guard let map = mmap(nil, size, PROT_READ, MAP_SHARED, f.fd, 0), map != MAP_FAILED else { throw SystemError("mmap", path) }
            defer { munmap(map, size) }
            var pages = [UInt8](repeating: 0, count: (size + 4095) / 4096)
            #expect(mincore(map, size, &pages) == 0)
            #expect(pages.dropLast(size % 4096 == 0 ? 0 : 1).allSatisfy { $0 & 1 == 0 }, "chunk \(i): whole pages not cached")
        }
        #expect(try restoreToMemory(repo2, s2, file: "drive-scsi0.img.fidx") == d)
    }

    @Test func layoutDedupAndRestore() throws {
        let scratch = try Scratch("dedup")
        let repo = try Repository.create(root: scratch.path("store"))
        var st = stat()
        stat(repo.root, &st)
        #expect(st.st_mode & 0o777 == 0o700)
        #expect(FileSystem.isDirectory(repo.root + "/.chunks"))
        let d = disk(seed: 10)
        let (s1, m1, stats1) = try backup(repo, time: 1_796_004_000, disk: d, notes: "first")
        // 3 data chunks + the zero chunk once + the tail.
        #expect(stats1.count == 5)
        #expect(FileSystem.exists(repo.root + "/vm/100/2026-11-30T02:00:00Z/index.json.blob"))
        #expect(FileSystem.exists(repo.root + "/vm/100/2026-11-30T02:00:00Z/drive-scsi0.img.fidx"))
        #expect(m1.files.map(\.filename) == ["drive-scsi0.img.fidx", "qemu-server.conf.blob"])
        #expect(try repo.notes(s1) == "first")
        let zeroPath = repo.chunks.path(of: DeviceDigest.zeroChunkDigest)
        #expect(FileSystem.exists(zeroPath))

        // Nothing changed: nothing stored but the index.
        let (s2, _, stats2) = try backup(repo, time: 1_796_004_000 + 86400, disk: d)
        #expect(stats2.count == 0)
        // One chunk changed: one chunk stored.
        var d3 = d
        d3[5 * mib] ^= 0xFF
        let (s3, _, stats3) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d3)
        #expect(stats3.count == 1)
        #expect(try repo.snapshots() == [s1, s2, s3])
        #expect(try restoreToMemory(repo, s1, file: "drive-scsi0.img.fidx") == d)
        #expect(try restoreToMemory(repo, s3, file: "drive-scsi0.img.fidx") == d3)
        #expect(try repo.blob(s1, file: "qemu-server.conf.blob") == Array("memory: 512\n".utf8))
        let status = try RepositoryStatus(repository: repo)
        #expect(status.snapshots == 3 && status.chunks == 6)
        #expect(status.logicalBytes == 3 * UInt64(d.count) && status.dedupFactor > 2)
    }

    @Test func abortedBackupLeavesNoSnapshotAndGcRemovesOrphans() throws {
        let scratch = try Scratch("abort")
        let repo = try Repository.create(root: scratch.path("store"))
        let (s1, _, _) = try backup(repo, time: 1_000_000, disk: disk(seed: 1))
        let s2 = SnapshotName(id: "100", time: 2_000_000)
        do {
            let w = try BackupWriter(repository: repo, snapshot: s2)
            _ = try addDisk(w, name: "drive-scsi0.img", disk(seed: 2))
            w.abort()
        }
        #expect(try repo.snapshots() == [s1])
        #expect(!FileSystem.exists(repo.directory(of: s2)))
        // gc now: the orphans are newer than the cutoff, so pending.
        var r = try GarbageCollector(repository: repo).run()
        #expect(r.removedChunks == 0 && r.pendingChunks == 4 && r.keptChunks == 5)
        // After the cutoff (atimes a day and more back): removed; the referenced ones stay.
        for (d, _) in try repo.chunks.allChunks() { age(repo.chunks.path(of: d), seconds: 90_000) }
        r = try GarbageCollector(repository: repo).run()
        #expect(r.removedChunks == 4 && r.keptChunks == 5 && r.pendingChunks == 0)
        #expect(try restoreToMemory(repo, s1, file: "drive-scsi0.img.fidx") == disk(seed: 1))
        #expect(try Verifier(repository: repo).verify(try repo.snapshots()).ok)
    }

    @Test func gcDuringARunningBackupKeepsItsChunks() throws {
        let scratch = try Scratch("gcrun")
        let repo = try Repository.create(root: scratch.path("store"))
        // Orphans of two killed backups, a day and more old.
        for seed: UInt64 in [5, 7] {
            let w = try BackupWriter(repository: repo, snapshot: SnapshotName(id: "100", time: Int64(seed)))
            _ = try addDisk(w, name: "drive-scsi0.img", disk(seed: seed))
            w.abort()
        }
        for (d, _) in try repo.chunks.allChunks() { age(repo.chunks.path(of: d), seconds: 200_000) }
        // A backup starts before gc, finds the seed-5 chunks (touching them) and adds new ones...
        let s = SnapshotName(id: "101", time: 3_000_000)
        let w = try BackupWriter(repository: repo, snapshot: s)
        var data = disk(seed: 5)
        data.replaceSubrange(0..<4096, with: [UInt8](repeating: 0xEE, count: 4096))
        _ = try addDisk(w, name: "drive-scsi0.img", data)
        // ...gc with no grace at all runs meanwhile...
        let r = try GarbageCollector(repository: repo, atimeCutoff: 0).run()
        // ...and removes only what nobody uses (the old chunks the new backup did not find), nothing of the running backup.
        let garbage = Set(try FixedIndexDigests.of(disk(seed: 7)) + FixedIndexDigests.of(disk(seed: 5)))
            .subtracting(try FixedIndexDigests.of(data))
        #expect(garbage.count == 5)
        #expect(r.removedChunks == garbage.count)
        #expect(garbage.allSatisfy { repo.chunks.storedSize($0) == nil })
        _ = try w.finish()
        #expect(try restoreToMemory(repo, s, file: "drive-scsi0.img.fidx") == data)
        #expect(try Verifier(repository: repo).verify([s]).ok)
    }

    @Test func staleWriterFromAKilledProcessIsDetected() throws {
        let scratch = try Scratch("stale")
        let repo = try Repository.create(root: scratch.path("store"))
        try FileSystem.createDirectory(repo.root + "/.writers")
        // A registration nobody holds, from a pid that does not exist.
        try FileSystem.writeAtomically(repo.root + "/.writers/999999-1", "999999 1000\n")
        let w = RepositoryLocks.runningWriters(root: repo.root)
        #expect(w.running.isEmpty && w.staleRemoved.map(\.pid) == [999999])
        #expect(!FileSystem.exists(repo.root + "/.writers/999999-1"))
        let live = try RepositoryLocks.writer(root: repo.root)
        #expect(RepositoryLocks.runningWriters(root: repo.root).running.count == 1)
        live.release()
        #expect(RepositoryLocks.runningWriters(root: repo.root).running.isEmpty)
    }

    @Test func oneBackupPerGuest() throws {
        let scratch = try Scratch("group")
        let repo = try Repository.create(root: scratch.path("store"))
        let w = try BackupWriter(repository: repo, snapshot: SnapshotName(id: "100", time: 1))
        #expect { try BackupWriter(repository: repo, snapshot: SnapshotName(id: "100", time: 2)) } throws: {
            ($0 as! RepositoryError).code == .locked
        }
        _ = try BackupWriter(repository: repo, snapshot: SnapshotName(id: "200", time: 2))
        w.abort()
    }

    @Test func verifyFindsFlippedChunkAndIndexByte() throws {
        let scratch = try Scratch("verify")
        let repo = try Repository.create(root: scratch.path("store"))
        let (s1, _, _) = try backup(repo, time: 1_000_000, disk: disk(seed: 7))
        let (s2, _, _) = try backup(repo, vmid: "200", time: 1_000_000, disk: disk(seed: 8))
        let idx = try repo.index(s1, file: "drive-scsi0.img.fidx")
        let victim = idx.digests[1]
        let path = repo.chunks.path(of: victim)
        var bytes = try FileSystem.readBytes(path)
        bytes[bytes.count / 2] ^= 0x40
        try FileSystem.writeAtomically(path, bytes: bytes)
        // restore names the chunk and the snapshot.
        #expect { try restoreToMemory(repo, s1, file: "drive-scsi0.img.fidx") } throws: { e in
            "\(e)".contains(victim.hex) && "\(e)".contains("vm/100/")
        }
        let r = try Verifier(repository: repo).verify(try repo.snapshots())
        #expect(r.snapshots[s1] == .failed && r.snapshots[s2] == .ok)
        #expect(r.badChunks == [victim])
        #expect(FileSystem.exists(path + ".0.bad") && !FileSystem.exists(path))
        #expect(try repo.manifest(s1).unprotected.verifyState?.state == .failed)
        // The next backup with that data stores the chunk again: heals.
        _ = try backup(repo, time: 2_000_000, disk: disk(seed: 7))
        #expect(try restoreToMemory(repo, s1, file: "drive-scsi0.img.fidx") == disk(seed: 7))

        // A flipped digest byte in an index: its checksum no longer matches.
        let fidx = repo.directory(of: s2) + "/drive-scsi0.img.fidx"
        var ib = try FileSystem.readBytes(fidx)
        ib[4096 + 33] ^= 1
        try FileSystem.writeAtomically(fidx, bytes: ib)
        let r2 = try Verifier(repository: repo).verify([s2])
        #expect(r2.snapshots[s2] == .failed)
        #expect(r2.problems.contains { "\($0)".contains("drive-scsi0.img.fidx") && "\($0)".contains("vm/200/") })
        #expect(throws: RepositoryError.self) { try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") }
    }

    @Test func encryptedRepositoryKeepsChunksApartAndNeedsTheKey() throws {
        let scratch = try Scratch("crypt")
        let crypt = CryptConfig(encKey: [UInt8](repeating: 0x42, count: 32))
        let plainRepo = try Repository.create(root: scratch.path("store"))
        let encRepo = try Repository(root: plainRepo.root, crypt: crypt)
        let d = disk(seed: 9)
        let (sp, _, statsPlain) = try backup(plainRepo, time: 1_000_000, disk: d)
        let (se, me, statsEnc) = try backup(encRepo, vmid: "101", time: 1_000_000, disk: d)
        // Same data, keyed digests: nothing shared, nothing overwritten.
        #expect(statsPlain.count == 5 && statsEnc.count == 5)
        #expect(try RepositoryStatus(repository: encRepo).chunks == 10)
        #expect(me.signature != nil && me.files.allSatisfy { $0.cryptMode == .encrypt })
        let encIdx = try encRepo.index(se, file: "drive-scsi0.img.fidx")
        for dg in encIdx.digests {
            let blob = try encRepo.chunks.read(dg)
            #expect(DataBlob.Kind(magic: blob)!.isEncrypted)
        }
        #expect(try restoreToMemory(encRepo, se, file: "drive-scsi0.img.fidx") == d)
        #expect(try restoreToMemory(plainRepo, sp, file: "drive-scsi0.img.fidx") == d)
        // Without the key: the manifest is signed; reading fails with a clear error.
        #expect { try plainRepo.manifest(se) } throws: { ($0 as! RepositoryError).code == .crypt }
        // An encrypted chunk never replaces an unencrypted one of the same name.
        let someDigest = try plainRepo.index(sp, file: "drive-scsi0.img.fidx").digests[0]
        let encBlob = try DataBlob.encode([1, 2, 3], crypt: crypt)
        #expect { try plainRepo.chunks.insert(someDigest, blob: encBlob) } throws: { ($0 as! RepositoryError).code == .crypt }
    }

    /// A whole zero chunk is named by the zero digest of the repository: the
    /// keyed digest of 4 MiB of zeros when encrypted, the plain one otherwise.
    @Test func zeroChunkDigestFollowsTheKey() throws {
        let scratch = try Scratch("zero-digest")
        let crypt = CryptConfig(encKey: [UInt8](repeating: 0x42, count: 32))
        let plainRepo = try Repository.create(root: scratch.path("store"))
        let encRepo = try Repository(root: plainRepo.root, crypt: crypt)
        let zeros = [UInt8](repeating: 0, count: Int(FixedIndex.defaultChunkSize))
        let d = zeros + [UInt8](repeating: 7, count: 4096)
        let (sp, _, _) = try backup(plainRepo, time: 1_000_000, disk: d)
        let (se, _, _) = try backup(encRepo, vmid: "101", time: 1_000_000, disk: d)
        let keyed = zeros.withUnsafeBytes { crypt.digest($0) }
        #expect(keyed != DeviceDigest.zeroChunkDigest)
        #expect(try encRepo.index(se, file: "drive-scsi0.img.fidx").digests[0] == keyed)
        #expect(try plainRepo.index(sp, file: "drive-scsi0.img.fidx").digests[0] == DeviceDigest.zeroChunkDigest)
        #expect(try restoreToMemory(encRepo, se, file: "drive-scsi0.img.fidx") == d)
    }

    @Test func protectedSnapshotIsNotRemoved() throws {
        let scratch = try Scratch("prot")
        let repo = try Repository.create(root: scratch.path("store"))
        let (s, _, _) = try backup(repo, time: 1_000_000, disk: [1, 2, 3])
        try repo.setProtected(s, true)
        #expect(throws: RepositoryError.self) { try repo.remove(s) }
        try repo.setProtected(s, false)
        try repo.remove(s)
        #expect(try repo.snapshots().isEmpty)
    }
}
