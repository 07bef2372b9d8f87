import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

@Suite("FileBlockSource and VolumeExporter")
struct ExporterTests {
    /// A sparse 8 MiB file: data at [1 MiB, 1 MiB + 192 KiB) and [6 MiB, 6 MiB + 4 KiB),
    /// a 64 KiB run of written zeros at 3 MiB, holes elsewhere.
    static func sparseFile(in dir: String) throws -> (path: String, content: [UInt8]) {
        let path = dir + "/sparse.raw"
        var content = [UInt8](repeating: 0, count: 8 << 20)
        var rng = SplitMix64(seed: 42)
        for i in (1 << 20)..<((1 << 20) + (192 << 10)) { content[i] = UInt8(truncatingIfNeeded: rng.next() | 1) }
        for i in (6 << 20)..<((6 << 20) + 4096) { content[i] = 0x77 }
        let f = try File.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try f.truncate(to: UInt64(content.count))
        for r in [(1 << 20)..<((1 << 20) + (192 << 10)), (3 << 20)..<((3 << 20) + (64 << 10)), (6 << 20)..<((6 << 20) + 4096)] {
            try content[r].withUnsafeBytes { try f.write($0, at: UInt64(r.lowerBound)) }
        }
        try f.sync()
        return (path, content)
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    @Test func fileSourceReadsAndMapsHoles() throws {
        let dir = try Integration.scratchDirectory("source")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, content) = try Self.sparseFile(in: dir)
        let s = try FileBlockSource(path: path, name: "test")
        defer { try? s.close() }
        #expect(s.size == 8 << 20)
        let map = try s.allocationMap()
        #expect(map.first?.offset == 0 && map.last.map { $0.offset + $0.length } == s.size)
        for (a, b) in zip(map, map.dropFirst()) { #expect(a.offset + a.length == b.offset && a.kind != b.kind) }
        let data = map.filter { $0.kind == .data }
        // Filesystems allocate in blocks; the written ranges must be inside data ranges.
        for r in [(UInt64(1 << 20), UInt64(192 << 10)), (UInt64(6 << 20), UInt64(4096))] {
            #expect(data.contains { $0.offset <= r.0 && $0.offset + $0.length >= r.0 + r.1 }, "\(r) in \(map)")
        }
        #expect(data.reduce(0) { $0 + $1.length } < 1 << 20, "holes are holes: \(map)")
        // A sub-range map is clipped to the range.
        let sub = try s.allocation(offset: (1 << 20) + 4096, length: 8192)
        #expect(sub == [AllocationRange(offset: (1 << 20) + 4096, length: 8192, kind: .data)])
        #expect(try s.allocation(offset: 5 << 20, length: 4096) == [AllocationRange(offset: 5 << 20, length: 4096, kind: .zero)])
        // Reads stop at the end of the source.
        var buf = [UInt8](repeating: 0xff, count: 8192)
        let n = try buf.withUnsafeMutableBytes { try s.read(at: s.size - 4096, into: $0) }
        #expect(n == 4096 && buf[0..<4096].allSatisfy { $0 == 0 })
        #expect(try buf.withUnsafeMutableBytes { try s.read(at: s.size, into: $0) } == 0)
        let m = try buf.withUnsafeMutableBytes { try s.read(at: 1 << 20, into: $0) }
        #expect(m == 8192 && Array(buf) == Array(content[(1 << 20)..<((1 << 20) + 8192)]))
    }

    @Test func exportToFileIsExactAndSparse() throws {
        let dir = try Integration.scratchDirectory("export-file")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, content) = try Self.sparseFile(in: dir)
        let s = try FileBlockSource(path: path, name: "test")
        defer { try? s.close() }
        let out = dir + "/out.raw"
        // An existing file is replaced as a whole.
        try Data(repeating: 0xee, count: 10 << 20).write(to: URL(fileURLWithPath: out))
        let r = try VolumeExporter.export(s, toFile: out)
        #expect(r.bytes == 8 << 20)
        #expect(try Self.readAll(out) == content)
        #expect(try FileSystem.list(dir).sorted() == ["out.raw", "sparse.raw"], "no temp file left")
        // Zero runs (holes and written zeros) stay holes: 196 KiB of data.
        #expect(r.dataBytes == (192 << 10) + 4096, "dataBytes \(r.dataBytes)")
        #expect(try File.openForReading(out).allocatedBytes() <= 512 << 10, "sparse output")
    }

