import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

@Suite("Device content digest")
struct DigestTests {
    /// 2 full chunks (the second all zero) and a short one, not a multiple of 4 KiB.
    static let device: [UInt8] = {
        let size = 2 * DeviceDigest.chunkSize + 12345
        var b = [UInt8](repeating: 0, count: size)
        var rng = SeededRandom(99)
        for i in 0..<DeviceDigest.chunkSize { b[i] = UInt8(truncatingIfNeeded: rng.next()) }
        for i in (2 * DeviceDigest.chunkSize)..<size { b[i] = UInt8(truncatingIfNeeded: i * 31) }
        return b
    }()

    @Test("known answer: sha256sum of each chunk, then of the digest list")
    func knownAnswer() throws {
        let s = try Scratch("digest")
        let dev = Self.device
        var list: [UInt8] = []
        for (i, start) in stride(from: 0, to: dev.count, by: DeviceDigest.chunkSize).enumerated() {
            let p = s.path("chunk\(i)")
            try writeFile(p, Array(dev[start..<min(start + DeviceDigest.chunkSize, dev.count)]))
            let hex = String(try Command.run(["sha256sum", p]).prefix(64))
            list += Hex.decode(hex)!
        }
        try writeFile(s.path("list"), list)
        let expected = String(try Command.run(["sha256sum", s.path("list")]).prefix(64))
        #expect(dev.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }.hex == expected)
    }

    @Test("the precomputed zero-chunk digest is the real hash of 4 MiB of zeros")
    func zeroChunk() {
        let zeros = [UInt8](repeating: 0, count: DeviceDigest.chunkSize)
        #expect(SHA256.digest(zeros) == DeviceDigest.zeroChunkDigest)
        #expect(zeros.withUnsafeBytes { DeviceDigest.digest(of: $0) } == DeviceDigest.zeroChunkDigest)
        // A short all-zero chunk is hashed for real.
        let short = [UInt8](repeating: 0, count: 4096)
        #expect(short.withUnsafeBytes { DeviceDigest.digest(of: $0) } == SHA256.digest(short))
    }

