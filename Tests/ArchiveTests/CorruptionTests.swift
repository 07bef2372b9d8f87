import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

/// A hand-built raw VMA stream: the module's header encoder, extents built
/// here (with the test's own MD5), so any rule can be broken on purpose.
struct RawArchiveBuilder {
    var uuid = testUUID
    var device = VMADevice(id: 1, name: "drive-scsi0", size: 3 * 65536 + 100)

    struct Entry {
        var dev: UInt8 = 1
        var cluster: UInt32
        var mask: UInt16 = 0
    }

    func header() throws -> [UInt8] {
        try VMAHeader(uuid: uuid, ctime: 1, configs: [VMAConfigBlob(name: "qemu-server.conf", text: "name: x\n")],
                      devices: [device]).encode()
    }

    func extent(_ entries: [Entry], blockCount: Int? = nil, uuid: UUID? = nil) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        h.replaceSubrange(0..<4, with: Array("VMAE".utf8))
        let blocks = entries.reduce(0) { $0 + $1.mask.nonzeroBitCount }
        let bc = blockCount ?? blocks
        h[6] = UInt8(bc >> 8); h[7] = UInt8(bc & 0xFF)
        withUnsafeBytes(of: (uuid ?? self.uuid).uuid) { h.replaceSubrange(8..<24, with: $0) }
        for (i, e) in entries.enumerated() {
            let v = UInt64(e.mask) << 48 | UInt64(e.dev) << 32 | UInt64(e.cluster)
            for k in 0..<8 { h[40 + 8 * i + k] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(k))) }
        }
        h.replaceSubrange(24..<40, with: TestMD5.digest(h))
        var data: [UInt8] = []
        for e in entries {
            for j in 0..<16 where e.mask & (1 << j) != 0 {
                data += [UInt8](repeating: UInt8(j + 1), count: 4096)
            }
        }
        return h + data
    }

    /// Every cluster once, cluster 1 with two stored blocks.
    func valid() throws -> [UInt8] {
        try header() + extent([Entry(cluster: 0), Entry(cluster: 1, mask: 0b101), Entry(cluster: 2), Entry(cluster: 3, mask: 1)]) + extent([])
    }
}

/// Reads an archive to the end; returns the error it throws (or nil).
func readError(_ path: String) -> ArchiveError? {
    do {
        try VMAReader(path: path).readClusters { _ in }
        return nil
    } catch let e as ArchiveError {
        return e
    } catch {
        Issue.record("unexpected error type \(error)")
        return nil
    }
}

@Suite("Corrupt and truncated archives give clear errors")
struct CorruptionTests {
    let b = RawArchiveBuilder()

    func check(_ bytes: [UInt8], _ code: ArchiveError.Code, _ text: String, name: String = "x.vma",
               sourceLocation: SourceLocation = #_sourceLocation) throws {
        let s = try Scratch("corrupt")
        let path = s.path(name)
        try writeFile(path, bytes)
        let e = try #require(readError(path), "expected \(code)", sourceLocation: sourceLocation)
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
        #expect(e.description.contains(text), "\(e)", sourceLocation: sourceLocation)
        #expect(e.description.hasPrefix(path), "names the archive: \(e)", sourceLocation: sourceLocation)
    }

    @Test func validBaseline() throws {
        let s = try Scratch("base")
        try writeFile(s.path("ok.vma"), try b.valid())
        let summary = try VMAReader(path: s.path("ok.vma")).readClusters { _ in }
        #expect(summary.clusters == 4 && summary.storedBlocks == 3 && summary.extents == 2)
    }

    @Test("truncated archives: unexpected end of archive at offset N")
    func truncated() throws {
        let full = try b.valid()
        let hs = try b.header().count
        for cut in [0, 3, 100, 12288, hs + 200, hs + 512 + 5000, full.count - 1] {
            try check(Array(full[0..<cut]), .truncated, "unexpected end of archive at offset \(cut)")
        }
        // Cut exactly between extents: the stream is well-formed but clusters are missing.
        let oneExtent = try b.header() + b.extent([RawArchiveBuilder.Entry(cluster: 0), RawArchiveBuilder.Entry(cluster: 1)])
        try check(oneExtent, .missingCluster, "missing cluster 2 of device 1 (drive-scsi0)")
    }

