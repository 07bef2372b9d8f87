import Foundation
import Testing
import SnapdumpSystem
@testable import Repository
import Archive

/// The previous chunks of a patching upload, asked of the disk a window ahead of the threads.
struct ChunkPrefetchTests {
    /// Chunk files of `count` digests in a scratch store (a digest per index, `missing` without a file).
    func store(_ scratch: Scratch, count: Int, missing: Set<Int> = []) throws -> (ChunkStore, [SHA256Digest]) {
        let store = ChunkStore(root: scratch.dir)
        let digests = (0..<count).map { SHA256.digest(Array("chunk \($0)".utf8)) }
        for (k, d) in digests.enumerated() where !missing.contains(k) {
            let path = store.path(of: d)
            try FileSystem.createDirectory((path as NSString).deletingLastPathComponent, mode: 0o700)
            try FileSystem.writeAtomically(path, bytes: pseudoRandom(64 << 10, seed: UInt64(k)))
        }
        return (store, digests)
    }

    @Test func asksAWindowAheadOfTheThreads() throws {
        let scratch = try Scratch("prefetch-window")
        let (store, digests) = try store(scratch, count: 40, missing: [7])
        // Every other chunk of the disk is patched: chunk index 2k holds digest k.
        let p = ChunkPrefetch(store: store, chunks: digests.enumerated().map { (index: 2 * $0.offset, digest: $0.element) }, window: 4)
        #expect(p.askedCount == 0)
        p.start()
        #expect(p.askedCount == 4)
        p.reached(0)
        #expect(p.askedCount == 5)
        p.reached(1)   // not a patched chunk: nothing more
        #expect(p.askedCount == 5)
        p.reached(20)  // position 10: up to 10 + 1 + 4, the missing file (7) skipped on the way
        #expect(p.askedCount == 15)
        p.reached(4)   // behind what was asked: nothing asked twice
        #expect(p.askedCount == 15)
        p.reached(78)  // the last: capped at the list
        #expect(p.askedCount == 40)
    }

    @Test func anAskedChunkIsReadIntoThePageCache() throws {
        let scratch = try Scratch("prefetch-cache")
        let (store, digests) = try store(scratch, count: 1)
        let path = store.path(of: digests[0])
        let f = try File.openForReading(path)
        defer { try? f.close() }
        try f.sync()
        f.adviseDontNeed(offset: 0, length: 0)
        try #require(!f.isCached(at: 60 << 10), "the filesystem kept the chunk cached after DONTNEED: nothing to show here")
        ChunkPrefetch(store: store, chunks: [(index: 3, digest: digests[0])]).start()
        let deadline = Date().addingTimeInterval(5)
        while !f.isCached(at: 60 << 10) && Date() < deadline { usleep(2_000) }
        #expect(f.isCached(at: 60 << 10))
    }
}
