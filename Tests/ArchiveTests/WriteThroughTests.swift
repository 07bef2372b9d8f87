import Foundation
import Testing
import SnapdumpSystem
import TestSupport
@testable import Archive

/// Restore's write path: `DirectFile` (O_DIRECT where it can) and the digest
/// assembler writing each hashed chunk's stored blocks in runs.
@Suite("Write-through: chunks written in runs, past the page cache")
struct WriteThroughTests {
    /// Two chunks, three clusters and a partial block: the device ends
    /// neither on a cluster nor on a 4 KiB block.
    static let size = 2 * DeviceDigest.chunkSize + 3 * VMAFormat.clusterSize + 1536

    /// Random blocks with holes: zero blocks inside stored clusters, whole
    /// zero clusters between stored ones (cluster 6 between 5 and 7), and a
    /// whole zero chunk-sized stretch (chunk 1 is zero but for cluster 70).
    static let content: [UInt8] = {
        var rng = SeededRandom(15)
        var b = [UInt8](repeating: 0, count: size)
        let blocks = (size + 4095) / 4096
        for blk in 0..<blocks {
            let cluster = blk / 16
            if cluster == 6 || (cluster >= 64 && cluster < 128 && cluster != 70) { continue }
            if cluster == 9 && blk % 16 >= 3 && blk % 16 < 7 { continue }   // a hole inside a stored cluster
            if cluster == 11 && blk % 2 == 0 { continue }
            let start = blk * 4096, end = min(start + 4096, size)
            for i in start..<end { b[i] = UInt8.random(in: 1...255, using: &rng) }
        }
        return b
    }()

    /// The VMA mask and packed stored blocks of cluster `c` of `content`.
    static func stored(_ c: Int) -> (mask: UInt16, blocks: [UInt8]) {
        var mask: UInt16 = 0
        var blocks: [UInt8] = []
        for j in 0..<16 {
            let start = c * 65536 + j * 4096
            guard start < size else { break }
            let end = min(start + 4096, size)
            let block = content[start..<end]
            guard block.contains(where: { $0 != 0 }) else { continue }
            mask |= 1 << j
            blocks += block
            blocks += [UInt8](repeating: 0, count: 4096 - block.count)
        }
        return (mask, blocks)
    }

    static var storedBytes: UInt64 {
        var n: UInt64 = 0
        for blk in stride(from: 0, to: size, by: 4096) where content[blk..<min(blk + 4096, size)].contains(where: { $0 != 0 }) {
            n += UInt64(min(4096, size - blk))
        }
        return n
    }

    /// Feeds every cluster in `order`, the assembler writing through to `path`.
    func restore(order: [Int], into path: String, maxBuffers: Int, target: Bool, spill: String,
                 direct: Bool = true) throws -> (digest: SHA256Digest?, written: UInt64, deferred: Int, isDirect: Bool) {
        let device = VMADevice(id: 2, name: "drive-scsi0", size: UInt64(Self.size))
        let f = try File.createNew(path, readable: true)
        try f.truncate(to: UInt64(Self.size))
        let writer = DirectFile(file: f, direct: direct)
        let acc = DigestAssembler(devices: [device], targets: target ? [2: f] : [:], writers: [2: writer],
                                  maxBuffers: maxBuffers, spillDirectory: spill)
        for c in order {
            let (mask, blocks) = Self.stored(c)
            try blocks.withUnsafeBytes { try acc.add(device: 2, cluster: UInt32(c), mask: mask, blocks: $0) }
        }
        let digest = try acc.finish()[2]
        let isDirect = writer.isDirect
        try writer.closeDirect()
        try f.sync()
        try f.close()
        return (digest, acc.bytesWritten, acc.deferredChunks, isDirect)
    }

    /// Offsets of `path` that are holes, probed per 64 KiB cluster with SEEK_DATA.
    func holeClusters(_ path: String) throws -> Set<Int> {
        let f = try File.open(path, O_RDONLY)
        var holes: Set<Int> = []
        for c in 0..<((Self.size + 65535) / 65536) {
            let off = UInt64(c * 65536)
            if let data = try f.nextData(from: off), data < off + 65536 { continue }
            holes.insert(c)
        }
        return holes
    }

