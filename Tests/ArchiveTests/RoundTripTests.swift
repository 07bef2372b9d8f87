import Foundation
import Testing
@testable import Archive

/// Three devices with sizes that are not multiples of 64 KiB / 4 KiB, zero
/// blocks, zero clusters and holes; clusters shuffled, devices interleaved.
func sampleDevices() -> [TestDevice] { cachedSampleDevices }

private let cachedSampleDevices: [TestDevice] = {
    var rng = SeededRandom(42)
    func randomContent(_ size: Int, zeroBlocks: [Int], zeroClusters: [Int]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size)
        b.withUnsafeMutableBytes { p in
            let words = p.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = rng.next() }
            for i in (words.count * 8)..<size { p[i] = UInt8(truncatingIfNeeded: rng.next()) }
        }
        for z in zeroBlocks where z * 4096 < size {
            for i in (z * 4096)..<min(size, z * 4096 + 4096) { b[i] = 0 }
        }
        for c in zeroClusters where c * 65536 < size {
            for i in (c * 65536)..<min(size, c * 65536 + 65536) { b[i] = 0 }
        }
        return b
    }
    // 5 clusters + 3 blocks + one sector: the last cluster has a partial 4th block.
    let s1 = 5 * 65536 + 3 * 4096 + 512
    let d1 = TestDevice(device: VMADevice(id: 1, name: "drive-scsi0", size: UInt64(s1)),
                        content: randomContent(s1, zeroBlocks: [3, 17, 18, 79], zeroClusters: [2]), holes: [])
    // More than one 4 MiB chunk; clusters 10-19 are holes, chunk 0 has zero clusters.
    let s2 = 4 * 1024 * 1024 + 2 * 65536 + 512
    var c2 = randomContent(s2, zeroBlocks: [0, 5], zeroClusters: Array(10..<20) + [40])
    for i in (65 * 65536)..<(65 * 65536 + 200) { c2[i] = 0 }
    let d2 = TestDevice(device: VMADevice(id: 2, name: "drive-scsi1", size: UInt64(s2)),
                        content: c2, holes: Set(10..<20))
    // Exactly three clusters, the middle one a hole.
    let s3 = 3 * 65536
    let d3 = TestDevice(device: VMADevice(id: 7, name: "drive-virtio0", size: UInt64(s3)),
                        content: randomContent(s3, zeroBlocks: [], zeroClusters: [1]), holes: [1])
    return [d1, d2, d3]
}()

func shuffledOrder(_ devices: [TestDevice], seed: UInt64) -> [(UInt8, UInt32)] {
    var all: [(UInt8, UInt32)] = []
    for d in devices { for c in 0..<UInt32(d.device.clusterCount) { all.append((d.device.id, c)) } }
    var rng = SeededRandom(seed)
    all.shuffle(using: &rng)
    return all
}

let sampleConfigs = [
    VMAConfigBlob(name: "qemu-server.conf", text: "name: test\nscsi0: local:100/vm-100-disk-0.raw,size=340K\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"),
    VMAConfigBlob(name: "qemu-server.fw", text: "[OPTIONS]\nenable: 1\n"),
]

let testUUID = UUID(uuidString: "6F1B5C1E-2A3B-4C5D-8E9F-A0B1C2D3E4F5")!

@Suite("VMA writer and reader round trips")
struct RoundTripTests {
    static let compressions: [Compression] = [.none, .gzip, .zstd(level: 3, workers: 0), .zstd(level: 1, workers: 2)]

