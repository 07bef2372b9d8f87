import Foundation
import Testing
import Archive
import SnapdumpSystem
@testable import Repository

@Suite("A chunk that cannot be written")
struct ChunkWriteFailureTests {
    @Test("a chunk that cannot be written fails the disk with the chunk named, and no index is written")
    func backupFailsOnAChunkWriteError() throws {
        let scratch = try Scratch("chunkwrite")
        let repo = try Repository.create(root: scratch.path("store"))
        let chunk = Int(FixedIndex.defaultChunkSize)
        let disk = pseudoRandom(3 * chunk, seed: 5)
        // The second chunk's directory in the store is a file: its write fails (ENOTDIR), the others' not.
        let digest = disk.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[chunk..<2 * chunk])) }
        let dir = (repo.chunks.path(of: digest) as NSString).deletingLastPathComponent
        try? FileManager.default.removeItem(atPath: dir)
        try FileSystem.writeAtomically(dir, bytes: [1])
        let w = try BackupWriter(repository: repo, snapshot: SnapshotName(id: "100", time: 1_700_000_000))
        #expect {
            _ = try addDisk(w, name: "drive-scsi0.img", disk)
        } throws: { error in
            "\(error)".contains(digest.hex)
        }
        #expect(!FileManager.default.fileExists(atPath: w.directory + "/drive-scsi0.img.fidx"))
        w.abort()
        #expect(repo.chunks.storedSize(digest) == nil)
    }
}

