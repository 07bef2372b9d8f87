import Foundation
import SnapdumpSystem
@testable import Storage
import Testing
import TestSupport

/// The `btrfs send --no-data` stream read in-process: records built here in
/// the kernel's format (send.h), and real streams of the btrfs fixture —
/// whole, with a flipped byte, and cut short.
@Suite("btrfs send stream")
struct BtrfsSendStreamTests {
    static let mib: UInt64 = 1 << 20
    static func empty(size: UInt64 = 40 << 20) -> ChangedChunks {
        ChangedChunks(chunkSize: 4 * mib, baseSize: size, size: size, method: "test")
    }

    /// An attribute: a string, a little-endian u64, or raw bytes.
    enum Value { case s(String), n(UInt64), b([UInt8]) }

    static func command(_ number: UInt16, _ attributes: [(UInt16, Value)]) -> [UInt8] {
        var payload: [UInt8] = []
        for (type, v) in attributes {
            let bytes: [UInt8]
            switch v {
            case .s(let s): bytes = Array(s.utf8)
            case .n(let n): bytes = (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) }
            case .b(let b): bytes = b
            }
            payload += [UInt8(type & 0xFF), UInt8(type >> 8), UInt8(bytes.count & 0xFF), UInt8(bytes.count >> 8)] + bytes
        }
        let l = UInt32(payload.count)
        var header: [UInt8] = [UInt8(l & 0xFF), UInt8(l >> 8 & 0xFF), UInt8(l >> 16 & 0xFF), UInt8(l >> 24), UInt8(number & 0xFF), UInt8(number >> 8), 0, 0, 0, 0]
        let crc = CRC32C.update(CRC32C.update(0, header), payload)
        for i in 0..<4 { header[6 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        return header + payload
    }

    static let own: [UInt8] = Array(repeating: 7, count: 16), parent: [UInt8] = Array(repeating: 9, count: 16)
    static let other: [UInt8] = Array(repeating: 3, count: 16)
    static func stream(_ commands: [[UInt8]], end: Bool = true) -> [UInt8] {
        Array("btrfs-stream\0".utf8) + [1, 0, 0, 0]
            + command(2, [(15, .s("100@b")), (1, .b(own)), (2, .n(12)), (20, .b(parent)), (21, .n(10))])
            + commands.joined() + (end ? command(21, []) : [])
    }
    static let disk = "vm-100-disk-0.raw"

    @Test func crc32cIsBtrfsCastagnoliWithoutInversion() {
        // Every real stream ends with this command (no attributes): its CRC as btrfs wrote it (btrfs-progs 6.2, kernel 6.1).
        #expect(CRC32C.update(0, [0, 0, 0, 0, 21, 0, 0, 0, 0, 0]) == 0x9DC9_6C50)
        #expect(Array(Self.command(21, []).suffix(4)) == [0x50, 0x6C, 0xC9, 0x9D])
    }

    @Test func updateExtentsTruncateClonesAndMetadata() {
        let s = Self.stream([
            Self.command(22, [(15, .s(Self.disk)), (18, .n(1_228_800)), (4, .n(4096))]),
            Self.command(22, [(15, .s("vm-100-disk-1.raw")), (18, .n(0)), (4, .n(4096))]),
            Self.command(22, [(15, .s(Self.disk)), (18, .n(8_192_000)), (4, .n(8 << 20))]),
            Self.command(17, [(15, .s(Self.disk)), (4, .n(30_000_000))]),
            Self.command(20, [(15, .s(Self.disk)), (11, .b(Array(repeating: 0, count: 12)))]),
            Self.command(16, [(15, .s("other")), (18, .n(0)), (24, .n(1_228_800)), (20, .b(Self.own)), (22, .s(Self.disk)), (23, .n(0))]),
            // The base's bytes at the same offset: nothing changes.
            Self.command(16, [(15, .s(Self.disk)), (18, .n(20 << 20)), (24, .n(5 << 20)), (20, .b(Self.parent)), (22, .s(Self.disk)), (23, .n(20 << 20))]),
            // From the same path of another subvolume: its bytes may differ.
            Self.command(16, [(15, .s(Self.disk)), (18, .n(38 << 20)), (24, .n(4096)), (20, .b(Self.other)), (22, .s(Self.disk)), (23, .n(38 << 20))]),
            // The base's bytes from another offset.
            Self.command(16, [(15, .s(Self.disk)), (18, .n(33_554_432)), (24, .n(4096)), (20, .b(Self.parent)), (22, .s(Self.disk)), (23, .n(0))]),
        ])
        var c = Self.empty()
        let r = BtrfsSendStream.changes(stream: s, path: Self.disk, into: &c)
        // 1228800 → chunk 0; 8192000 + 8 MiB → chunks 1…3; truncate at 30000000 → chunk 7 and after; clones → 8, 9.
        #expect(r.changedChunks?.indices == IndexSet([0, 1, 2, 3, 7, 8, 9]), "\(r)")
        var d = Self.empty()
        let onlyClone = BtrfsSendStream.changes(stream: Self.stream([
            Self.command(16, [(15, .s(Self.disk)), (18, .n(20 << 20)), (24, .n(5 << 20)), (20, .b(Self.parent)), (22, .s(Self.disk)), (23, .n(20 << 20))]),
            Self.command(16, [(15, .s(Self.disk)), (18, .n(33_554_432)), (24, .n(4096)), (20, .b(Self.parent)), (22, .s(Self.disk)), (23, .n(0))]),
        ]), path: Self.disk, into: &d)
        #expect(onlyClone.changedChunks?.indices == IndexSet([8]))
    }

    @Test func fileReplacedOrMovedIsUnknown() {
        var c = Self.empty()
        let renamed = BtrfsSendStream.changes(stream: Self.stream([Self.command(9, [(15, .s("o258-14-0")), (16, .s(Self.disk))])]),
                                              path: Self.disk, into: &c)
        #expect(renamed.reason?.contains("replaced") == true, "\(renamed)")
        let made = BtrfsSendStream.changes(stream: Self.stream([Self.command(3, [(15, .s(Self.disk))])]), path: Self.disk, into: &c)
        #expect(made.reason?.contains("mkfile") == true)
        let noOffset = BtrfsSendStream.changes(stream: Self.stream([Self.command(22, [(15, .s(Self.disk)), (4, .n(1))])]), path: Self.disk, into: &c)
        #expect(noOffset.reason?.contains("lacks its offset") == true, "\(noOffset)")
    }

    @Test func aStreamNotWholeAndIntactIsUnknownWithTheReason() {
        let good = Self.stream([Self.command(22, [(15, .s(Self.disk)), (18, .n(0)), (4, .n(4096))])])
        var c = Self.empty()
        #expect(BtrfsSendStream.changes(stream: good, path: Self.disk, into: &c).changedChunks?.indices == IndexSet([0]))
        func reason(_ s: [UInt8]) -> String {
            var c = Self.empty()
            return BtrfsSendStream.changes(stream: s, path: Self.disk, into: &c).reason ?? "no reason: taken as changes"
        }
        var flipped = good
        flipped[good.count - 20] ^= 0x01
        #expect(reason(flipped).contains("CRC-32C"), "\(reason(flipped))")
        #expect(reason(Array(good.dropLast(5))).contains("truncated"))
        #expect(reason(Self.stream([], end: false)).contains("no end command"))
        #expect(reason(good + [0]).contains("after the end command"))
        #expect(reason(Array("btrfs-streaX\0".utf8) + good.dropFirst(13)).contains("magic"))
        #expect(reason([]).contains("magic"))
        var version = good
        version[13] = 9
        #expect(reason(version).contains("version 9"))
    }

    /// Real streams of the btrfs fixture (btrfs-progs 6.2): written ranges, a punched hole and a grown
    /// size are what the stream says; a flipped byte or a cut end make it unknown, never fewer changes.
    @Test(.enabled(if: Integration.available("SNAPDUMP_TEST_BTRFS"))) func realStreamOfTheFixture() throws {
        let root = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let dir = try Integration.scratchDirectory("btrfs-send-stream", under: root)
        let vol = dir + "/vol", base = dir + "/base", new = dir + "/new", streamFile = dir + "/stream"
        defer {
            for s in [new, base, vol] { _ = try? Command.capture(["btrfs", "subvolume", "delete", s]) }
            try? FileManager.default.removeItem(atPath: dir)
        }
        try Command.run(["btrfs", "subvolume", "create", vol])
        let file = vol + "/" + Self.disk
        try Command.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1M", "count=24", "status=none"])
        try Command.run(["sync", "-f", file])
        try Command.run(["btrfs", "subvolume", "snapshot", "-r", vol, base])
        // Chunk 1 written, a hole punched in chunk 3, the file grown from 24 to 30 MiB (chunks 5–7).
        try Command.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=4k", "count=3", "seek=1100", "conv=notrunc", "status=none"])
        try Command.run(["fallocate", "-p", "-o", "\(13 << 20)", "-l", "64k", file])
        try Command.run(["truncate", "-s", "30M", file])
        // The file synced, a read-only snapshot `to` of `vol`, and the --no-data stream from `from` to it.
        func sendStream(from parent: String, to snapshot: String) throws -> [UInt8] {
            try Command.run(["sync", "-f", file])
            try Command.run(["btrfs", "subvolume", "snapshot", "-r", vol, snapshot])
            try Command.run(["btrfs", "send", "-q", "--no-data", "-p", parent, "-f", streamFile, snapshot])
            return [UInt8](try #require(FileManager.default.contents(atPath: streamFile)))
        }
        let stream = try sendStream(from: base, to: new)
        // BtrfsPlugin sends with the ioctl itself, into memory: the same bytes as the tool's.
        #expect(try FileSystem.btrfsSendNoData(base: base, snapshot: new) == stream, "the send ioctl's stream is `btrfs send --no-data -p`'s")
        // Not a read-only subvolume (the live one), or not a subvolume at all: the kernel refuses, the error names it.
        #expect(throws: SystemError.self) { _ = try FileSystem.btrfsSendNoData(base: base, snapshot: vol) }
        #expect(throws: SystemError.self) { _ = try FileSystem.btrfsSendNoData(base: dir, snapshot: new) }

        var c = ChangedChunks(chunkSize: 4 * Self.mib, baseSize: 24 * Self.mib, size: 30 * Self.mib, method: "btrfs send")
        let r = BtrfsSendStream.changes(stream: stream, path: Self.disk, into: &c)
        #expect(r.changedChunks?.indices == IndexSet([1, 3, 5, 6, 7]), "\(r)")
        // A write into the middle of an extent: send clones the rest of it from the parent at the same
        // offset (the base's bytes), which is no change — only chunk 4 differs.
        let new2 = dir + "/new2"
        defer { _ = try? Command.capture(["btrfs", "subvolume", "delete", new2]) }
        try Command.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1M", "count=2", "seek=17", "conv=notrunc", "status=none"])
        let stream2 = try sendStream(from: new, to: new2)
        #expect(try FileSystem.btrfsSendNoData(base: new, snapshot: new2) == stream2)
        var c2 = ChangedChunks(chunkSize: 4 * Self.mib, baseSize: 30 * Self.mib, size: 30 * Self.mib, method: "btrfs send")
        let r2 = BtrfsSendStream.changes(stream: stream2, path: Self.disk, into: &c2)
        let records = try BtrfsSendStream.parse(stream2).map(\.name)
        #expect(r2.changedChunks?.indices == IndexSet([4]), "\(r2) \(records)")
        // The delete ioctl (what BtrfsPlugin uses): the snapshot is gone; a plain directory is refused by name.
        try FileSystem.deleteBtrfsSubvolume(new2)
        #expect(!FileSystem.exists(new2))
        try FileSystem.createDirectory(dir + "/plain")
        let e = try #require(throws: SystemError.self) { try FileSystem.deleteBtrfsSubvolume(dir + "/plain") }
        #expect(e.description.contains(dir + "/plain"))
        #expect(FileSystem.isDirectory(dir + "/plain"))

        // Every command's CRC was checked: a flipped byte anywhere after the magic is caught.
        for at in [20, stream.count / 2, stream.count - 3] {
            var bad = stream
            bad[at] ^= 0x40
            var d = Self.empty()
            let b = BtrfsSendStream.changes(stream: bad, path: Self.disk, into: &d)
            #expect(b.changedChunks == nil && b.reason?.contains("btrfs send stream") == true, "byte \(at): \(b)")
        }
        for cut in [stream.count - 1, stream.count - 10, stream.count / 2, 17] {
            var d = Self.empty()
            let b = BtrfsSendStream.changes(stream: Array(stream.prefix(cut)), path: Self.disk, into: &d)
            #expect(b.reason?.contains("truncated") == true, "cut at \(cut): \(b)")
        }
    }
}