    @Test("truncated compressed archives", arguments: [Compression.gzip, .zstd()])
    func truncatedCompressed(compression: Compression) throws {
        let s = try Scratch("trunc")
        let devices = sampleDevices()
        let path = s.path("t.vma" + compression.kind.fileExtension)
        try writeArchive(path: path, uuid: testUUID, devices: devices, configs: sampleConfigs,
                         order: shuffledOrder(devices, seed: 5), compression: compression)
        let bytes = try readFile(path)
        for fraction in [0.5, 0.9, 0.999] {
            try check(Array(bytes[0..<Int(Double(bytes.count) * fraction)]), .truncated,
                      "unexpected end of archive at offset ", name: "t.vma" + compression.kind.fileExtension)
        }
    }

    @Test func badHeaderMD5() throws {
        var a = try b.valid()
        a[100] ^= 1
        try check(a, .checksum, "bad header MD5")
    }

    @Test func badExtentMD5() throws {
        var a = try b.valid()
        let hs = try b.header().count
        a[hs + 4] ^= 1   // the reserved field: only the MD5 notices
        try check(a, .checksum, "bad extent MD5 at offset \(hs)")
    }

    @Test func wrongMagic() throws {
        var a = try b.valid()
        a[0] = 0x58
        try check(a, .notAnArchive, "not a VMA archive")
        var e = try b.valid()
        e[try b.header().count] = 0x58
        try check(e, .format, "bad extent magic")
        try check(Array("hello world, this is not an archive".utf8), .notAnArchive, "not a VMA archive (unknown magic")
        try check([0x89, 0x4C, 0x5A, 0x4F, 0, 0x0D, 0x0A, 0x1A, 0x0A], .unsupported, "lzo not supported: no maintained library")
    }

    @Test("a compressed stream that is not VMA inside")
    func compressedNotVMA() throws {
        let s = try Scratch("notvma")
        let plain = s.path("p")
        try writeFile(plain, [UInt8](repeating: 0x41, count: 20000))
        try Command.run(["zstd", "-q", plain, "-o", s.path("p.zst")])
        let e = try #require(readError(s.path("p.zst")))
        #expect(e.code == .notAnArchive && e.description.contains("not a VMA archive (bad magic)"))
    }

    @Test func duplicatedCluster() throws {
        typealias E = RawArchiveBuilder.Entry
        let a = try b.header() + b.extent([E(cluster: 0), E(cluster: 1), E(cluster: 2)]) + b.extent([E(cluster: 3), E(cluster: 1, mask: 1)])
        try check(a, .duplicateCluster, "duplicated cluster 1 of device 1 (drive-scsi0)")
    }

    @Test func missingCluster() throws {
        typealias E = RawArchiveBuilder.Entry
        let a = try b.header() + b.extent([E(cluster: 0), E(cluster: 1), E(cluster: 3)])
        try check(a, .missingCluster, "missing cluster 2 of device 1 (drive-scsi0)")
    }

    @Test func otherStructuralErrors() throws {
        typealias E = RawArchiveBuilder.Entry
        let h = try b.header()
        try check(h + b.extent([E(cluster: 0), E(cluster: 1), E(cluster: 2), E(cluster: 3, mask: 0b10)]),
                  .format, "cluster 3 of device 1 (drive-scsi0) stores a block past the device end")
        try check(h + b.extent([E(cluster: 4)]), .format, "cluster 4 beyond the end of device 1")
        try check(h + b.extent([E(dev: 9, cluster: 0)]), .format, "unknown device id 9")
        try check(h + b.extent([E(cluster: 0, mask: 1)], blockCount: 2), .format, "block_count 2 does not match")
        try check(h + b.extent([E(cluster: 0)], uuid: UUID()), .format, "extent uuid does not match")
    }
}
