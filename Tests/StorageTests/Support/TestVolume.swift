import Foundation
import SnapdumpSystem
import Storage

/// The test volumes' shape: 16 MiB of 4 KiB blocks. Blocks below `liveBlocks`
/// get the initial pattern (with every eighth 64 KiB group left as a hole) and
/// the writer's overwrites; the last 4 MiB are never written and must stay a
/// hole (reported as zeros by storages that know about holes).
enum TestVolume {
    static let size: UInt64 = 16 << 20
    static let blockCount = Int(size) / BlockPattern.blockSize
    static let liveBlocks = blockCount * 3 / 4
    static var tailRange: Range<UInt64> { UInt64(liveBlocks * BlockPattern.blockSize)..<size }

    /// The known pattern written before the snapshot: generation 0 stamps.
    static func initialState() -> [BlockPattern.State] {
        (0..<blockCount).map { b in
            b < liveBlocks && (b / 16) % 8 != 7 ? .stamp(gen: 0) : .zero
        }
    }

    /// Writes `states` into a raw file through its path (the volume path QEMU would open),
    /// in runs of consecutive data blocks; zero blocks are left untouched (holes stay holes).
    static func writeRaw(path: String, states: [BlockPattern.State], tag: UInt64) throws {
        try writeRaw(to: FileVolumeWriter(path: path, name: path), states: states, tag: tag)
    }

    /// The same through a volume writer (an RBD image has no path to open).
    static func writeRaw(to f: any VolumeWriter, states: [BlockPattern.State], tag: UInt64) throws {
        let run = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * BlockPattern.blockSize, alignment: 4096)
        defer { run.deallocate() }
        var b = 0
        while b < states.count {
            guard states[b] != .zero else { b += 1; continue }
            let start = b
            var n = 0
            while b < states.count, states[b] != .zero, n < 64 {
                BlockPattern.render(states[b], into: UnsafeMutableRawBufferPointer(rebasing: run[(n * 4096)..<((n + 1) * 4096)]), tag: tag, block: b)
                n += 1
                b += 1
            }
            try f.write(UnsafeRawBufferPointer(rebasing: run[0..<(n * 4096)]), at: UInt64(start * BlockPattern.blockSize))
        }
        try f.sync()
        try f.close()
    }

    /// Writes `states` into a qcow2 image through qemu-img: a sparse raw copy
    /// in `scratch`, converted onto the existing image (`-n --target-is-zero`,
    /// so holes stay unallocated).
    static func writeQcow2(path: String, states: [BlockPattern.State], tag: UInt64, scratch: String) throws {
        let raw = scratch + "/pattern-\(tag).raw"
        let f = try File.open(raw, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try f.truncate(to: UInt64(states.count * BlockPattern.blockSize))
        try f.close()
        try writeRaw(path: raw, states: states, tag: tag)
        try Command.run(["qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "qcow2", raw, path])
        try FileSystem.remove(raw)
    }

    /// Reads the whole source and decodes every block.
    static func decode(_ source: any BlockSource, tag: UInt64) throws -> [BlockPattern.State] {
        let chunk = 4 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        var states: [BlockPattern.State] = []
        states.reserveCapacity(Int(source.size) / BlockPattern.blockSize)
        var off: UInt64 = 0
        while off < source.size {
            let want = Int(min(UInt64(chunk), source.size - off))
            let n = try source.read(at: off, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]))
            guard n == want else { throw TestFailure("short read of \(source.name) at \(off): \(n) of \(want)") }
            var i = 0
            while i + BlockPattern.blockSize <= n {
                let block = Int(off) / BlockPattern.blockSize + i / BlockPattern.blockSize
                states.append(BlockPattern.decode(UnsafeRawBufferPointer(rebasing: buf[i..<(i + BlockPattern.blockSize)]), tag: tag, block: block))
                i += BlockPattern.blockSize
            }
            off += UInt64(n)
        }
        return states
    }

    /// The first few blocks where `found` differs from `expected`, for messages.
    static func mismatches(_ found: [BlockPattern.State], _ expected: [BlockPattern.State], limit: Int = 5) -> [String] {
        var out: [String] = []
        if found.count != expected.count { out.append("\(found.count) blocks, expected \(expected.count)") }
        for i in 0..<min(found.count, expected.count) where found[i] != expected[i] {
            out.append("block \(i): \(found[i]), expected \(expected[i])")
            if out.count >= limit { out.append("…"); break }
        }
        return out
    }
}

/// A failure found by a helper, with a message that says what and where.
struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}
