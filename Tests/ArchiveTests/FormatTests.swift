import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

@Suite("VMA format details")
struct FormatTests {
    @Test func constants() {
        #expect(VMAFormat.maxExtentSize == 3_867_136)
        #expect(VMAFormat.offBlockInfo + 8 * VMAFormat.clustersPerExtent == VMAFormat.extentHeaderSize)
        #expect(VMAFormat.offDevInfo + 256 * VMAFormat.devInfoSize == VMAFormat.fixedHeaderSize)
        #expect(VMAFormat.offConfigData + 4 * 256 + 4 == VMAFormat.offDevInfo)
    }

    @Test func blockInfo() {
        let b = VMABlockInfo(mask: 0x8001, deviceID: 254, cluster: 0xDEAD_BEEF)
        #expect(b.rawValue == 0x8001_00FE_DEAD_BEEF)
        #expect(VMABlockInfo(rawValue: b.rawValue) == b)
    }

    @Test func validMask() {
        #expect(VMAFormat.validBlockMask(deviceSize: 65536, cluster: 0) == 0xFFFF)
        #expect(VMAFormat.validBlockMask(deviceSize: 65536 + 1, cluster: 1) == 0b1)
        #expect(VMAFormat.validBlockMask(deviceSize: 65536 + 4097, cluster: 1) == 0b11)
        #expect(VMAFormat.validBlockMask(deviceSize: 2 * 65536 - 1, cluster: 1) == 0xFFFF)
        #expect(VMAFormat.validBlockMask(deviceSize: 65536, cluster: 1) == 0)
    }

    @Test("header encode/decode: little-endian blob lengths, NULs, padding, MD5")
    func header() throws {
        let h = VMAHeader(uuid: testUUID, ctime: -5,
                          configs: [VMAConfigBlob(name: "qemu-server.conf", text: "abc")],
                          devices: [VMADevice(id: 2, name: "drive-scsi1", size: 10), VMADevice(id: 1, name: "drive-scsi0", size: 1 << 40)])
        let bytes = try h.encode()
        #expect(bytes.count == 12800)
        // Blob buffer: unused byte, then "qemu-server.conf\0" with LE length 17.
        #expect(bytes[12288] == 0 && bytes[12289] == 17 && bytes[12290] == 0)
        #expect(Array(bytes[12291..<12308]) == Array("qemu-server.conf".utf8) + [0])
        #expect(Array(bytes[12308..<12310]) == [3, 0])
        #expect(Array(bytes[2044..<2048]) == [0, 0, 0, 1])
        let decoded = try VMAHeader.decode(bytes, path: "mem")
        #expect(decoded == h)
        #expect(decoded.devices.map(\.id) == [1, 2])
        // dev_info[1].size, big-endian.
        #expect(Array(bytes[(4096 + 32 + 8)..<(4096 + 32 + 16)]) == [0, 0, 1, 0, 0, 0, 0, 0])
    }

    @Test("header region for zstd: a frame of raw blocks that zstd -d reads alone")
    func zstdRegion() throws {
        let s = try Scratch("region")
        var payload = [UInt8](repeating: 0, count: 300_000)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 13) }
        let frame = HeaderRegion.zstdRawFrame(payload)
        #expect(frame.count == 9 + 3 * 3 + payload.count)
        try writeFile(s.path("f.zst"), frame)
        #expect(try systemDecompress(s.path("f.zst"), .zstd) == payload)
        let member = HeaderRegion.gzipStoredMember(payload)
        #expect(member.count == 10 + 5 * 5 + payload.count + 8)
        try writeFile(s.path("f.gz"), member)
        #expect(try systemDecompress(s.path("f.gz"), .gzip) == payload)
    }

    @Test("concatenated zstd frames and gzip members from the system tools read as one stream",
          arguments: [Compression.Kind.zstd, .gzip])
    func concatenated(kind: Compression.Kind) throws {
        let s = try Scratch("concat")
        let archive = try RawArchiveBuilder().valid()
        // Split the VMA stream in three and compress each piece separately.
        let cuts = [0, 5000, 13000, archive.count]
        var joined: [UInt8] = []
        for i in 0..<3 {
            let p = s.path("part\(i)")
            try writeFile(p, Array(archive[cuts[i]..<cuts[i + 1]]))
            try Command.run(kind == .zstd ? ["zstd", "-q", "-f", p] : ["gzip", "-f", p])
            joined += try readFile(p + (kind == .zstd ? ".zst" : ".gz"))
        }
        try writeFile(s.path("joined"), joined)
        let r = try DecompressingReader(path: s.path("joined"))
        #expect(r.compression == kind)
        var out = [UInt8](repeating: 0, count: archive.count + 100)
        let n = try out.withUnsafeMutableBytes { try r.read(into: $0) }
        #expect(n == archive.count)
        #expect(Array(out[0..<n]) == archive)
        #expect(try VMAReader(path: s.path("joined")).readClusters { _ in }.clusters == 4)
    }

    @Test func zeroCheck() {
        var b = [UInt8](repeating: 0, count: 4096)
        #expect(b.withUnsafeBytes { ZeroCheck.isZero($0) })
        for i in [0, 63, 64, 4000, 4095] {
            b[i] = 1
            #expect(!b.withUnsafeBytes { ZeroCheck.isZero($0) })
            b[i] = 0
        }
        #expect(b.withUnsafeBytes { ZeroCheck.isZero(UnsafeRawBufferPointer(rebasing: $0[1..<100])) })
    }

    @Test func detect() {
        #expect(Compression.detect([0x28, 0xB5, 0x2F, 0xFD]) == .zstd)
        #expect(Compression.detect([0x1F, 0x8B, 8, 0]) == .gzip)
        #expect(Compression.detect(Array("VMA".utf8) + [0]) == Compression.Kind.none)
        #expect(Compression.detect([0x89, 0x4C, 0x5A, 0x4F]) == .lzo)
        #expect(Compression.detect(Array("VMAE".utf8)) == nil)
    }
}
