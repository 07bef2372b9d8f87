#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpSystem
import TestSupport
@testable import Storage

/// `FileVolumeWriter(directWrites:)` on a filesystem with O_DIRECT (the test
/// directory's ext4): aligned parts bypass the page cache (mincore shows
/// their pages not cached), unaligned heads and tails and misaligned buffers
/// go through it, and the file reads back byte for byte.
@Suite struct VolumeWriterTests {
    /// Which of the file's pages are in the page cache.
    private func cachedPages(_ path: String, size: Int) throws -> [Bool] {
        let f = try File.openForReading(path)
        guard let map = mmap(nil, size, PROT_READ, MAP_SHARED, f.fd, 0), map != MAP_FAILED else {
            throw SystemError("mmap", path)
        }
        defer { munmap(map, size) }
        let pages = (size + 4095) / 4096
        var vec = [UInt8](repeating: 0, count: pages)
        guard mincore(map, size, &vec) == 0 else { throw SystemError("mincore", path) }
        return vec.map { $0 & 1 != 0 }
    }

    @Test func alignedPartsBypassThePageCache() throws {
        let dir = try Integration.scratchDirectory("volume-writer")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/disk.raw"
        let size = 4 << 20
        let f = try File.open(path, O_RDWR | O_CREAT | O_EXCL)
        try f.truncate(to: UInt64(size))
        let w = FileVolumeWriter(file: f, name: "disk", directWrites: true)
        #expect(w.writesDirect)

        var expected = [UInt8](repeating: 0, count: size)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12) }
        func write(_ range: Range<Int>, at offset: Int) throws {
            let b = UnsafeRawBufferPointer(rebasing: buffer[range])
            try w.write(b, at: UInt64(offset))
            expected.replaceSubrange(offset..<offset + range.count, with: b)
        }
        // Whole aligned MiB at 1 MiB: direct.
        try write(0..<(1 << 20), at: 1 << 20)
        // 10000 bytes at 2 MiB + 100 from a buffer offset by 100 as well: head and tail
        // buffered, the one whole page between them direct.
        try write(100..<10_100, at: (2 << 20) + 100)
        // A buffer misaligned against its offset (page-aligned offset, buffer + 1): all buffered.
        try write(1..<(8192 + 1), at: 3 << 20)
        // The last, short page at the end of the file.
        try write(0..<1000, at: size - 1000)
        #expect(w.writesDirect)
        try w.sync()

        let cached = try cachedPages(path, size: size)
        let page = 4096
        #expect(cached[(1 << 20) / page..<(2 << 20) / page].allSatisfy { !$0 }, "direct pages are not cached")
        #expect(cached[(2 << 20) / page], "unaligned head went through the page cache")
        #expect(!cached[(2 << 20) / page + 1], "the whole page in the middle went direct")
        #expect(cached[(2 << 20) / page + 2], "unaligned tail went through the page cache")
        #expect(cached[(3 << 20) / page] && cached[(3 << 20) / page + 1], "a misaligned buffer went through the page cache")
        #expect(cached[size / page - 1])
        try w.close()
        #expect(try FileSystem.readBytes(path) == expected)
    }

    @Test func withoutDirectWritesEverythingIsBuffered() throws {
        let dir = try Integration.scratchDirectory("volume-writer")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/disk.raw"
        let f = try File.open(path, O_RDWR | O_CREAT | O_EXCL)
        try f.truncate(to: 1 << 20)
        let w = FileVolumeWriter(file: f, name: "disk")
        #expect(!w.writesDirect)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5A)
        try w.write(UnsafeRawBufferPointer(buffer), at: 0)
        try w.sync()
        #expect(try cachedPages(path, size: 1 << 20).allSatisfy { $0 })
        try w.close()
        #expect(try FileSystem.readBytes(path) == [UInt8](repeating: 0x5A, count: 1 << 20))
    }
}