    @Test("in order, shuffled with chunks deferred to the target, and spilled: the file equals the device, holes stay holes",
          arguments: [("/tmp", true), ("/dev/shm", true), ("/tmp", false)])
    func writesDevice(base: String, direct: Bool) throws {
        let s = try Scratch("writethrough")
        let dir = try Integration.scratchDirectory("writethrough", under: base)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let expected = Self.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }
        let clusters = (Self.size + 65535) / 65536
        var rng = SeededRandom(7)
        let shuffled = Array(0..<clusters).shuffled(using: &rng)
        for (name, order, maxBuffers, target) in [("ordered", Array(0..<clusters), 8, true),
                                                  ("deferred", shuffled, 1, true),
                                                  ("spilled", shuffled, 1, false)] {
            let path = dir + "/" + name + ".raw"
            let r = try restore(order: order, into: path, maxBuffers: maxBuffers, target: target, spill: s.dir, direct: direct)
            #expect(r.digest == expected, "\(name)")
            #expect(try readFile(path) == Self.content, "\(name): written bytes differ from the device")
            #expect(r.written == Self.storedBytes, "\(name)")
            if name != "ordered" { #expect(r.deferred > 0, "\(name): the shuffled order defers chunks with one buffer") }
            if direct && takesDirectIO(dir) { #expect(r.isDirect, "\(name): aligned runs went past the page cache") }
            if !direct { #expect(!r.isDirect) }
            // Nothing written for zero clusters: the zero cluster between two stored ones, the zero stretch.
            let holes = try holeClusters(path)
            #expect(holes.contains(6) && holes.contains(64) && holes.contains(127) && !holes.contains(70) && !holes.contains(5) && !holes.contains(7),
                    "\(name): holes \(holes.sorted().prefix(8))")
        }
    }

    @Test("DirectFile: aligned writes go direct, unaligned ones and the tail buffered; same bytes either way")
    func directFile() throws {
        for base in ["/tmp", "/dev/shm"] {
            let dir = try Integration.scratchDirectory("directfile", under: base)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let f = try File.createNew(dir + "/f", readable: true)
            let d = DirectFile(file: f)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 5 * 4096, alignment: 4096)
            defer { buf.deallocate() }
            for i in 0..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i &* 13 &+ 1) }
            var expected: [UInt8] = []
            func put(_ range: Range<Int>, at offset: Int) throws {
                try d.write(UnsafeRawBufferPointer(rebasing: buf[range]), at: UInt64(offset))
                if expected.count < offset + range.count { expected += [UInt8](repeating: 0, count: offset + range.count - expected.count) }
                expected.replaceSubrange(offset..<offset + range.count, with: buf[range])
            }
            try put(0..<(2 * 4096 + 100), at: 8192)        // two blocks direct, a 100-byte tail buffered
            try put(1..<4097, at: 0)                        // unaligned memory: buffered
            try put(0..<4096, at: 30_000)                   // unaligned offset: buffered
            try put(0..<512, at: 20_480)                    // shorter than a block: buffered
            if takesDirectIO(dir) { #expect(d.isDirect) }
            try d.closeDirect()
            try f.sync()
            try f.close()
            #expect(try readFile(dir + "/f") == expected, "\(base)")
        }
    }

    final class FailingWriter: DeviceWriter, @unchecked Sendable {
        let name = "vol-under-test"
        var allowsConcurrentWrites: Bool { true }
        func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
            if offset >= UInt64(DeviceDigest.chunkSize) { throw SystemError("write at offset \(offset) of", name, errno: EIO) }
        }
    }

    @Test("a write error of a worker fails the assembly with the target's name and the offset")
    func writeError() throws {
        let device = VMADevice(id: 1, name: "drive-scsi0", size: UInt64(Self.size))
        let acc = DigestAssembler(devices: [device], writers: [1: FailingWriter()])
        let e = try #require(throwing(ArchiveError.self) {
            for c in 0..<((Self.size + 65535) / 65536) {
                let (mask, blocks) = Self.stored(c)
                try blocks.withUnsafeBytes { try acc.add(device: 1, cluster: UInt32(c), mask: mask, blocks: $0) }
            }
            _ = try acc.finish()
        })
        #expect(e.code == .io)
        #expect("\(e)".contains("vol-under-test") && "\(e)".contains("at offset "), "\(e)")
    }

    @Test("DirectFile.submit: many writes in flight from several threads, each done once; same bytes as written one by one")
    func submitInFlight() throws {
        for base in ["/tmp", "/dev/shm"] {
            let dir = try Integration.scratchDirectory("directsubmit", under: base)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let f = try File.createNew(dir + "/f", readable: true)
            let d = DirectFile(file: f)
            // 48 pieces of 64 KiB + 100 bytes each (whole blocks async, the tail through the page cache), every
            // other one a block apart so the file has holes; from 4 threads at once.
            let pieces = 48, piece = 65536 + 100, stride = 2 * 65536 + 4096
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: pieces * 69632, alignment: 4096)
            defer { buf.deallocate() }
            var rng = SeededRandom(21)
            for i in 0..<buf.count { buf[i] = UInt8.random(in: 1...255, using: &rng) }
            var expected = [UInt8](repeating: 0, count: (pieces - 1) * stride + piece)
            for i in 0..<pieces {
                expected.replaceSubrange(i * stride..<i * stride + piece, with: buf[(i * 69632)..<(i * 69632 + piece)])
            }
            let calls = Calls()
            // A Sendable stand-in for the buffer, which outlives every write.
            let srcBase = UInt(bitPattern: buf.baseAddress!), srcCount = buf.count
            DispatchQueue.concurrentPerform(iterations: 4) { t in
                let src = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: srcBase), count: srcCount)
                for i in Swift.stride(from: t, to: pieces, by: 4) {
                    d.submit(UnsafeRawBufferPointer(rebasing: src[(i * 69632)..<(i * 69632 + piece)]), at: UInt64(i * stride)) { error in
                        calls.done(i, error)
                    }
                }
            }
            // closeDirect waits for the writes in flight.
            try d.closeDirect()
            #expect(calls.counts == Array(repeating: 1, count: pieces), "\(base): each write completed once")
            #expect(calls.errors.isEmpty, "\(base): \(calls.errors)")
            try f.sync()
            try f.close()
            #expect(try readFile(dir + "/f") == expected, "\(base)")
        }
    }

    @Test("DirectFile.closeDirect returns after the last completion has run, not during it; the AIO contexts freed after it (on the reaper) are all freed")
    func closeAfterCompletions() throws {
        let dir = try Integration.scratchDirectory("directclose", under: "/tmp")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
        defer { buf.deallocate() }
        for i in 0..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
        func aioEvents() throws -> Int { Int(try String(contentsOfFile: "/proc/sys/fs/aio-nr", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))! }
        let before = try aioEvents()
        var perContext = 0
        let rounds = 40
        for round in 0..<rounds {
            let f = try File.createNew(dir + "/f\(round)", readable: true)
            let d = DirectFile(file: f)
            #expect(d.isDirect, "/tmp takes O_DIRECT")
            let calls = Calls()
            // The last completion is slow: closeDirect must still wait for it.
            for i in 0..<4 {
                d.submit(UnsafeRawBufferPointer(buf), at: UInt64(i) * 65536) { error in
                    if i == 3 { Thread.sleep(forTimeInterval: round == 0 ? 0.2 : 0.005) }
                    calls.done(i, error)
                }
            }
            if round == 0 { perContext = try aioEvents() - before }
            try d.closeDirect()
            #expect(Array(calls.counts.prefix(4)) == [1, 1, 1, 1], "round \(round): every completion ran before closeDirect returned")
            #expect(calls.errors.isEmpty)
            try f.close()
        }
        // Each context is freed by its reaper after closeDirect returned: soon, and all of them
        // (other processes on the machine may hold a few contexts of their own meanwhile).
        #expect(perContext > 0, "a context was set up (aio-nr \(before) → +\(perContext))")
        var after = try aioEvents()
        for _ in 0..<100 where after - before >= 10 * perContext {
            Thread.sleep(forTimeInterval: 0.05)
            after = try aioEvents()
        }
        #expect(after - before < 10 * perContext, "\(rounds) contexts set up, aio-nr \(before) → \(after): contexts leaked")
    }

    final class Calls: @unchecked Sendable {
        private let lock = NSLock()
        private var c = [Int](repeating: 0, count: 48)
        private var e: [String] = []
        func done(_ i: Int, _ error: (any Error)?) {
            lock.withLock {
                c[i] += 1
                if let error { e.append("\(error)") }
            }
        }
        var counts: [Int] { lock.withLock { c } }
        var errors: [String] { lock.withLock { e } }
    }

    /// Completes every write later, on another thread, in a shuffled order —
    /// as AIO under load does — keeping what it was given in memory; fails
    /// the writes at and past `failFrom`.
    final class LateWriter: DeviceWriter, @unchecked Sendable {
        let name = "late-vol"
        var allowsConcurrentWrites: Bool { true }
        let failFrom: UInt64
        private let lock = NSLock()
        private var bytes: [UInt8]
        init(size: Int, failFrom: UInt64 = .max) {
            bytes = [UInt8](repeating: 0, count: size)
            self.failFrom = failFrom
        }
        var content: [UInt8] { lock.withLock { bytes } }
        func write(_ b: UnsafeRawBufferPointer, at offset: UInt64) throws {
            lock.withLock { bytes.replaceSubrange(Int(offset)..<Int(offset) + b.count, with: b) }
        }
        func submit(_ b: UnsafeRawBufferPointer, at offset: UInt64, done: @escaping @Sendable ((any Error)?) -> Void) {
            // The bytes are read only at completion: a buffer reused before then would show.
            let base = UInt(bitPattern: b.baseAddress!), count = b.count
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int.random(in: 1...20))) { [self] in
                let view = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: count)
                if offset >= failFrom { return done(SystemError("write at offset \(offset) of", name, errno: EIO)) }
                try? write(view, at: offset)
                done(nil)
            }
        }
    }

    @Test("writes completing late and out of order on other threads: the digest and the bytes still match; a late error fails the assembly")
    func lateCompletions() throws {
        let device = VMADevice(id: 1, name: "drive-scsi0", size: UInt64(Self.size))
        let expected = Self.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }
        for maxBuffers in [2, 8] {
            let w = LateWriter(size: Self.size)
            let acc = DigestAssembler(devices: [device], writers: [1: w], maxBuffers: maxBuffers)
            for c in 0..<((Self.size + 65535) / 65536) {
                let (mask, blocks) = Self.stored(c)
                try blocks.withUnsafeBytes { try acc.add(device: 1, cluster: UInt32(c), mask: mask, blocks: $0) }
            }
            // finish waits for every write: the content is complete when it returns.
            #expect(try acc.finish()[1] == expected)
            #expect(w.content == Self.content, "maxBuffers \(maxBuffers)")
            #expect(acc.bytesWritten == Self.storedBytes)
        }
        let w = LateWriter(size: Self.size, failFrom: UInt64(DeviceDigest.chunkSize))
        let acc = DigestAssembler(devices: [device], writers: [1: w])
        let e = try #require(throwing(ArchiveError.self) {
            for c in 0..<((Self.size + 65535) / 65536) {
                let (mask, blocks) = Self.stored(c)
                try blocks.withUnsafeBytes { try acc.add(device: 1, cluster: UInt32(c), mask: mask, blocks: $0) }
            }
            _ = try acc.finish()
        })
        #expect(e.code == .io)
        #expect("\(e)".contains("late-vol") && "\(e)".contains("at offset "), "\(e)")
    }
}
