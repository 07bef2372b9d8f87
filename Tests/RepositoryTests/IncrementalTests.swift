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
        var chunks: [Int] { offsets.withLock { $0.map { Int($0 / UInt64(4 * IncrementalTests.mib)) }.sorted() } }
    }

    func backup(_ repo: Repository, time: Int64, disk: [UInt8], previous: FixedIndex? = nil, changed: IndexSet = [],
                base: String? = "snapdump_base_x", reads: Reads = Reads()) throws -> (SnapshotName, BackupWriter.DiskUpload) {
        let s = SnapshotName(id: "100", time: time)
        let w = try BackupWriter(repository: repo, snapshot: s)
        let data = disk
        let read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { off, buf in
            reads.offsets.withLock { $0.append(off) }
            data.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(off)..<Int(off) + buf.count])) }
        }
        let upload: BackupWriter.DiskUpload
        if let previous {
            upload = try w.addDisk(name: "drive-scsi0.img", size: UInt64(data.count), previous: previous, changed: changed, threads: 3, read: read)
        } else {
            let idx = try w.addDisk(name: "drive-scsi0.img", size: UInt64(data.count), threads: 3, read: read)
            upload = BackupWriter.DiskUpload(index: idx, chunksRead: idx.chunkCount, chunksReused: 0, bytesRead: UInt64(data.count))
        }
        if let base { w.recordBase(name: "drive-scsi0.img", volume: Self.volume, snapshot: base) }
        _ = try w.finish()
        return (s, upload)
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
}
