import Foundation
import SnapdumpSystem
import Storage
import Testing

/// The reader of a new snapshot whose changed ranges came with the change report (zfs-fuse's send
/// stream): what the report carried is served from memory, the rest from the snapshot's own reader,
/// opened once and only when asked; either way the bytes are the snapshot's.
@Suite("Changed data served from the change report")
struct ChangedDataSourceTests {
    static let size = 1 << 20

    /// The snapshot: pseudo-random bytes, zeros where the report says a range was freed.
    static func snapshot() -> [UInt8] {
        var b = pseudoRandom(size, seed: 21)
        for i in 65_536..<131_072 { b[i] = 0 }
        return b
    }

    /// What a stream would carry: two writes (the second over part of the first) and a free.
    static func carried(_ snap: [UInt8], size: Int = size) -> ChangedData {
        var d = ChangedData(object: 5, size: UInt64(size))
        d.insert(offset: 4096, length: 8192, bytes: Array(repeating: 0xee, count: 8192))
        d.insert(offset: 4096, length: 8192, bytes: Array(snap[4096..<12_288]))
        d.insert(offset: 65_536, length: 65_536, bytes: nil)
        d.insert(offset: 200_000, length: 1000, bytes: Array(snap[200_000..<201_000]))
        return d
    }

    final class Opened: @unchecked Sendable {
        let lock = NSLock()
        var count = 0
        var source: MemoryBlockSource?
        var closes = 0
    }

    static func readAll(_ s: any BlockSource, step: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0x5a, count: Int(s.size))
        var offset = 0
        while offset < out.count {
            let want = min(step, out.count - offset)
            let n = try out.withUnsafeMutableBytes { try s.read(at: UInt64(offset), into: UnsafeMutableRawBufferPointer(rebasing: $0[offset..<offset + want])) }
            #expect(n > 0)
            offset += n
        }
        return out
    }

    @Test(arguments: [4096, 65_536, 1 << 20])
    func everyByteIsTheSnapshotsAndTheRestOpensItOnce(step: Int) throws {
        let snap = Self.snapshot()
        let opened = Opened()
        let source = ChangedDataSource(data: Self.carried(snap), name: "test@new", fallback: {
            opened.lock.withLock { opened.count += 1 }
            let m = MemoryBlockSource(bytes: snap, name: "clone")
            opened.source = m
            return m
        }, onClose: { opened.lock.withLock { opened.closes += 1 } })
        #expect(try Self.readAll(source, step: step) == snap)
        #expect(opened.count == 1)
        let carriedBytes = 8192 + 65_536 + 1000
        #expect(source.bytesFromFallback == UInt64(Self.size - carriedBytes))
        let reads = try #require(opened.source?.reads)
        for (offset, length) in reads {
            let r = Int(offset)..<Int(offset) + length
            for c in [4096..<12_288, 65_536..<131_072, 200_000..<201_000] {
                #expect(!r.overlaps(c), "the snapshot was read at \(r), which the report carried")
            }
        }
        try source.close()
        try source.close()
        #expect(opened.source?.closed == true && opened.closes == 1, "fallback closed, onClose once")
    }

    @Test func carriedRangesAloneNeverOpenTheSnapshot() throws {
        let snap = Self.snapshot()
        let opened = Opened()
        let source = ChangedDataSource(data: Self.carried(snap), name: "test@new", fallback: {
            opened.count += 1
            return MemoryBlockSource(bytes: snap)
        })
        var buf = [UInt8](repeating: 0, count: 8192)
        var done = 0
        while done < buf.count {
            done += try buf.withUnsafeMutableBytes { try source.read(at: UInt64(4096 + done), into: UnsafeMutableRawBufferPointer(rebasing: $0[done...])) }
        }
        #expect(buf == Array(snap[4096..<12_288]) && opened.count == 0 && source.bytesFromFallback == 0)
        #expect(try source.read(at: UInt64(Self.size), into: buf.withUnsafeMutableBytes { $0 }) == 0, "past the end")
        try source.close()
    }

    /// A snapshot whose size is not the one the report gave: refused, not read past or short.
    @Test func aSnapshotOfAnotherSizeIsAnError() throws {
        let snap = Self.snapshot()
        let source = ChangedDataSource(data: Self.carried(snap), name: "test@new", fallback: { MemoryBlockSource(bytes: Array(snap.prefix(4096))) })
        var buf = [UInt8](repeating: 0, count: 4096)
        let error = #expect(throws: StorageError.self) { _ = try buf.withUnsafeMutableBytes { try source.read(at: 0, into: $0) } }
        #expect(error?.message.contains("test@new is 4096 bytes, the change report said 1048576") == true, "\(String(describing: error))")
        try source.close()
    }
}
