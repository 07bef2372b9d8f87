import Foundation
import Synchronization
import Testing
@testable import Repository

@Suite("Blobs written behind the upload thread")
struct ChunkWriteBehindTests {
    struct Refused: Error {}

    @Test("the upload thread goes on while a blob is written; an encoder comes back only once its blob is written")
    func encoderWaitsForItsOwnWrite() throws {
        let w = ChunkWriteBehind(capacity: 1 << 20)
        let release = DispatchSemaphore(value: 0)
        let written = Atomic<Int>(0)
        let first = try w.encoder()
        let blob = [UInt8](repeating: 7, count: 4096)
        try blob.withUnsafeBytes { b in
            w.submit(b) { _ in release.wait(); written.add(1, ordering: .relaxed) }
            // The first write is held: the other encoder is handed out at once.
            let second = try w.encoder()
            #expect(second !== first)
            #expect(written.load(ordering: .relaxed) == 0)
            w.submit(b) { bytes in written.add(bytes.count == 4096 ? 1 : 100, ordering: .relaxed) }
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { release.signal() }
            // Back to the first encoder: only after its write (and the one queued behind it) ran.
            let again = try w.encoder()
            #expect(again === first)
            #expect(written.load(ordering: .relaxed) >= 1)
            try w.drain()
        }
        #expect(written.load(ordering: .relaxed) == 2)
    }

    @Test("a failed write is thrown by the next encoder() and by drain(); the writes after it are not run")
    func firstFailureIsThrown() throws {
        let w = ChunkWriteBehind(capacity: 1 << 20)
        let ran = Atomic<Int>(0)
        let blob = [UInt8](repeating: 1, count: 512)
        try blob.withUnsafeBytes { b in
            _ = try w.encoder()
            w.submit(b) { _ in ran.add(1, ordering: .relaxed); throw Refused() }
            _ = try w.encoder()
            w.submit(b) { _ in ran.add(1, ordering: .relaxed) }
            #expect(throws: Refused.self) { _ = try w.encoder() }
            #expect(throws: Refused.self) { try w.drain() }
        }
        #expect(ran.load(ordering: .relaxed) == 1)
    }
}
