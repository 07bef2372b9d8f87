import Foundation
import Testing
import SnapdumpSystem
import Synchronization
@testable import Repository
import Archive

/// Incremental backups: only changed chunks read, every other digest taken
/// from the previous index, a complete index written; and when they may not be.
@Suite(.serialized) struct IncrementalTests {
    static let mib = 1 << 20
    static let volume = "tank:vm-100-disk-0"

    /// Counts the chunks read through the writer's closure.
    final class Reads: Sendable {
        let offsets = Mutex<[UInt64]>([])
        let bytes = Mutex<UInt64>(0)
        var chunks: [Int] { offsets.withLock { Array(Set($0.map { Int($0 / UInt64(4 * IncrementalTests.mib)) })).sorted() } }
    }

    func backup(_ repo: Repository, time: Int64, disk: [UInt8], previous: FixedIndex? = nil, changed: IndexSet = [],
                ranges: (@Sendable (Int) -> [Range<UInt64>])? = nil, zeros: [Range<UInt64>] = [],
                base: String? = "snapdump_base_x", reads: Reads = Reads()) throws -> (SnapshotName, BackupWriter.DiskUpload) {
        let s = SnapshotName(id: "100", time: time)
        let w = try BackupWriter(repository: repo, snapshot: s)
        let data = disk
        let read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { off, buf in
            reads.offsets.withLock { $0.append(off) }
            reads.bytes.withLock { $0 += UInt64(buf.count) }
            data.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(off)..<Int(off) + buf.count])) }
        }
        // What the storage reported as zeros (only sub-chunk ranges are asked here).
        let knownZero: @Sendable (UInt64, Int) -> Bool = { off, len in zeros.contains { $0.contains(off) && off + UInt64(len) <= $0.upperBound } }
        let upload: BackupWriter.DiskUpload
        if let previous {
            // The guest's newest backup, as IncrementalBase picks it (its hash states are used when they are `previous`'s).
            let before = try repo.snapshots(type: "vm", id: "100").last { $0 != s }
            upload = try w.addDisk(name: "drive-scsi0.img", size: UInt64(data.count), previous: previous, changed: changed,
                                   changedRanges: ranges, previousSnapshot: before, threads: 3, read: read, knownZero: knownZero)
        } else {
            let idx = try w.addDisk(name: "drive-scsi0.img", size: UInt64(data.count), threads: 3, read: read)
            upload = BackupWriter.DiskUpload(index: idx, chunksRead: idx.chunkCount, chunksReused: 0, bytesRead: UInt64(data.count))
        }
        if let base { w.recordBase(name: "drive-scsi0.img", volume: Self.volume, snapshot: base) }
        _ = try w.finish()
        return (s, upload)
    }

    /// A repository in `scratch`, a pseudo-random disk of `chunks` 4 MiB chunks, and its first (full) backup.
    func firstBackup(in scratch: Scratch, chunks: Int, seed: UInt64) throws -> (Repository, [UInt8], BackupWriter.DiskUpload) {
        let repo = try Repository.create(root: scratch.path("store"))
        let d = pseudoRandom(chunks * 4 * Self.mib, seed: seed)
        let (_, first) = try backup(repo, time: 1_796_004_000, disk: d)
        return (repo, d, first)
    }

    @Test func onlyChangedChunksAreReadAndTheIndexIsComplete() throws {
        let scratch = try Scratch("incr")
        let repo = try Repository.create(root: scratch.path("store"))
        var d = pseudoRandom(6 * 4 * Self.mib + 4096, seed: 3)
        let (s1, first) = try backup(repo, time: 1_796_004_000, disk: d)
        #expect(try repo.manifest(s1).unprotected.baseSnapshots == [Manifest.BaseSnapshotRecord(filename: "drive-scsi0.img.fidx", volume: Self.volume, snapshot: "snapdump_base_x")])

        d[1 * 4 * Self.mib + 7] ^= 0x55
        d[d.count - 1] ^= 0x55
        let reads = Reads()
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: [1, 6], reads: reads)
        #expect(reads.chunks == [1, 6])
        #expect(up.chunksRead == 2 && up.chunksReused == 5 && up.bytesRead == UInt64(4 * Self.mib + 4096))
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        // The same index a full read makes.
        let (_, full) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d)
        #expect(full.index.digests == up.index.digests)
        #expect(try Verifier(repository: repo).verify([s2]).ok)
    }

    @Test func grownDiskAndChunksGoneFromTheStoreAreReadAgain() throws {
        let scratch = try Scratch("incr-grow")
        let repo = try Repository.create(root: scratch.path("store"))
        var d = pseudoRandom(3 * 4 * Self.mib + 8192, seed: 4)
        let (_, first) = try backup(repo, time: 1_796_004_000, disk: d)
        d += pseudoRandom(4 * Self.mib, seed: 5)
        // Chunk 0 removed by hand from the store: read and stored again, not referenced blindly.
        try FileSystem.remove(repo.chunks.path(of: first.index.digests[0]))
        let reads = Reads()
        // The storage reported nothing changed; the short old last chunk (3) is longer now, chunk 4 is new.
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: [], reads: reads)
        #expect(reads.chunks == [0, 3, 4])
        #expect(up.chunksRead == 3 && up.chunksReused == 2)
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
    }

    /// Changed chunks built from the previous chunk with only the changed
    /// ranges read: bytes read follow the change, not the chunk size.
    @Test(arguments: [false, true])
    func onlyChangedRangesAreRead(encrypted: Bool) throws {
        let scratch = try Scratch("incr-ranges")
        let crypt = encrypted ? CryptConfig(encKey: [UInt8](repeating: 3, count: 32)) : nil
        let repo = try Repository.create(root: scratch.path("store"), crypt: crypt)
        let c = UInt64(4 * Self.mib)
        var d = pseudoRandom(5 * 4 * Self.mib + 12288, seed: 8)
        // Chunk 2 all zeros: its previous chunk is the zero chunk, taken without reading the store.
        for i in Int(2 * c)..<Int(3 * c) { d[i] = 0 }
        let (s1, first) = try backup(repo, time: 1_796_004_000, disk: d)
        // 0: 4 KiB written at 8 KiB and 4 KiB at the end of the chunk; 1: 64 KiB zeroed, reported as zeros (freed);
        // 2: 4 KiB written into the zero chunk; 3: 3.5 MiB rewritten (most of the chunk: read whole);
        // 4: an identical rewrite (reported, nothing differs); 5 (short, 12 KiB): its last 100 bytes.
        for i in 8192..<12288 { d[i] ^= 0xA5 }
        for i in Int(c) - 4096..<Int(c) { d[i] ^= 0x5A }
        for i in Int(c) + 65536..<Int(c) + 131072 { d[i] = 0 }
        for i in Int(2 * c) + 4096..<Int(2 * c) + 8192 { d[i] = 0x11 }
        for i in Int(3 * c) + 4096..<Int(3 * c) + 4096 + 3584 * 1024 { d[i] = ~d[i] }
        for i in d.count - 100..<d.count { d[i] ^= 0xFF }
        let ranges: [Int: [Range<UInt64>]] = [
            0: [8192..<12288, c - 4096..<c],
            1: [c + 65536..<c + 131072],
            2: [2 * c + 4096..<2 * c + 8192],
            3: [3 * c + 4096..<3 * c + 4096 + 3584 * 1024],
            4: [4 * c + 1000..<4 * c + 5000],
            5: [UInt64(d.count) - 100..<UInt64(d.count)],
        ]
        let reads = Reads()
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...5),
                                  ranges: { ranges[$0] ?? [] }, zeros: [c + 65536..<c + 131072], reads: reads)
        // Chunk 1 came from its previous chunk and the reported zeros alone: nothing of it read.
        #expect(reads.chunks == [0, 2, 3, 4, 5])
        let expected = UInt64(4096 * 2 + 4096 + Int(c) + 4000 + 100)
        #expect(up.bytesRead == expected && reads.bytes.withLock { $0 } == expected, "\(up.bytesRead)")
        #expect(up.chunksPatched == 5 && up.chunksRead == 5 && up.previousUnreadable == 0)
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        let (_, full) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d)
        #expect(full.index.digests == up.index.digests)
        #expect(try Verifier(repository: repo).verify([s1, s2]).ok)
    }

    /// A patched chunk's blob copies its previous blob's compressed frames
    /// outside the changed ranges (1 MiB frames) and recompresses the rest;
    /// the backup restores and verifies as a full one.
    @Test func patchedChunkCopiesTheUntouchedFramesOfItsPreviousBlob() throws {
        let scratch = try Scratch("incr-frames")
        let repo = try Repository.create(root: scratch.path("store"))
        let c = UInt64(4 * Self.mib), m = UInt64(Self.mib)
        var d = pseudoRandom(2 * 4 * Self.mib, seed: 14)
        let (s1, first) = try backup(repo, time: 1_796_004_000, disk: d)
        // Chunk 0: 4 KiB in frame 1. Chunk 1: a range across frames 2 and 3.
        for i in Int(m) + 100..<Int(m) + 4196 { d[i] ^= 0x77 }
        for i in Int(c + 2 * m) + 4000..<Int(c + 3 * m) + 4000 { d[i] ^= 0x77 }
        let ranges: [Int: [Range<UInt64>]] = [0: [m + 100..<m + 4196], 1: [c + 2 * m + 4000..<c + 3 * m + 4000]]
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...1),
                                  ranges: { ranges[$0] ?? [] })
        #expect(up.chunksPatched == 2)
        func frames(_ digest: SHA256Digest) throws -> [[UInt8]] {
            let blob = try FileSystem.readBytes(repo.chunks.path(of: digest))
            return try #require(blob.withUnsafeBytes { b in
                DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: b[12...]), length: Int(c)).map { f in (0..<4).map { Array(f.frame($0)) } }
            })
        }
        for (chunk, touched) in [(0, [1]), (1, [2, 3])] {
            let old = try frames(first.index.digests[chunk]), new = try frames(up.index.digests[chunk])
            for k in 0..<4 { #expect((old[k] == new[k]) == !touched.contains(k), "chunk \(chunk) frame \(k)") }
        }
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        let (_, full) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d)
        #expect(full.index.digests == up.index.digests)
        #expect(try Verifier(repository: repo).verify([s1, s2]).ok)
    }

    /// A zero chunk whose reported changes all read as zeros (zfs-fuse's FREE
    /// records for old holes) is taken from the previous index; a zero chunk
    /// with data written into it, and a data chunk with a range freed, are patched.
    @Test func zeroChunkWithOnlyZeroChangesIsReused() throws {
        let scratch = try Scratch("incr-zero-free")
        let repo = try Repository.create(root: scratch.path("store"))
        let c = UInt64(4 * Self.mib)
        var d = pseudoRandom(4 * 4 * Self.mib, seed: 12)
        for i in Int(c)..<Int(3 * c) { d[i] = 0 }   // chunks 1 and 2: holes
        let (_, first) = try backup(repo, time: 1_796_004_000, disk: d)
        for i in Int(2 * c) + 4096..<Int(2 * c) + 8192 { d[i] = 0x22 }
        for i in Int(3 * c)..<Int(3 * c) + 65536 { d[i] = 0 }
        let ranges: [Int: [Range<UInt64>]] = [
            1: [c..<c + 65536, c + UInt64(Self.mib)..<2 * c],     // old holes freed again
            2: [2 * c..<2 * c + 4096, 2 * c + 4096..<2 * c + 8192], // a hole freed again, then written
            3: [3 * c..<3 * c + 65536],                           // data freed
        ]
        let zeros = [c..<c + 65536, c + UInt64(Self.mib)..<2 * c, 2 * c..<2 * c + 4096, 3 * c..<3 * c + 65536]
        let reads = Reads()
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(1...3),
                                  ranges: { ranges[$0] ?? [] }, zeros: zeros, reads: reads)
        #expect(reads.chunks == [2] && up.bytesRead == 4096)
        #expect(up.chunksReused == 2 && up.chunksPatched == 2, "\(up)")
        #expect(up.index.digests[1] == DeviceDigest.zeroChunkDigest)
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        let (_, full) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d)
        #expect(full.index.digests == up.index.digests)
    }

    /// A previous chunk gone from the store or corrupt: that chunk is read whole, the backup is still right.
    @Test func unreadablePreviousChunkIsReadWhole() throws {
        let scratch = try Scratch("incr-ranges-gone")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 3, seed: 9)
        var d = disk
        let c = UInt64(4 * Self.mib)
        try FileSystem.remove(repo.chunks.path(of: first.index.digests[0]))
        let corrupt = repo.chunks.path(of: first.index.digests[1])
        var blob = try FileSystem.readBytes(corrupt)
        blob[blob.count - 9] ^= 1
        try FileSystem.writeAtomically(corrupt, bytes: blob, mode: 0o600)
        for chunk in 0..<3 { d[chunk * Int(c) + 100] ^= 1 }
        let reads = Reads()
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...2),
                                  ranges: { [UInt64($0) * c + 100..<UInt64($0) * c + 101] }, reads: reads)
        #expect(up.previousUnreadable == 2 && up.chunksPatched == 1 && up.chunksRead == 3)
        #expect(up.bytesRead == 2 * c + 1)
        let reason = up.previousUnreadableReason ?? ""
        #expect([0, 1].contains { reason.contains(first.index.digests[$0].hex) }, "\(reason)")
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
    }

    @Test func fullBackupWhenThePreviousCannotBeTrusted() throws {
        let scratch = try Scratch("incr-plan")
        let repo = try Repository.create(root: scratch.path("store"))
        func plan(volume: String = Self.volume, repo r: Repository? = nil, exists: Bool = true) -> IncrementalBase {
            IncrementalBase.find(repository: r ?? repo, id: "100", file: "drive-scsi0.img", volume: volume, baseExists: { _ in exists })
        }
        #expect(plan().reason?.contains("no previous backup") == true)
        let d = pseudoRandom(2 * 4 * Self.mib, seed: 6)
        let (s0, _) = try backup(repo, time: 1_796_004_000 - 86400, disk: d, base: nil)
        #expect(plan().reason?.contains("kept no base snapshot") == true)
        let (s1, _) = try backup(repo, time: 1_796_004_000, disk: d)
        guard case .incremental(let prev, let idx, let base) = plan() else { Issue.record("expected incremental: \(plan())"); return }
        #expect(prev == s1 && base == "snapdump_base_x" && idx.chunkCount == 2)
        #expect(plan(volume: "tank:vm-100-disk-1").reason?.contains("not tank:vm-100-disk-1") == true)
        #expect(plan(exists: false).reason?.contains("no longer exists") == true)
        let keyed = try Repository(root: repo.root, crypt: CryptConfig(encKey: [UInt8](repeating: 7, count: 32)))
        #expect(plan(repo: keyed).reason?.contains("no key") == true)
        try repo.updateManifest(s1) { $0.verifyState = Manifest.VerifyState(upid: "x", state: .failed) }
        #expect(plan().reason?.contains("failed verification") == true)
        try repo.updateManifest(s1) { $0.verifyState = nil }
        // A flipped digest in the previous index: it no longer matches its manifest.
        let path = repo.directory(of: s1) + "/drive-scsi0.img.fidx"
        var bytes = try FileSystem.readBytes(path)
        bytes[FixedIndex.headerSize + 3] ^= 1
        try FileSystem.writeAtomically(path, bytes: bytes, mode: 0o600)
        #expect(plan().reason?.contains("checksum mismatch") == true, "\(plan())")
        // The previous backup lost: the one before it kept no base.
        try repo.remove(s1)
        #expect(plan().reason?.contains("\(s0)") == true)
    }

    /// A patched chunk's digest is finished from the prefix it shares with its
    /// previous chunk (hashed once): the index is the one a full read makes,
    /// whether the first change is at the start, mid-chunk off a 64-byte
    /// block, at the very end, or the reported range changed nothing.
    @Test func patchedChunksDigestsAreThoseOfAFullRead() throws {
        let scratch = try Scratch("incr-prefix")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 5, seed: 21)
        var d = disk
        let c = UInt64(4 * Self.mib)
        let ranges: [Int: [Range<UInt64>]] = [
            0: [0..<4096],
            1: [c + 1_000_003..<c + 1_000_103, c + 2 * UInt64(Self.mib)..<c + 2 * UInt64(Self.mib) + 4096],
            2: [3 * c - 1..<3 * c],
            3: [3 * c + 8192..<3 * c + 12288],   // rewritten with the same bytes
            4: [4 * c + 64..<4 * c + 128],
        ]
        for (i, rs) in ranges where i != 3 { for r in rs { for k in Int(r.lowerBound)..<Int(r.upperBound) { d[k] ^= 0x3C } } }
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...4),
                                  ranges: { ranges[$0] ?? [] })
        #expect(up.chunksPatched == 5 && up.previousUnreadable == 0, "\(up)")
        #expect(up.index.digests[3] == first.index.digests[3])
        for i in 0..<5 {
            let expected = d.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[i * Int(c)..<(i + 1) * Int(c)])) }
            #expect(up.index.digests[i] == expected, "chunk \(i)")
        }
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        #expect(try Verifier(repository: repo).verify([s2]).ok)
    }

    /// A previous chunk whose blob is sound (CRC, zstd) but whose content is
    /// not the digest the index names: refused before any of it is used, the
    /// chunk read whole, nothing of the wrong content stored.
    @Test func previousChunkWithTheWrongContentIsReadWhole() throws {
        let scratch = try Scratch("incr-wrong-content")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 2, seed: 22)
        var d = disk
        let c = UInt64(4 * Self.mib)
        // Chunk 0's file holds another chunk's sound blob (same length).
        let wrong = try DataBlob.encode(pseudoRandom(4 * Self.mib, seed: 23), compress: true)
        try FileSystem.writeAtomically(repo.chunks.path(of: first.index.digests[0]), bytes: wrong, mode: 0o600)
        for chunk in 0..<2 { d[chunk * Int(c) + 5000] ^= 1 }
        let reads = Reads()
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...1),
                                  ranges: { [UInt64($0) * c + 5000..<UInt64($0) * c + 5001] }, reads: reads)
        #expect(up.previousUnreadable == 1 && up.chunksPatched == 1 && up.chunksRead == 2, "\(up)")
        // Chunk 0 read whole, once: its changed range was not read before the check failed.
        #expect(up.bytesRead == c + 1 && reads.bytes.withLock { $0 } == c + 1)
        let reason = up.previousUnreadableReason ?? ""
        #expect(reason.contains(first.index.digests[0].hex) && reason.contains("digest mismatch"), "\(reason)")
        #expect(up.index.digests[0] == d.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[0..<Int(c)])) })
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
    }

    /// The hash states the newest backup keeps (`ChunkMidstates`).
    func midstatesPath(_ repo: Repository, _ s: SnapshotName) -> String {
        ChunkMidstates.path(directory: repo.directory(of: s), fileName: "drive-scsi0.img.fidx")
    }

    func expectDigestsOfAFullRead(_ up: BackupWriter.DiskUpload, _ d: [UInt8]) {
        let c = 4 * Self.mib
        for i in 0..<up.index.chunkCount {
            let expected = d.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[i * c..<min(d.count, (i + 1) * c)])) }
            #expect(up.index.digests[i] == expected, "chunk \(i)")
        }
    }

    /// A patched chunk resumes its hash at its first changed frame from the
    /// previous backup's recorded state (the frames before it neither decoded
    /// nor hashed) wherever the change is: a frame rewritten whole in the
    /// middle, a few bytes in one, the last frame (nothing of the previous
    /// chunk decoded), the first two frames. A change in the first frame that
    /// keeps some of its bytes resumes nothing. Each backup's states are
    /// right for the next (a third backup resumes from the second's, also
    /// for a chunk the second took unread), only the newest backup keeps them.
    @Test func patchedChunksResumeAtTheirFirstChangedFrame() throws {
        let scratch = try Scratch("incr-midstates")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 6, seed: 31)
        let s1 = try #require(try repo.snapshots(type: "vm", id: "100").last)
        #expect(FileSystem.exists(midstatesPath(repo, s1)))
        var d = disk
        let c = UInt64(4 * Self.mib), m = UInt64(Self.mib)
        let ranges: [Int: [Range<UInt64>]] = [
            0: [2 * m..<3 * m],
            1: [c + m + 4096..<c + m + 8192],
            2: [2 * c + 3 * m..<3 * c],
            3: [3 * c + 100..<3 * c + 200],
            4: [4 * c..<4 * c + 2 * m],
        ]
        for (_, rs) in ranges { for r in rs { for k in Int(r.lowerBound)..<Int(r.upperBound) { d[k] ^= 0x5C } } }
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...4),
                                  ranges: { ranges[$0] ?? [] })
        #expect(up.chunksPatched == 5 && up.chunksResumed == 4 && up.previousUnreadable == 0, "\(up.chunksPatched) \(up.chunksResumed) \(up.previousUnreadable)")
        expectDigestsOfAFullRead(up, d)
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
        #expect(!FileSystem.exists(midstatesPath(repo, s1)) && FileSystem.exists(midstatesPath(repo, s2)))

        // Again from the second backup's states: chunk 0 (patched then), 5 (taken unread then), 1 in its last frame.
        let again: [Int: [Range<UInt64>]] = [
            0: [3 * m + 10..<3 * m + 20],
            1: [c + 3 * m..<2 * c],
            5: [5 * c + 2 * m + 64..<5 * c + 2 * m + 4160],
        ]
        for (_, rs) in again { for r in rs { for k in Int(r.lowerBound)..<Int(r.upperBound) { d[k] &+= 1 } } }
        let (s3, up3) = try backup(repo, time: 1_796_004_000 + 2 * 86400, disk: d, previous: up.index, changed: [0, 1, 5],
                                   ranges: { again[$0] ?? [] })
        #expect(up3.chunksPatched == 3 && up3.chunksResumed == 3 && up3.previousUnreadable == 0, "\(up3)")
        expectDigestsOfAFullRead(up3, d)
        #expect(try restoreToMemory(repo, s3, file: "drive-scsi0.img.fidx") == d)
        #expect(try Verifier(repository: repo).verify([s1, s2, s3]).ok)
    }

    /// Hash states that are damaged, or another index's, are not used: the
    /// chunks are patched from their whole previous chunk, as without states.
    @Test(arguments: ["damaged", "foreign"])
    func midstatesThatCannotBeTrustedAreNotUsed(_ kind: String) throws {
        let scratch = try Scratch("incr-midstates-bad")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 3, seed: 32)
        let s1 = try #require(try repo.snapshots(type: "vm", id: "100").last)
        let path = midstatesPath(repo, s1)
        var states = try FileSystem.readBytes(path)
        if kind == "damaged" {
            states[states.count - 7] ^= 1
        } else {
            // The states of a backup of other data, moved beside this index.
            let other = try Repository.create(root: scratch.path("other"))
            let s = SnapshotName(id: "100", time: 1_796_000_000)
            let w = try BackupWriter(repository: other, snapshot: s)
            let data = pseudoRandom(3 * 4 * Self.mib, seed: 33)
            _ = try w.addDisk(name: "drive-scsi0.img", size: UInt64(data.count), threads: 2, read: { off, buf in
                data.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(off)..<Int(off) + buf.count])) }
            })
            _ = try w.finish()
            states = try FileSystem.readBytes(midstatesPath(other, s))
        }
        try FileSystem.writeAtomically(path, bytes: states, mode: 0o600)
        var d = disk
        let m = UInt64(Self.mib), c = 4 * m
        for i in 0..<3 { d[Int(UInt64(i) * c + 2 * m) + 10] ^= 1 }
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: IndexSet(0...2),
                                  ranges: { [UInt64($0) * c + 2 * m + 10..<UInt64($0) * c + 2 * m + 11] })
        #expect(up.chunksPatched == 3 && up.chunksResumed == 0 && up.previousUnreadable == 0, "\(up)")
        expectDigestsOfAFullRead(up, d)
        #expect(try restoreToMemory(repo, s2, file: "drive-scsi0.img.fidx") == d)
    }

    /// A previous chunk whose file holds another sound blob (same frames):
    /// a chunk resumed after frames it copies undecoded is not given a digest
    /// of that content — its digest is the disk's, so verify reports the
    /// stored chunk, never holds the wrong data as good. Where the new chunk
    /// keeps decoded bytes of it, the check refuses it and the chunk is read whole.
    @Test func resumedChunkNeverVouchesForFramesItDidNotDecode() throws {
        let scratch = try Scratch("incr-midstates-wrong")
        let (repo, disk, first) = try firstBackup(in: scratch, chunks: 2, seed: 34)
        // Compressible other content: a zstd blob in 1 MiB frames, as the writer cuts them.
        let other = pseudoRandom(4 * Self.mib, seed: 35).map { $0 & 0x0F }
        let encoder = DataBlob.Encoder(capacity: 4 * Self.mib)
        let wrong = other.withUnsafeBytes { b in withExtendedLifetime(encoder) { Array(encoder.encode(b)) } }
        for i in 0..<2 { try FileSystem.writeAtomically(repo.chunks.path(of: first.index.digests[i]), bytes: wrong, mode: 0o600) }
        var d = disk
        let m = UInt64(Self.mib), c = 4 * m
        // Chunk 0: its last frame rewritten whole (frames 0-2 copied undecoded); chunk 1: 1 KiB in frame 2 (frame 2-3 decoded).
        for k in Int(3 * m)..<Int(c) { d[k] ^= 0x33 }
        for k in Int(c + 2 * m)..<Int(c + 2 * m + 1024) { d[k] ^= 0x33 }
        let ranges: [Int: [Range<UInt64>]] = [0: [3 * m..<c], 1: [c + 2 * m..<c + 2 * m + 1024]]
        let (s2, up) = try backup(repo, time: 1_796_004_000 + 86400, disk: d, previous: first.index, changed: [0, 1],
                                  ranges: { ranges[$0] ?? [] })
        #expect(up.chunksResumed == 1 && up.previousUnreadable == 1 && up.chunksRead == 2, "\(up)")
        expectDigestsOfAFullRead(up, d)
        let report = try Verifier(repository: repo).verify([s2])
        #expect(!report.ok)
        // Chunk 1, read whole, is sound; chunk 0's blob does not hash to its digest.
        let reader = ChunkReader(repository: repo, snapshot: s2)
        #expect(throws: RepositoryError.self) { try ChunkDecoder(capacity: 4 * Self.mib).decode(up.index.digests[0], expectedLength: 4 * Self.mib, from: reader) }
        _ = try ChunkDecoder(capacity: 4 * Self.mib).decode(up.index.digests[1], expectedLength: 4 * Self.mib, from: reader)
    }
}
