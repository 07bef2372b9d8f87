import Foundation
import Synchronization
import Testing
import Archive
import SnapdumpSystem
@testable import Repository

@Suite("Chunk writes behind the chunk building")
struct WriteBehindTests {
    @Test("an encoder is handed out again only after the write of its last blob finished; finish waits for all")
    func encoderReusedOnlyAfterItsWrite() throws {
        let w = WriteBehind(capacity: 1 << 20)
        let done = Mutex([Int]())
        var handedOut: [ObjectIdentifier] = []
        for k in 0..<6 {
            let e = try w.nextEncoder()
            handedOut.append(ObjectIdentifier(e))
            if k >= 2 {
                // The blob written two chunks ago was this encoder's: written by now.
                #expect(done.withLock { $0.contains(k - 2) }, "chunk \(k)")
            }
            w.submit {
                usleep(20_000)
                done.withLock { $0.append(k) }
            }
        }
        try w.finish()
        #expect(done.withLock { $0 } == Array(0..<6))
        // Two encoders, taking turns.
        #expect(Set(handedOut).count == 2)
        #expect(handedOut[0] == handedOut[2] && handedOut[1] == handedOut[3] && handedOut[0] != handedOut[1])
    }

    @Test("a failed write is thrown by the next nextEncoder of its slot and by finish")
    func failureReachesTheThread() throws {
        struct Refused: Error {}
        let w = WriteBehind(capacity: 1 << 20)
        _ = try w.nextEncoder()
        w.submit { throw Refused() }
        _ = try w.nextEncoder()
        w.submit {}
        #expect(throws: Refused.self) { _ = try w.nextEncoder() }
        #expect(throws: Refused.self) { try w.finish() }
    }

    @Test("a chunk that cannot be written fails the disk with the chunk named, and no index is written")
    func backupFailsOnAChunkWriteError() throws {
        let scratch = try Scratch("writebehind")
        let repo = try Repository.create(root: scratch.path("store"))
        let chunk = Int(FixedIndex.defaultChunkSize)
        let disk = pseudoRandom(3 * chunk, seed: 5)
        // The second chunk's directory in the store is a file: its write fails (ENOTDIR), the others' not.
        let digest = disk.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[chunk..<2 * chunk])) }
        let dir = (repo.chunks.path(of: digest) as NSString).deletingLastPathComponent
        try? FileManager.default.removeItem(atPath: dir)
        try writeFile(dir, [1])
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

private func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}
