import Foundation
import Testing
import SnapdumpSystem
@testable import Archive

/// zstd archives built as segments (VMASegmentEncoder) on several threads and
/// appended in stream order (issue 15): still a multi-frame zstd file of a
/// valid VMA stream, read by `zstd` and by the independent parser.
@Suite("VMA segments compressed apart")
struct SegmentEncoderTests {
    @Test("segments built on two threads, appended in order after clusters added one by one, decompress to a valid VMA stream")
    func segmentsMixedWithClusters() throws {
        let s = try Scratch("segments")
        // Device 1: 9 MiB + 5 KiB (a partial last cluster); device 2: 3 MiB of holes and data.
        let a = content(size: 9 * 1048576 + 5 * 1024, runs: [(0, 4 * 1048576, 1), (8 * 1048576, 1048576 + 5 * 1024, 2)])
        let b = content(size: 3 * 1048576, runs: [(1048576, 1048576, 3)])
        let devices = [VMADevice(id: 1, name: "drive-scsi0", size: UInt64(a.count)), VMADevice(id: 2, name: "drive-scsi1", size: UInt64(b.count))]
        let w = try VMAWriter(path: s.path("a.dat"), ctime: 1_700_000_000, devices: devices, configs: [],
                              reservedMetadataSize: 1024, compression: .zstd(level: 3, workers: 2))
        // Device 2's first cluster the sequential way: the pending extent goes out before the first segment.
        try b.withUnsafeBytes { try w.addCluster(device: 2, cluster: 0, data: UnsafeRawBufferPointer(rebasing: $0[0..<65536])) }

        let chunk = DeviceDigest.chunkSize
        final class Built: @unchecked Sendable {
            var segments: [(VMASegmentEncoder.Segment, [UInt8])] = []
            var digests: [Int: SHA256Digest] = [:]
        }
        // Segment 0: device 1's chunks 0 and 1 (the second all zero: a hole, not added as data);
        // segment 1: chunk 2 (short) and device 2's other clusters. Built in reverse order, on two threads.
        let built = [Built(), Built()]
        let encoders = [try #require(try w.makeSegmentEncoder()), try #require(try w.makeSegmentEncoder())]
        let jobs: [@Sendable (VMASegmentEncoder, Built) throws -> Void] = [
            { e, out in
                out.digests[0] = try a.withUnsafeBytes { try e.addChunk(device: 1, firstCluster: 0, data: UnsafeRawBufferPointer(rebasing: $0[0..<chunk])) }
                for c in 64..<128 { try e.addZeroCluster(device: 1, cluster: UInt32(c)) }
            },
            { e, out in
                out.digests[2] = try a.withUnsafeBytes { try e.addChunk(device: 1, firstCluster: 128, data: UnsafeRawBufferPointer(rebasing: $0[(2 * chunk)...])) }
                for c in 1..<48 {
                    try b.withUnsafeBytes { try e.addCluster(device: 2, cluster: UInt32(c), data: UnsafeRawBufferPointer(rebasing: $0[(c * 65536)..<((c + 1) * 65536)])) }
                }
            },
        ]
        let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: VMASegmentEncoder.frameCapacity, alignment: 64)
        defer { frame.deallocate() }
        let group = DispatchGroup()
        for i in [1, 0] {
            let e = encoders[i], out = built[i], job = jobs[i]
            DispatchQueue.global().async(group: group) {
                let f = UnsafeMutableRawBufferPointer.allocate(byteCount: VMASegmentEncoder.frameCapacity, alignment: 64)
                defer { f.deallocate() }
                try! job(e, out)
                let seg = try! e.seal(into: f)
                out.segments.append((seg, Array(UnsafeRawBufferPointer(rebasing: f[0..<seg.frameBytes]))))
            }
        }
        group.wait()
        for out in built {
            let (seg, bytes) = out.segments[0]
            try bytes.withUnsafeBytes { try w.append(seg, frame: $0) }
        }
        #expect(built[0].digests[0] == a.withUnsafeBytes { DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: $0[0..<chunk])) })
        #expect(built[1].digests[2] == a.withUnsafeBytes { DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: $0[(2 * chunk)...])) })
        // A cluster already in a segment is refused.
        #expect(throws: ArchiveError.self) { try w.addZeroCluster(device: 1, cluster: 3) }

        let json = try SnapdumpMetadata(devices: [], mode: "stop", downtimeMs: 0, startTime: 0, snapdumpVersion: "test").encoded()
        try w.finish(snapdumpJSON: json)
        #expect(w.statistics.clusters == UInt64(devices[0].clusterCount + devices[1].clusterCount))
        try w.commit(to: s.path("a.vma.zst"))

        try Command.run(["zstd", "-t", "-q", s.path("a.vma.zst")])
        let parsed = try independentParse(try systemDecompress(s.path("a.vma.zst"), .zstd))
        #expect(parsed.contents[1] == a)
        #expect(parsed.contents[2] == b)
        // 1 sequential extent; segment 0: 128 clusters (59 + 59 + 10); segment 1: 17 + 47 (59 + 5); the closing empty one.
        #expect(parsed.extentEntryCounts == [1, 59, 59, 10, 59, 5, 0])
    }
}
