import Foundation
import Testing
import SnapdumpSystem
import CShims
import CZstd
@testable import Archive

/// zstd archives as independent frames (issue 15): written every 16 MiB of
/// stream, read back frame by frame on several threads; single-frame
/// archives (Proxmox, older snapdump) streamed beside the reader.
@Suite("Multi-frame zstd archives and parallel decompression")
struct MultiFrameTests {
    /// A 72 MiB device of compressible, non-repeating data (words from a
    /// seeded generator, low entropy), a few holes: five 16 MiB frames.
    static func bigDevice() -> TestDevice {
        let size = 72 << 20
        var rng = SeededRandom(15)
        var content = [UInt8](repeating: 0, count: size)
        content.withUnsafeMutableBytes { b in
            let words = b.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = rng.next() & 0x0F0F_0F0F_0F0F_0F0F }
        }
        var holes = Set<UInt32>()
        for c in stride(from: UInt32(7), to: UInt32(size / VMAFormat.clusterSize), by: 97) {
            holes.insert(c)
            let start = Int(c) * VMAFormat.clusterSize
            content.replaceSubrange(start..<start + VMAFormat.clusterSize, with: repeatElement(0, count: VMAFormat.clusterSize))
        }
        return TestDevice(device: VMADevice(id: 1, name: "drive-scsi0", size: UInt64(size)), content: content, holes: holes)
    }

    static func write(_ path: String, _ device: TestDevice, _ compression: Compression) throws {
        let clusters = UInt32(device.device.size / UInt64(VMAFormat.clusterSize))
        try writeArchive(path: path, uuid: UUID(uuidString: "0D8E4E7A-3F5B-4C53-9E3B-2B7D5C1A9F15")!, devices: [device],
                         configs: [VMAConfigBlob(name: "qemu-server.conf", data: Array("memory: 512\n".utf8))],
                         order: (0..<clusters).map { (1, $0) }, compression: compression)
    }

    static func frameCount(_ path: String) throws -> Int {
        let text = try Command.run(["zstd", "-lv", path])
        let line = try #require(text.split(separator: "\n").first { $0.contains("# Zstandard Frames") })
        return try #require(Int(line.split(separator: " ").last!))
    }

    @Test("a big stream is written as several frames: zstd -t passes, zstd -d gives the VMA stream, restore reads it on two threads")
    func multiFrameRoundTrip() throws {
        let s = try Scratch("multiframe")
        let dev = Self.bigDevice()
        try Self.write(s.path("a.vma.zst"), dev, .zstd(level: 3, workers: 2))
        try Self.write(s.path("a.vma"), dev, .none)

        try Command.run(["zstd", "-t", "-q", s.path("a.vma.zst")])
        // The raw header frame, then a frame per 16 MiB of extents (72 MiB of data: 5).
        let header = try VMAReader(path: s.path("a.vma")).headerSize
        let extents = try readFile(s.path("a.vma")).count - header
        #expect(try Self.frameCount(s.path("a.vma.zst")) == 1 + (extents + ZstdOutput.defaultFrameSize - 1) / ZstdOutput.defaultFrameSize)
        #expect(try Self.frameCount(s.path("a.vma.zst")) == 6)
        #expect(try systemDecompress(s.path("a.vma.zst"), .zstd) == readFile(s.path("a.vma")))

        let r = try VMAExtractor.extract(archive: s.path("a.vma.zst"), to: s.path("out"))
        #expect(r.metadataChecked)
        #expect(try readFile(r.devices[0].path) == dev.content)
    }

    @Test("the frame size costs less than 1 % of compression against one frame")
    func ratioLoss() throws {
        let s = try Scratch("ratio")
        try Self.write(s.path("a.vma.zst"), Self.bigDevice(), .zstd(level: 3, workers: 0))
        try Command.run(["/bin/sh", "-c", "zstd -q -d -c '\(s.path("a.vma.zst"))' | zstd -q -3 -T1 -o '\(s.path("one.zst"))'"])
        #expect(try Self.frameCount(s.path("one.zst")) == 1)
        let multi = Double(try readFile(s.path("a.vma.zst")).count), single = Double(try readFile(s.path("one.zst")).count)
        #expect(multi / single < 1.01, "multi-frame \(multi) bytes, one frame \(single) bytes")
    }

    /// Reads the whole stream of `path` through a decoder with `limits`.
    static func decodeAll(_ path: String, limits: ParallelZstdDecoder.Limits, workers: Int = 2,
                          chunk: Int = 1_000_003) throws(ArchiveError) -> [UInt8] {
        let file: File
        do { file = try File.open(path, O_RDONLY) } catch { throw ArchiveError(.io, path: path, "open") }
        let r = try DecompressingReader(file: file, zstdLimits: limits)
        var out: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try r.read(into: buffer)
            if n == 0 { break }
            out += buffer[0..<n]
        }
        return out
    }

    /// Limits that make a frame of more than 1 MiB a "big" frame, streamed by the splitter.
    static let tiny = ParallelZstdDecoder.Limits(maxFrameOutput: 1 << 20, maxFrameInput: 1 << 20, readSize: 64 << 10, streamPieceSize: 256 << 10)

    @Test("a single-frame archive (Proxmox, older snapdump) reads the same, streamed or in one piece, 1 to 3 workers")
    func singleFrame() throws {
        let s = try Scratch("oneframe")
        let dev = Self.bigDevice()
        try Self.write(s.path("a.vma"), dev, .none)
        try Command.run(["zstd", "-q", "-3", "-T2", s.path("a.vma"), "-o", s.path("one.vma.zst")])
        #expect(try Self.frameCount(s.path("one.vma.zst")) == 1)
        let expected = try readFile(s.path("a.vma"))
        #expect(try Self.decodeAll(s.path("one.vma.zst"), limits: .standard) == expected)
        for workers in 1...3 {
            #expect(try Self.decodeAll(s.path("one.vma.zst"), limits: Self.tiny, workers: workers) == expected)
        }
        // Proxmox-style archive end to end: extracted with digests checked.
        let r = try VMAExtractor.extract(archive: s.path("one.vma.zst"), to: s.path("out"))
        #expect(r.metadataChecked)
        #expect(try readFile(r.devices[0].path) == dev.content)
    }

    @Test("many small frames mixed with frames too big for one piece, and skippable frames, read in order")
    func mixedFrames() throws {
        let s = try Scratch("mixed")
        var rng = SeededRandom(3)
        var expected: [UInt8] = []
        var file: [UInt8] = []
        for i in 0..<40 {
            // Sizes from 1 byte to 3 MiB: frames below and above the tiny 1 MiB limit.
            let size = i % 7 == 3 ? 3 << 20 : Int(rng.next() % 300_000) + 1
            let piece = (0..<size).map { UInt8(truncatingIfNeeded: ($0 * 31 + i) >> ($0 % 5)) }
            try writeFile(s.path("p"), piece)
            try Command.run(["zstd", "-q", "-f", "-1", s.path("p"), "-o", s.path("p.zst")])
            file += try readFile(s.path("p.zst"))
            expected += piece
            if i % 9 == 4 {
                // A skippable frame (magic 0x184D2A50, 4-byte size): no output.
                file += [0x50, 0x2A, 0x4D, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5]
            }
        }
        try writeFile(s.path("mixed.zst"), file)
        #expect(try Self.decodeAll(s.path("mixed.zst"), limits: .standard, chunk: 65536) == expected)
        #expect(try Self.decodeAll(s.path("mixed.zst"), limits: Self.tiny, chunk: 65536) == expected)
        #expect(try Self.decodeAll(s.path("mixed.zst"), limits: Self.tiny, workers: 1, chunk: 7) == Array(expected))
    }

    /// File offsets of the frames of a zstd file, walked by the format
    /// (RFC 8878 §3.1.1: frame header, block headers, optional checksum),
    /// independently of libzstd.
    static func frameOffsets(_ b: [UInt8]) -> [Int] {
        var offsets: [Int] = []
        var pos = 0
        while pos < b.count {
            offsets.append(pos)
            let fhd = b[pos + 4]
            let fcsFlag = Int(fhd >> 6), single = Int(fhd >> 5 & 1), checksum = fhd >> 2 & 1, dictFlag = Int(fhd & 3)
            var p = pos + 5 + (single == 1 ? 0 : 1) + [0, 1, 2, 4][dictFlag] + [single, 2, 4, 8][fcsFlag]
            while true {
                let h = Int(b[p]) | Int(b[p + 1]) << 8 | Int(b[p + 2]) << 16
                let type = h >> 1 & 3, size = h >> 3
                p += 3 + (type == 1 ? 1 : size)
                if h & 1 == 1 { break }
            }
            pos = p + (checksum == 1 ? 4 : 0)
        }
        return offsets
    }

    @Test("a truncated or corrupt frame fails with the archive, the frame's file offset and the stream offset",
          arguments: [false, true])
    func damagedFrames(streamed: Bool) throws {
        let s = try Scratch("damaged")
        let dev = Self.bigDevice()
        try Self.write(s.path("a.vma.zst"), dev, .zstd(level: 3, workers: 0))
        let good = try readFile(s.path("a.vma.zst"))
        let frames = Self.frameOffsets(good)
        try #require(frames.count >= 4)
        let limits = streamed ? ParallelZstdDecoder.Limits(maxFrameOutput: 8 << 20, maxFrameInput: 4 << 20, readSize: 1 << 20, streamPieceSize: 2 << 20) : .standard

        // Cut inside the third frame.
        let cut = frames[2] + (frames[3] - frames[2]) / 2
        try writeFile(s.path("cut.vma.zst"), Array(good[0..<cut]))
        let e1 = try #require(throws: ArchiveError.self) { _ = try Self.decodeAll(s.path("cut.vma.zst"), limits: limits) }
        #expect(e1.code == .truncated)
        #expect(e1.description.contains(s.path("cut.vma.zst")))
        #expect(e1.description.contains("zstd frame at file offset \(frames[2])"), "\(e1)")
        // Everything before that frame was delivered: the error is at or past its start in the stream.
        #expect(try #require(e1.offset) >= UInt64(8 << 20))

        // A flipped byte inside the second frame: checksum or corruption error naming that frame.
        var bad = good
        bad[frames[1] + (frames[2] - frames[1]) / 2] ^= 0x5A
        try writeFile(s.path("bad.vma.zst"), bad)
        let e2 = try #require(throws: ArchiveError.self) { _ = try Self.decodeAll(s.path("bad.vma.zst"), limits: limits) }
        #expect(e2.code == .compression)
        #expect(e2.description.contains(s.path("bad.vma.zst")))
        #expect(e2.description.contains("zstd frame at file offset \(frames[1])"), "\(e2)")
        #expect(e2.offset != nil)

        // Garbage after the last frame: not a frame.
        try writeFile(s.path("tail.vma.zst"), good + [1, 2, 3, 4, 5, 6, 7, 8])
        let e3 = try #require(throws: ArchiveError.self) { _ = try Self.decodeAll(s.path("tail.vma.zst"), limits: limits) }
        #expect(e3.description.contains("zstd frame at file offset \(good.count)"), "\(e3)")

        // And through the VMA reader: the archive is refused, nothing half-accepted.
        let e4 = try #require(throws: ArchiveError.self) { try VMAReader(path: s.path("bad.vma.zst")).verify() }
        #expect(e4.description.contains("bad.vma.zst"))
    }

    static func rssFileKiB() throws -> Int {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("RssFile:") })
        return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
    }

    @Test("a mapped archive reads the same as one read with pread, frames to stream included, and is not kept mapped: RSS holds the frames in flight, not the archive")
    func mappedArchive() throws {
        let s = try Scratch("mapped")
        var unmapped = Self.tiny
        unmapped.mapArchive = false
        // Small frames then frames too big for one piece: the mapped splitter hands over to the buffered one.
        var file: [UInt8] = [], expected: [UInt8] = []
        for i in 0..<12 {
            let size = i >= 8 ? 3 << 20 : 200_000 + i
            let piece = (0..<size).map { UInt8(truncatingIfNeeded: ($0 * 7 + i) >> ($0 % 3)) }
            try writeFile(s.path("p"), piece)
            try Command.run(["zstd", "-q", "-f", "-1", s.path("p"), "-o", s.path("p.zst")])
            file += try readFile(s.path("p.zst"))
            expected += piece
        }
        try writeFile(s.path("mixed.zst"), file)
        #expect(try Self.decodeAll(s.path("mixed.zst"), limits: Self.tiny, chunk: 65536) == expected)
        #expect(try Self.decodeAll(s.path("mixed.zst"), limits: unmapped, chunk: 65536) == expected)
        // An archive shorter than the frame-finding window (one small frame).
        try writeFile(s.path("small.zst"), Array(file[0..<Self.frameOffsets(file)[1]]))
        #expect(try Self.decodeAll(s.path("small.zst"), limits: .standard) == Array(expected[0..<200_000]))

        // Five frames: once every frame is decoded, none of the mapped archive is in this process's RSS.
        try Self.write(s.path("a.vma.zst"), Self.bigDevice(), .zstd(level: 1, workers: 0))
        let size = try readFile(s.path("a.vma.zst")).count
        let before = try Self.rssFileKiB()
        let r = try DecompressingReader(path: s.path("a.vma.zst"))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while try r.read(into: buffer) > 0 {}
        let grown = try Self.rssFileKiB() - before
        #expect(grown * 1024 < size / 4, "RssFile grew by \(grown) KiB reading a \(size)-byte archive")
    }

    @Test("an archive cut short while it is mapped is an I/O error naming it, not a SIGBUS that kills the restore")
    func mappedArchiveCutShortWhileRead() throws {
        let s = try Scratch("mapcut")
        // 60 frames of 100 kB: the reader holds only a few in flight, so most are touched after the cut.
        var file: [UInt8] = []
        var frame = [UInt8](repeating: 0, count: ZSTD_compressBound(100_000))
        for i in 0..<60 {
            let piece = (0..<100_000).map { UInt8(truncatingIfNeeded: ($0 * 13 + i) >> ($0 % 5)) }
            let n = ZSTD_compress(&frame, frame.count, piece, piece.count, 1)
            try #require(ZSTD_isError(n) == 0)
            file += frame[0..<n]
        }
        let path = s.path("cut.vma.zst")
        try writeFile(path, file)
        let r = try DecompressingReader(file: try File.open(path, O_RDONLY), zstdLimits: .standard)
        // At a page boundary: the pages after it are gone (a cut inside a page would leave zeros to decode).
        #expect(truncate(path, file.count / 10 / 4096 * 4096) == 0)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var read = 0
        let error = #expect(throws: ArchiveError.self) {
            while true {
                let n = try r.read(into: buffer)
                if n == 0 { break }
                read += n
            }
        }
        #expect(error?.code == .io)
        #expect(error?.description.contains("cut.vma.zst") == true)
        #expect(error?.description.contains("SIGBUS") == true)
        #expect(read < 60 * 100_000)

        // The guard itself, on a page past the end of a file: the call returns, the thread lives on.
        try writeFile(s.path("page"), [UInt8](repeating: 7, count: 8192))
        let fd = open(s.path("page"), O_RDONLY)
        defer { close(fd) }
        let map = try #require(mmap(nil, 8192, PROT_READ, MAP_SHARED, fd, 0))
        defer { munmap(map, 8192) }
        #expect(truncate(s.path("page"), 0) == 0)
        var bound: UInt64 = 0, bus: Int32 = 0
        _ = snapdump_zstd_find_frame_mapped(map, 8192, &bound, &bus)
        #expect(bus == 1)
    }

    @Test("a reader dropped in the middle stops its threads and frees its buffers")
    func abandonedReader() throws {
        let s = try Scratch("abandon")
        try Self.write(s.path("a.vma.zst"), Self.bigDevice(), .zstd(level: 1, workers: 0))
        for _ in 0..<20 {
            let r = try DecompressingReader(path: s.path("a.vma.zst"))
            var b = [UInt8](repeating: 0, count: 5 << 20)
            _ = try b.withUnsafeMutableBytes { try r.read(into: $0) }
        }
        // Threads gone: the process has no more than a few threads left over from libdispatch and the test runner.
        let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count
        #expect(threads < 40)
    }
}
