import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

/// Whether the filesystem of `dir` takes an aligned O_DIRECT write (probed
/// on a file of its own, without Archive code).
func takesDirectIO(_ dir: String) -> Bool {
    let path = (dir as NSString).appendingPathComponent("probe")
    defer { unlink(path) }
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | File.oDirect, 0o600)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var p: UnsafeMutableRawPointer?
    guard posix_memalign(&p, 4096, 4096) == 0, let p else { return false }
    defer { free(p) }
    memset(p, 1, 4096)
    return pwrite(fd, p, 4096, 0) == 4096
}

@Suite("DirectAppender: the archive stream written with O_DIRECT")
struct DirectAppenderTests {
    /// Writes `prefix` through the buffered descriptor, then `stream` through an
    /// appender in pieces of the given sizes (cycled); returns the file's bytes.
    func write(prefix: [UInt8], stream: [UInt8], pieces: [Int], _ s: Scratch) throws -> (bytes: [UInt8], direct: Bool) {
        let path = s.path("out.dat")
        let f = try File.createNew(path)
        try prefix.withUnsafeBytes { try f.write($0, at: 0) }
        let a = prefix.withUnsafeBytes { DirectAppender(file: f, start: UInt64(prefix.count), prefix: $0) }
        let direct = a.isDirect
        var pos = 0, k = 0
        try stream.withUnsafeBytes { b in
            while pos < b.count {
                let n = min(pieces[k % pieces.count], b.count - pos)
                try a.write(UnsafeRawBufferPointer(rebasing: b[pos..<pos + n]), at: UInt64(prefix.count + pos))
                pos += n
                k += 1
            }
        }
        try a.finish()
        try f.sync()
        try f.close()
        return (try readFile(path), direct)
    }

    @Test("the file holds the prefix and every byte in order, across blocks and an unaligned start and end",
          arguments: [0, 512, 4095, 4096, 70_000])
    func content(prefixLength: Int) throws {
        let s = try Scratch("direct-\(prefixLength)")
        var rng = SeededRandom(UInt64(prefixLength) + 1)
        let prefix = (0..<prefixLength).map { _ in UInt8.random(in: 0...255, using: &rng) }
        // Two and a half blocks, so two full blocks go through O_DIRECT and the tail does not.
        let stream = (0..<(DirectAppender.blockSize * 5 / 2 + 123)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 13) }
        let (bytes, direct) = try write(prefix: prefix, stream: stream, pieces: [1, 4096, 1 << 20, 77_777, 3 << 20], s)
        #expect(bytes.count == prefix.count + stream.count)
        #expect(Array(bytes[..<prefix.count]) == prefix)
        #expect(Array(bytes[prefix.count...]) == stream)
        // On ext4, XFS and btrfs O_DIRECT works: there the test ran the direct path, not the fallback.
        if takesDirectIO(s.dir) { #expect(direct) }
    }

    @Test("a stream shorter than one block is written whole by finish")
    func short() throws {
        let s = try Scratch("direct-short")
        let (bytes, _) = try write(prefix: [1, 2, 3], stream: [4, 5, 6, 7], pieces: [2], s)
        #expect(bytes == [1, 2, 3, 4, 5, 6, 7])
    }

    @Test("close waits for queued writes and drops the rest; nothing is written after it")
    func closeDrops() throws {
        let s = try Scratch("direct-close")
        let f = try File.createNew(s.path("out.dat"))
        let a = DirectAppender(file: f, start: 0, prefix: UnsafeRawBufferPointer(start: nil, count: 0))
        let block = [UInt8](repeating: 9, count: DirectAppender.blockSize + 10)
        try block.withUnsafeBytes { try a.write($0, at: 0) }
        a.close()
        // The full block was queued and is written; the 10 bytes after it are not.
        #expect(try f.size() == UInt64(DirectAppender.blockSize))
        try f.close()
    }
}
