import Foundation
import Testing
import SnapdumpSystem
import Synchronization
@testable import Repository
import Archive

/// `ChunkReader.restore(submit:)`: a chunk's write may complete later, on
/// another thread; its buffer must not be reused before, and the restore
/// returns only after every write is done.
@Suite struct ChunkReaderSubmitTests {
    static let mib = 1 << 20

    /// Writes that complete late (on another queue, after a delay, in any
    /// order), copying the bytes only then: a buffer reused too early shows as wrong content.
    final class LateWrites: Sendable {
        let out: Mutex<[UInt8]>
        let state = Mutex<(inFlight: Int, maxInFlight: Int, calls: Int)>((0, 0, 0))
        let failAt: UInt64?
        let secondSubmitted = DispatchSemaphore(value: 0)
        init(size: Int, failAt: UInt64? = nil) {
            out = Mutex([UInt8](repeating: 0, count: size))
            self.failAt = failAt
        }
        func submit(_ offset: UInt64, _ bytes: UnsafeRawBufferPointer, _ done: @escaping @Sendable ((any Error)?) -> Void) {
            let call = state.withLock { s in
                s.inFlight += 1
                s.calls += 1
                s.maxInFlight = max(s.maxInFlight, s.inFlight)
                return s.calls
            }
            if call == 2 { secondSubmitted.signal() }
            let base = UInt(bitPattern: bytes.baseAddress!), count = bytes.count
            let delay = 0.002 + 0.008 * Double((offset >> 22) % 3)
            DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [self] in
                // The first write completes only once a second one was submitted (or after 10 s:
                // a reader that waits for each write before the next fails the in-flight check).
                if call == 1 { _ = secondSubmitted.wait(timeout: .now() + 10) }
                let b = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: count)
                out.withLock { o in o.withUnsafeMutableBytes { d in
                    UnsafeMutableRawBufferPointer(rebasing: d[Int(offset)..<Int(offset) + count]).copyMemory(from: b)
                } }
                state.withLock { $0.inFlight -= 1 }
                done(offset == failAt ? SystemError("write at offset \(offset) of", "test-volume", errno: EIO) : nil)
            }
        }
    }

    func snapshot(_ data: [UInt8], in scratch: Scratch) throws -> (Repository, SnapshotName) {
        let repo = try Repository.create(root: scratch.path("store"))
        let s = SnapshotName(id: "100", time: 1_796_004_000)
        let w = try BackupWriter(repository: repo, snapshot: s)
        _ = try addDisk(w, name: "drive-scsi0.img", data)
        _ = try w.finish()
        return (repo, s)
    }

    @Test("late writes from two buffers per thread: the same bytes, a zero chunk skipped, every write done before restore returns")
    func lateWrites() throws {
        let scratch = try Scratch("submit")
        // 9 chunks: random ones, chunk 4 all zeros (not written), a short random tail.
        var data = pseudoRandom(8 * 4 * Self.mib + 12345, seed: 9)
        for i in (4 * 4 * Self.mib)..<(5 * 4 * Self.mib) { data[i] = 0 }
        let (repo, s) = try snapshot(data, in: scratch)
        let idx = try repo.index(s, file: "drive-scsi0.img.fidx")
        for threads in [1, 3] {
            let w = LateWrites(size: data.count)
            try ChunkReader(repository: repo, snapshot: s).restore(idx, sparse: true, threads: threads, submit: w.submit)
            let st = w.state.withLock { $0 }
            #expect(st.inFlight == 0, "threads \(threads): restore returned with \(st.inFlight) writes in flight")
            #expect(st.calls == 8, "threads \(threads): 8 chunks written, the zero one skipped")
            // A thread decodes its next chunk while the last one is written: two in flight, never more.
            #expect(st.maxInFlight >= 2 && st.maxInFlight <= 2 * threads, "threads \(threads): at most \(st.maxInFlight) in flight")
            #expect(w.out.withLock { $0 } == data, "threads \(threads)")
        }
    }

    @Test("a write that fails when it completes fails the restore with its error, after the writes in flight are done")
    func lateError() throws {
        let scratch = try Scratch("submit-error")
        let data = pseudoRandom(6 * 4 * Self.mib, seed: 11)
        let (repo, s) = try snapshot(data, in: scratch)
        let idx = try repo.index(s, file: "drive-scsi0.img.fidx")
        let w = LateWrites(size: data.count, failAt: UInt64(2 * 4 * Self.mib))
        #expect {
            try ChunkReader(repository: repo, snapshot: s).restore(idx, sparse: true, threads: 2, submit: w.submit)
        } throws: { e in
            "\(e)".contains("test-volume") && "\(e)".contains("offset \(2 * 4 * Self.mib)")
        }
        #expect(w.state.withLock { $0.inFlight } == 0)
    }
}