    @Test func exportToStreamWritesEveryByte() throws {
        let dir = try Integration.scratchDirectory("export-stream")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, content) = try Self.sparseFile(in: dir)
        let s = try FileBlockSource(path: path, name: "test")
        defer { try? s.close() }
        let out = dir + "/stream.raw"
        let f = try File.open(out, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
        let r = try VolumeExporter.export(s, toStream: f)
        try f.close()
        #expect(r.bytes == 8 << 20)
        #expect(try Self.readAll(out) == content)
        // Through a pipe, as `volume export --output -` writes.
        let pipe = Pipe()
        let reader = Thread.detachNewThreadWithResult { pipe.fileHandleForReading.readDataToEndOfFile() }
        let w = File(adopting: dup(pipe.fileHandleForWriting.fileDescriptor), path: "<pipe>")
        try pipe.fileHandleForWriting.close()
        _ = try VolumeExporter.export(s, toStream: w)
        try w.close()
        #expect(Array(reader.wait()) == content)
    }

    @Test func failedExportLeavesNothing() throws {
        let dir = try Integration.scratchDirectory("export-fail")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let failing = FailingSource(size: 8 << 20, failAt: 4 << 20)
        #expect(throws: StorageError.self) { _ = try VolumeExporter.export(failing, toFile: dir + "/out.raw") }
        #expect(try FileSystem.list(dir).isEmpty, "no output, no temp file")
        #expect(throws: SystemError.self) { _ = try VolumeExporter.export(failing, toFile: dir + "/missing/out.raw") }
        #expect(try FileSystem.list(dir).isEmpty)
    }

    /// The prefetch hint: pages dropped from the page cache are read back in by it,
    /// and `File.isCached` (mincore) tells the two states apart.
    @Test func prefetchFillsThePageCache() throws {
        let dir = try Integration.scratchDirectory("prefetch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, _) = try Self.sparseFile(in: dir)
        let f = try File.openForReading(path)
        let at: UInt64 = 1 << 20
        var buf = [UInt8](repeating: 0, count: 4096)
        _ = try buf.withUnsafeMutableBytes { try f.read(into: $0, at: at) }
        #expect(f.isCached(at: at))
        // Clean pages go on DONTNEED (the file was fsynced when written).
        _ = posix_fadvise(f.fd, 0, 0, POSIX_FADV_DONTNEED)
        guard !f.isCached(at: at) else { try Test.cancel("this filesystem keeps pages cached after DONTNEED") }
        let s = try FileBlockSource(path: path, name: "test")
        defer { try? s.close() }
        s.prefetch(offset: at, length: 192 << 10)
        var cached = false
        for _ in 0..<200 where !cached { cached = f.isCached(at: at) && f.isCached(at: at + (192 << 10) - 1); usleep(5000) }
        #expect(cached, "prefetched range is in the page cache")
        // Past the end, or empty: nothing to do, no error.
        s.prefetch(offset: s.size, length: 4096)
        s.prefetch(offset: 0, length: 0)
    }

    @Test func zeroDetection() {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(VolumeExporter.isZero(UnsafeRawBufferPointer(buf)))
        #expect(VolumeExporter.isZero(UnsafeRawBufferPointer(rebasing: buf[3..<1000])), "unaligned")
        #expect(VolumeExporter.isZero(UnsafeRawBufferPointer(rebasing: buf[0..<0])))
        for i in [0, 7, 8, 1023, 1024, 4095, (64 << 10) - 1] {
            buf[i] = 1
            #expect(!VolumeExporter.isZero(UnsafeRawBufferPointer(buf)), "byte \(i)")
            #expect(!VolumeExporter.isZero(UnsafeRawBufferPointer(rebasing: buf[min(i, 1)...i])), "unaligned, byte \(i)")
            buf[i] = 0
        }
    }
}

/// A source whose reads fail past `failAt`.
final class FailingSource: BlockSource, @unchecked Sendable {
    // @unchecked: immutable.
    let size: UInt64
    let failAt: UInt64
    let name = "failing"
    init(size: UInt64, failAt: UInt64) { self.size = size; self.failAt = failAt }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if offset >= failAt { throw StorageError(.backend, "read of \(name) at \(offset) failed: injected") }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x11)
        return buffer.count
    }
    func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        [AllocationRange(offset: offset, length: min(length, size - offset), kind: .data)]
    }
    func close() throws {}
}

extension Thread {
    /// Runs `body` on a new thread; `wait()` returns its result.
    static func detachNewThreadWithResult<T: Sendable>(_ body: @escaping @Sendable () -> T) -> ThreadResult<T> {
        let r = ThreadResult<T>()
        Thread.detachNewThread {
            r.value = body()
            r.done.signal()
        }
        return r
    }
}

final class ThreadResult<T: Sendable>: @unchecked Sendable {
    // @unchecked: `value` is written before `done.signal()` and read after `done.wait()`.
    var value: T?
    let done = DispatchSemaphore(value: 0)
    func wait() -> T {
        done.wait()
        return value!
    }
}
