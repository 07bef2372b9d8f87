import CZstd
import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

/// A sink that keeps what it is given in memory, checking that writes come in order.
final class MemorySink: OutputSink, @unchecked Sendable {
    // @unchecked: written by one thread at a time (the output's caller).
    let path = "memory.zst"
    var bytes: [UInt8] = []
    var failAt: Int?

    func write(_ b: UnsafeRawBufferPointer, at offset: UInt64) throws {
        precondition(offset == UInt64(bytes.count), "write at \(offset), \(bytes.count) bytes so far")
        if let failAt, bytes.count + b.count > failAt { throw SystemError("pwrite", path, errno: ENOSPC) }
        bytes += b
    }
}

/// ZstdOutput: independent frames compressed on a pool of workers (issue 15).
@Suite("ZstdOutput: frames compressed in parallel", .serialized)
struct ZstdOutputTests {
    /// Compressible, non-repeating data.
    static func stream(_ size: Int, seed: UInt64) -> [UInt8] {
        var rng = SeededRandom(seed)
        var b = [UInt8](repeating: 0, count: size)
        b.withUnsafeMutableBytes { p in
            for i in stride(from: 0, to: size - 7, by: 8) { p.storeBytes(of: rng.next() & 0x0303_0F0F_0303_0F0F, toByteOffset: i, as: UInt64.self) }
        }
        return b
    }

