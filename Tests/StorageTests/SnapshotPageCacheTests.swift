import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// A storage snapshot is read once (then deleted, or kept only as a change-tracking
/// base): its reader drops the pages each read brought in, so deleting the snapshot
/// later has no page cache to truncate (0.30 s for a 2 GiB btrfs snapshot, serially,
/// in the next incremental backup: BENCHMARKS.md, issue 11, session 8).
@Suite("Snapshot reads leave no page cache (real fixtures)", .serialized)
struct SnapshotPageCacheTests {
    static let size = 8 << 20

    /// Pages of `path` in the page cache, counted one by one (mincore).
    static func cachedPages(_ path: String) throws -> Int {
        let f = try File.openForReading(path)
        defer { try? f.close() }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        return stride(from: 0, to: size, by: page).filter { f.isCached(at: UInt64($0)) }.count
    }

    /// The file a source has open, found by a piece of its path in /proc/self/fd
    /// (the zfs-fuse reader's clone exists only while the source is open).
    static func openFile(containing parts: [String]) throws -> String {
        for fd in try FileSystem.list("/proc/self/fd") {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)") else { continue }
            if parts.allSatisfy({ target.contains($0) }) { return target }
        }
        throw TestFailure("no open file whose path holds \(parts)")
    }

    @Test(arguments: [PluginCase.all[2], PluginCase.all[3], PluginCase.all[4], PluginCase.all[5]])
    func snapshotReaderDropsWhatItRead(_ c: PluginCase) throws {
        let storage = try c.makeStorage()
        defer { storage.destroy() }
        let p = storage.plugin
        let volume = try p.allocate(vmid: 100, size: UInt64(Self.size), format: .raw)
        var data = [UInt8](repeating: 0, count: Self.size)
        for i in stride(from: 0, to: data.count, by: 512) { data[i] = UInt8(truncatingIfNeeded: i >> 9 | 1) }
        do {
            let w = try p.openForWriting(volume)
            try data.withUnsafeBytes { try w.write($0, at: 0) }
            try w.sync()
            try w.close()
        }
        let snap = "pagecache\(Fixture.short())"
        try p.createSnapshot([volume], name: snap)
        defer { try? p.deleteSnapshot([volume], name: snap) }
        let fileName = "\(volume.volname.split(separator: "/").last!)"

        try withSource(p, volume, snapshot: snap) { s in
            var out = [UInt8](repeating: 0, count: Self.size)
            // In 1 MiB reads, as the engine reads changed ranges.
            for off in stride(from: 0, to: Self.size, by: 1 << 20) {
                let n = try out.withUnsafeMutableBytes { try s.read(at: UInt64(off), into: UnsafeMutableRawBufferPointer(rebasing: $0[off..<off + (1 << 20)])) }
                #expect(n == 1 << 20)
            }
            #expect(out == data, "the snapshot's bytes")
            let path = try Self.openFile(containing: [fileName, c.type == .zfspool ? "snapdump-read-vm-100-\(snap)" : snap])
            #expect(try Self.cachedPages(path) == 0, "no page of the snapshot read stays cached: \(path)")

            // The same file read without dropping stays cached: the count above can see pages.
            let plain = try FileBlockSource(path: path, name: "plain")
            defer { try? plain.close() }
            #expect(!plain.dropsBehind)
            _ = try out.withUnsafeMutableBytes { try plain.read(at: 0, into: $0) }
            let cached = try Self.cachedPages(path)
            #expect(cached == Self.size / Int(sysconf(Int32(_SC_PAGESIZE))), "a plain read of \(path) is cached (\(cached) pages)")
        }
        // The live volume's reader keeps the page cache as it was (not a snapshot).
        try withSource(p, volume, snapshot: nil) { s in
            #expect(!((s as? FileBlockSource)?.dropsBehind ?? true))
        }
    }
}