    @Test("chunk digests recorded from several threads in any order give the same digest")
    func parallel() throws {
        let dev = Self.device
        let digest = DeviceDigest(deviceSize: UInt64(dev.count))
        #expect(digest.chunkCount == 3)
        dev.withUnsafeBytes { b in
            let base = UInt(bitPattern: b.baseAddress!)   // Sendable stand-in for the pointer
            let count = b.count
            DispatchQueue.concurrentPerform(iterations: digest.chunkCount) { j in
                let i = digest.chunkCount - 1 - j
                let whole = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: count)
                let start = i * DeviceDigest.chunkSize
                digest.record(chunk: i, digest: DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: whole[start..<start + digest.chunkLength(i)])))
            }
        }
        #expect(digest.missingChunks == 0)
        #expect(digest.finalDigest() == dev.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
    }

    @Test("the digest assembler matches in any order: in memory, spilled, and read back from a target")
    func assembler() throws {
        let dev = Self.device
        let expected = dev.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }
        let device = VMADevice(id: 3, name: "drive-scsi0", size: UInt64(dev.count))
        let clusters = Int(VMAFormat.clusterCount(deviceSize: UInt64(dev.count)))
        var cluster = [UInt8](repeating: 0, count: 65536)
        func feed(_ acc: DigestAssembler, _ order: [Int], writeTo target: File? = nil) throws {
            for c in order {
                let start = c * 65536, end = min(start + 65536, dev.count)
                cluster.replaceSubrange(0..<(end - start), with: dev[start..<end])
                if end - start < 65536 { cluster.replaceSubrange((end - start)..., with: repeatElement(0x55, count: 65536 - (end - start))) }
                if dev[start..<end].allSatisfy({ $0 == 0 }) {
                    try acc.add(device: 3, cluster: UInt32(c), mask: 0, blocks: UnsafeRawBufferPointer(start: nil, count: 0))
                } else {
                    try cluster.withUnsafeBytes { try acc.add(device: 3, cluster: UInt32(c), data: $0) }
                    if let target { try Array(dev[start..<end]).withUnsafeBytes { try target.write($0, at: UInt64(start)) } }
                }
            }
        }
        let inOrder = DigestAssembler(devices: [device], maxBuffers: 1)
        try feed(inOrder, Array(0..<clusters))
        #expect(try inOrder.finish()[3] == expected)
        #expect(inOrder.deferredChunks == 0)

        var rng = SeededRandom(5)
        let shuffledOrder = Array(0..<clusters).shuffled(using: &rng)
        let shuffled = DigestAssembler(devices: [device], maxBuffers: 3)
        try feed(shuffled, shuffledOrder)
        #expect(try shuffled.finish()[3] == expected)
        #expect(shuffled.deferredChunks == 0)

        // One buffer for three interleaved chunks: chunks are spilled, the digest is the same.
        let s = try Scratch("assembler")
        let spilled = DigestAssembler(devices: [device], maxBuffers: 1, spillDirectory: s.dir)
        try feed(spilled, shuffledOrder)
        #expect(spilled.deferredChunks > 0)
        #expect(try spilled.finish()[3] == expected)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.dir).isEmpty, "the spill file is never visible")

        // With a target, deferred chunks are hashed from what was written there.
        let target = try File.open(s.path("target"), O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
        try target.truncate(to: UInt64(dev.count))
        let readBack = DigestAssembler(devices: [device], targets: [3: target], maxBuffers: 1)
        try feed(readBack, shuffledOrder, writeTo: target)
        #expect(readBack.deferredChunks > 0)
        #expect(try readBack.finish()[3] == expected)
        // A target that does not hold what was delivered gives another digest.
        let bad = try File.open(s.path("bad"), O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
        try bad.truncate(to: UInt64(dev.count))
        let wrong = DigestAssembler(devices: [device], targets: [3: bad], maxBuffers: 1)
        try feed(wrong, shuffledOrder)
        #expect(try wrong.finish()[3] != expected)

        let incomplete = DigestAssembler(devices: [device], maxBuffers: 1)
        try feed(incomplete, [0, 64])
        #expect(try incomplete.finish()[3] == nil)
    }

    /// Two strings sharing a prefix, hashed once (a copy of the hasher
    /// finishes each): the same digests as hashed apart, wherever the first
    /// difference is (block-aligned or not, at the start, at the very end, none).
    @Test("SHA256Hasher: a copy after a common prefix gives each string's digest",
          arguments: [0, 64, 1_000_003, (4 << 20) - 64, (4 << 20) - 1, 4 << 20])
    func sharedPrefix(firstChange: Int) {
        let n = 4 << 20
        var rng = SeededRandom(UInt64(firstChange) &+ 7)
        let old = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var new = old
        if firstChange < n {
            for i in firstChange..<min(n, firstChange + 5000) { new[i] = ~new[i] }
        }
        old.withUnsafeBytes { o in
            new.withUnsafeBytes { w in
                var prefix = SHA256Hasher()
                prefix.update(UnsafeRawBufferPointer(rebasing: o[..<firstChange]))
                var a = prefix, b = prefix
                a.update(UnsafeRawBufferPointer(rebasing: o[firstChange...]))
                b.update(UnsafeRawBufferPointer(rebasing: w[firstChange...]))
                #expect(a.finish() == SHA256.digest(old))
                #expect(b.finish() == SHA256.digest(new))
                // The prefix's own hasher is untouched by its copies.
                prefix.update(UnsafeRawBufferPointer(rebasing: o[firstChange...]))
                #expect(prefix.finish() == SHA256.digest(old))
            }
        }
        if firstChange < n { #expect(SHA256.digest(old) != SHA256.digest(new)) }
    }

    /// A hash resumed from the state taken at a block boundary (and the
    /// length) gives the digest of hashing it whole. The initial state is FIPS 180-4's.
    @Test("SHA256Hasher: resumed from a state at a block boundary",
          arguments: [0, 64, 1 << 20, 3 << 20, (4 << 20) - 64])
    func resumed(at boundary: Int) {
        var rng = SeededRandom(UInt64(boundary) &+ 11)
        let data = (0..<(4 << 20) + 100).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        data.withUnsafeBytes { b in
            var first = SHA256Hasher()
            first.update(UnsafeRawBufferPointer(rebasing: b[..<boundary]))
            var rest = SHA256Hasher(resuming: first.state, at: boundary)
            rest.update(UnsafeRawBufferPointer(rebasing: b[boundary...]))
            #expect(rest.length == data.count)
            #expect(rest.finish() == SHA256.digest(data))
            // Resumed at the wrong length: another digest (the length is part of the padding).
            var wrong = SHA256Hasher(resuming: first.state, at: boundary + 64)
            wrong.update(UnsafeRawBufferPointer(rebasing: b[boundary...]))
            #expect(wrong.finish() != SHA256.digest(data))
        }
        #expect(SHA256Hasher().state == SHA256State.initial)
    }
}