    @Test("write, read back and verify", arguments: compressions)
    func roundTrip(compression: Compression) throws {
        let scratch = try Scratch("rt")
        let devices = sampleDevices()
        let path = scratch.path("vzdump-qemu-100-2025_01_01-00_00_00.vma" + compression.kind.fileExtension)
        let stats = try writeArchive(path: path, uuid: testUUID, devices: devices, configs: sampleConfigs,
                                     order: shuffledOrder(devices, seed: 7), compression: compression)
        #expect(!FileManager.default.fileExists(atPath: path + ".dat"))
        #expect(stats.clusters == devices.reduce(0) { $0 + $1.device.clusterCount })

        let reader = try VMAReader(path: path)
        #expect(reader.compression == compression.kind)
        #expect(reader.header.uuid == testUUID)
        #expect(reader.header.ctime == 1_700_000_000)
        #expect(reader.header.devices == devices.map(\.device))
        #expect(reader.config(named: "qemu-server.conf") == sampleConfigs[0].data)
        #expect(reader.config(named: "qemu-server.fw") == sampleConfigs[1].data)
        #expect(reader.header.configs.map(\.name) == ["qemu-server.conf", "qemu-server.fw", "snapdump.json"])
        let meta = try #require(try reader.snapdumpMetadata())
        #expect(meta.mode == "snapshot")
        #expect(meta.devices.map(\.name) == devices.map(\.device.name))

        var restored: [UInt8: [UInt8]] = [:]
        for d in devices { restored[d.device.id] = [UInt8](repeating: 0xAA, count: d.content.count) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let result = try reader.verify { c in
            buffer.withUnsafeMutableBytes { c.expand(into: $0) }
            let start = Int(c.deviceOffset)
            restored[c.deviceID]!.replaceSubrange(start..<start + c.validBytes, with: buffer[0..<c.validBytes])
        }
        #expect(result.metadataChecked)
        for d in devices {
            #expect(restored[d.device.id]! == d.content, "content of \(d.device.name)")
            #expect(result.digests[d.device.id] == d.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        }
        #expect(result.summary.storedBlocks == stats.storedBlocks)
        #expect(result.summary.extents == stats.extents)
        #expect(result.summary.streamBytes == stats.streamBytes)
    }

    @Test("the writer's output obeys every format rule (independent parser, system decompressors)",
          arguments: compressions)
    func writerRules(compression: Compression) throws {
        let scratch = try Scratch("rules")
        let devices = sampleDevices()
        let path = scratch.path("a.vma" + compression.kind.fileExtension)
        let stats = try writeArchive(path: path, uuid: testUUID, devices: devices, configs: sampleConfigs,
                                     order: shuffledOrder(devices, seed: 11), compression: compression)
        let raw: [UInt8]
        switch compression.kind {
        case .none: raw = try readFile(path)
        default: raw = try systemDecompress(path, compression.kind)
        }
        #expect(UInt64(raw.count) == stats.streamBytes)
        let parsed = try independentParse(raw)
        #expect(parsed.extentEntryCounts.dropLast().allSatisfy { $0 == 59 })
        #expect(parsed.extentEntryCounts.allSatisfy { $0 <= 59 })
        #expect(parsed.configOrder == ["qemu-server.conf", "qemu-server.fw", "snapdump.json"])
        #expect(parsed.configs["snapdump.json"]!.count == 1024)
        _ = try SnapdumpMetadata.decode(parsed.configs["snapdump.json"]!)
        for d in devices {
            #expect(parsed.devices[d.device.id]!.name == d.device.name)
            #expect(parsed.contents[d.device.id]! == d.content)
        }
        // Holes and all-zero clusters are mask-0 entries without data.
        let zeroClusters = parsed.entries.filter { $0.mask == 0 }.map { "\($0.dev):\($0.cluster)" }
        #expect(zeroClusters.contains("2:10") && zeroClusters.contains("2:40") && zeroClusters.contains("1:2") && zeroClusters.contains("7:1"))
        // Blocks wholly past the end are masked out even though the caller's buffer held garbage there.
        let last1 = parsed.entries.first { $0.dev == 1 && $0.cluster == 5 }!
        #expect(last1.mask & ~UInt16(0b1111) == 0)
    }

    @Test("compressed archives decompress to exactly the uncompressed archive")
    func sameStream() throws {
        let scratch = try Scratch("same")
        let devices = sampleDevices()
        let order = shuffledOrder(devices, seed: 3)
        var streams: [[UInt8]] = []
        for c in [Compression.none, .gzip, .zstd(level: 3, workers: 2)] {
            let path = scratch.path("s.vma" + c.kind.fileExtension)
            try writeArchive(path: path, uuid: testUUID, devices: devices, configs: sampleConfigs, order: order, compression: c)
            streams.append(c == .none ? try readFile(path) : try systemDecompress(path, c.kind))
        }
        #expect(streams[1] == streams[0])
        #expect(streams[2] == streams[0])
    }

    @Test("an archive with exactly 59 clusters ends with an empty extent")
    func emptyLastExtent() throws {
        let scratch = try Scratch("empty")
        let dev = TestDevice(device: VMADevice(id: 1, name: "drive-scsi0", size: 59 * 65536),
                             content: [UInt8](repeating: 0, count: 59 * 65536), holes: [])
        let path = scratch.path("e.vma")
        try writeArchive(path: path, uuid: testUUID, devices: [dev], configs: sampleConfigs,
                         order: (0..<59).map { (1, UInt32($0)) }, compression: .none)
        let parsed = try independentParse(try readFile(path))
        #expect(parsed.extentEntryCounts == [59, 0])
        let summary = try VMAReader(path: path).readClusters { _ in }
        #expect(summary.extents == 2 && summary.clusters == 59 && summary.storedBlocks == 0)
    }

    @Test("an archive without snapdump.json (as Proxmox writes it) reads back")
    func withoutMetadata() throws {
        let scratch = try Scratch("nometa")
        let devices = Array(sampleDevices().prefix(1))
        let path = scratch.path("n.vma.zst")
        try writeArchive(path: path, uuid: testUUID, devices: devices, configs: sampleConfigs,
                         order: shuffledOrder(devices, seed: 1), compression: .zstd(), reserved: nil)
        let reader = try VMAReader(path: path)
        #expect(reader.header.configs.map(\.name) == ["qemu-server.conf", "qemu-server.fw"])
        #expect(try reader.snapdumpMetadata() == nil)
        #expect(try reader.verify().metadataChecked == false)
    }
}
