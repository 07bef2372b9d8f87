import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

/// Restore cost follows the data, not the disk size (issue 15): a 256 GiB
/// thin disk holding a few clusters is a stream of 4 million zero clusters,
/// read as runs. The time is measured in BENCHMARKS.md, not here.
@Suite("A big thin disk restores sparse")
struct ThinDiskTests {
    static let size: UInt64 = 256 << 30
    /// Clusters holding data: the first, a run across a chunk boundary, one in the middle, the last.
    static let dataClusters: [UInt32] = [0, 63, 64, 65, 1_000_003, UInt32(size / 65536 / 2), UInt32(size / 65536 - 1)]

    static func cluster(_ c: UInt32) -> [UInt8] {
        var rng = SeededRandom(UInt64(c) + 1)
        return (0..<VMAFormat.clusterSize / 8).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } }
    }

    @Test("256 GiB with 7 data clusters: extracted bytes equal, the file stays sparse, digest checked")
    func thinDisk() throws {
        let s = try Scratch("thin")
        let device = VMADevice(id: 1, name: "drive-scsi0", size: Self.size)
        let data = Dictionary(uniqueKeysWithValues: Self.dataClusters.map { ($0, Self.cluster($0)) })

        // The content digest snapdump.json carries, computed chunk by chunk.
        let digest = DeviceDigest(deviceSize: Self.size)
        var chunk = [UInt8](repeating: 0, count: DeviceDigest.chunkSize)
        for i in 0..<digest.chunkCount {
            let first = UInt32(i * DeviceDigest.clustersPerChunk)
            let inChunk = (first..<first + UInt32(DeviceDigest.clustersPerChunk)).filter { data[$0] != nil }
            guard !inChunk.isEmpty else { digest.record(chunk: i, digest: DeviceDigest.zeroChunkDigest); continue }
            chunk.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0) }
            for c in inChunk {
                let o = Int(c - first) * VMAFormat.clusterSize
                chunk.replaceSubrange(o..<o + VMAFormat.clusterSize, with: data[c]!)
            }
            digest.record(chunk: i, digest: chunk.withUnsafeBytes { DeviceDigest.digest(of: $0) })
        }
        let json = try SnapdumpMetadata(
            devices: [SnapdumpMetadata.Device(name: device.name, size: device.size, sha256: digest.finalDigest()!)],
            mode: "stop", downtimeMs: 0, startTime: 1_700_000_000, snapdumpVersion: "test").encoded()

        let path = s.path("thin.vma.zst")
        let w = try VMAWriter(path: path + ".dat", ctime: 1_700_000_000, devices: [device], configs: [],
                              reservedMetadataSize: 1024, compression: .zstd(level: 1, workers: 0))
        for c in 0..<UInt32(device.clusterCount) {
            if let d = data[c] {
                try d.withUnsafeBytes { try w.addCluster(device: 1, cluster: c, data: $0) }
            } else {
                try w.addZeroCluster(device: 1, cluster: c)
            }
        }
        try w.finish(snapdumpJSON: json)
        try w.commit(to: path)

        let r = try VMAExtractor.extract(archive: path, to: s.path("out"))
        #expect(r.metadataChecked)
        #expect(r.bytesWritten == UInt64(data.count * VMAFormat.clusterSize))
        let out = r.devices[0].path
        var st = stat()
        #expect(stat(out, &st) == 0)
        #expect(UInt64(st.st_size) == Self.size)
        // Allocated: the data clusters, not the disk (a few MiB at most for filesystem granularity).
        #expect(UInt64(st.st_blocks) * 512 < 8 << 20, "\(UInt64(st.st_blocks) * 512) bytes allocated")
        let f = try File.open(out, O_RDONLY)
        var back = [UInt8](repeating: 0, count: VMAFormat.clusterSize)
        for (c, d) in data {
            _ = try back.withUnsafeMutableBytes { try f.read(into: $0, at: UInt64(c) * UInt64(VMAFormat.clusterSize)) }
            #expect(back == d, "cluster \(c)")
        }
        // Zeros around the data.
        for c: UInt32 in [1, 62, 66, 1_000_002, 1_000_004] {
            _ = try back.withUnsafeMutableBytes { try f.read(into: $0, at: UInt64(c) * UInt64(VMAFormat.clusterSize)) }
            #expect(back.allSatisfy { $0 == 0 }, "cluster \(c)")
        }
    }
}