    /// Feeds `data` through `out` in pieces: odd pieces with `write`, even ones built in reserved room.
    static func feed(_ out: ZstdOutput, _ data: [UInt8], pieces: [Int]) throws {
        var pos = 0, k = 0
        while pos < data.count {
            let n = min(pieces[k % pieces.count], data.count - pos)
            if k % 2 == 0 {
                let room = try out.reserve(n)
                data.withUnsafeBytes { room.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[pos..<pos + n])) }
                try out.commit(n)
            } else {
                try data.withUnsafeBytes { b in try out.write(UnsafeRawBufferPointer(rebasing: b[pos..<pos + n])) }
            }
            pos += n
            k += 1
        }
    }

    static func decompress(_ bytes: [UInt8], expected: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: expected + 1)
        let n = out.withUnsafeMutableBytes { o in bytes.withUnsafeBytes { ZSTD_decompress(o.baseAddress, o.count, $0.baseAddress, $0.count) } }
        try #require(ZSTD_isError(n) == 0, "\(String(cString: ZSTD_getErrorName(n)))")
        return Array(out[0..<n])
    }

    /// Threads of this process named as ZstdOutput names its own.
    static func liveThreads() -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.filter { (try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8))?.hasPrefix(ZstdOutput.threadPrefix) == true }.count
    }

    static func frameCount(_ bytes: [UInt8]) -> Int { MultiFrameTests.frameOffsets(bytes).count }

    @Test("frames finishing out of order on 1–3 workers are written in stream order, byte for byte as compressed on the caller's thread",
          arguments: [1, 2, 3])
    func orderUnderLoad(workers: Int32) throws {
        let data = Self.stream(3 << 20 + 4321, seed: UInt64(workers))
        let frame = 64 << 10
        let pieces = [1, 70_000, 4096, 65536, 12_345, 65536]

        let inline = MemorySink()
        let a = try ZstdOutput(file: inline, startOffset: 0, level: 3, workers: 0, frameSize: frame)
        try Self.feed(a, data, pieces: pieces)
        #expect(try a.finish() == UInt64(inline.bytes.count))

        let pooled = MemorySink()
        let b = try ZstdOutput(file: pooled, startOffset: 0, level: 3, workers: workers, frameSize: frame)
        // Early frames take longest: later ones finish first and must wait for their turn.
        b.beforeFrame = { n in usleep(UInt32((n * 7919) % 5) * 1500); return nil }
        try Self.feed(b, data, pieces: pieces)
        #expect(try b.finish() == UInt64(pooled.bytes.count))

        #expect(pooled.bytes == inline.bytes)
        #expect(try Self.decompress(pooled.bytes, expected: data.count) == data)
        #expect(b.frames == a.frames)
        #expect(Self.frameCount(pooled.bytes) == b.frames)
        // Reserved room never straddles a frame; written bytes fill frames exactly: at least one frame per 64 KiB.
        #expect(b.frames >= data.count / frame)
    }

    @Test("a frame ends before reserved room would cross it; through write frames are exactly frameSize")
    func frameBoundaries() throws {
        let sink = MemorySink()
        let out = try ZstdOutput(file: sink, startOffset: 0, level: 1, workers: 2, frameSize: 1000)
        let data = Self.stream(4000, seed: 9)
        // 600 + 600 cannot share a 1000-byte frame: the first ends at 600; write then fills frames to exactly 1000.
        for (lo, hi) in [(0, 600), (600, 1200)] {
            let room = try out.reserve(hi - lo)
            data.withUnsafeBytes { room.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[lo..<hi])) }
            try out.commit(hi - lo)
        }
        try data.withUnsafeBytes { b in try out.write(UnsafeRawBufferPointer(rebasing: b[1200...])) }
        _ = try out.finish()
        let offsets = MultiFrameTests.frameOffsets(sink.bytes)
        #expect(offsets.count == 5)
        let sizes = (0..<offsets.count).map { i -> Int in
            let end = i + 1 < offsets.count ? offsets[i + 1] : sink.bytes.count
            return Int(sink.bytes.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress! + offsets[i], end - offsets[i]) })
        }
        #expect(sizes == [600, 1000, 1000, 1000, 400])
        #expect(try Self.decompress(sink.bytes, expected: data.count) == data)
    }

    @Test("a frame that fails stops the output: the error names the frame, only the frames before it were written, the workers end",
          arguments: [0, 2])
    func failingFrame(workers: Int32) throws {
        let data = Self.stream(1 << 20, seed: 5)
        let frame = 64 << 10
        let sink = MemorySink()
        // In a function of its own, so the output is gone when it returns.
        func run() throws {
            let out = try ZstdOutput(file: sink, startOffset: 0, level: 3, workers: workers, frameSize: frame)
            out.beforeFrame = { n in n == 5 ? "injected failure" : nil }
            #expect(Self.liveThreads() <= Int(workers == 0 ? 0 : workers + 1))
            let e = try #require(throws: ArchiveError.self) {
                try Self.feed(out, data, pieces: [frame])
                _ = try out.finish()
            }
            #expect(e.code == .compression)
            #expect(e.description.contains("frame 5 (stream offset \(5 * frame))"), "\(e)")
            #expect(e.description.contains("injected failure"))
            // Once failed, it stays failed.
            #expect(throws: ArchiveError.self) { _ = try out.finish() }
        }
        try run()
        #expect(Self.frameCount(sink.bytes) == 5)
        #expect(try Self.decompress(sink.bytes, expected: data.count) == Array(data[0..<5 * frame]))
        // The output is gone: so are its threads (deinit waited for them; the kernel reaps them a moment later).
        var left = Self.liveThreads()
        for _ in 0..<100 where left > 0 {
            usleep(20_000)
            left = Self.liveThreads()
        }
        #expect(left == 0)
    }

    @Test("a failing write of a finished frame (disk full) fails the output with the sink's error")
    func failingSink() throws {
        let sink = MemorySink()
        sink.failAt = 10_000
        let out = try ZstdOutput(file: sink, startOffset: 0, level: 3, workers: 2, frameSize: 64 << 10)
        let e = try #require(throws: ArchiveError.self) {
            try Self.feed(out, Self.stream(2 << 20, seed: 6), pieces: [60_000])
            _ = try out.finish()
        }
        #expect(e.code == .io)
        #expect(e.description.contains("memory.zst"))
    }

    @Test("an empty stream is one empty frame")
    func empty() throws {
        let sink = MemorySink()
        let out = try ZstdOutput(file: sink, startOffset: 0, level: 3, workers: 2)
        #expect(try out.finish() == UInt64(sink.bytes.count))
        #expect(Self.frameCount(sink.bytes) == 1)
        #expect(try Self.decompress(sink.bytes, expected: 0) == [])
    }
}

