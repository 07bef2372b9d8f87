#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem
import Testing
@testable import Archive

/// `VMAWriter(stream:)` (`backup --stdout`): the archive written into a real
/// pipe, in one pass, never seeking.
@Suite("VMAWriter into a stream")
struct StreamWriterTests {
    let devices = [VMADevice(id: 1, name: "drive-scsi0", size: 5 * 65536 + 4096), VMADevice(id: 2, name: "drive-virtio1", size: 2 * 65536)]
    let conf = [VMAConfigBlob(name: "qemu-server.conf", text: "name: x\n")]
    let uuid = UUID(uuidString: "5F3C2B1A-0000-4000-8000-0123456789AB")!

    /// Feeds every cluster of every device (data with holes), then finishes.
    func fill(_ w: VMAWriter) throws {
        var cluster = [UInt8](repeating: 0, count: VMAFormat.clusterSize)
        for d in devices {
            for c in 0..<Int(d.clusterCount) {
                if c % 3 == 1 { try w.addZeroCluster(device: d.id, cluster: UInt32(c)); continue }
                for i in 0..<cluster.count { cluster[i] = i % 8192 < 4096 ? patternByte(i + c, seed: Int(d.id)) : 0 }
                try cluster.withUnsafeBytes { try w.addCluster(device: d.id, cluster: UInt32(c), data: $0) }
            }
        }
    }

    /// A pipe whose read end a thread drains into memory; returns the write end and a function that waits for the bytes.
    func pipeReader() throws -> (File, () -> [UInt8]) {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        let box = Box()
        let reader = File(adopting: fds[0], path: "<pipe>")
        let done = DispatchSemaphore(value: 0)
        Thread {
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while let n = try? buf.withUnsafeMutableBytes({ try reader.readSome(into: $0) }), n > 0 { box.bytes += buf[0..<n] }
            done.signal()
        }.start()
        return (File(adopting: fds[1], path: "<stdout>", isStream: true), { done.wait(); return box.bytes })
    }

    final class Box: @unchecked Sendable { var bytes: [UInt8] = [] }

    @Test("the stream is byte for byte the archive a file writer makes without snapdump.json",
          arguments: [Compression.none, .gzip, .zstd(), .zstd(level: 3, workers: 2)])
    func streamEqualsFile(compression: Compression) throws {
        let s = try Scratch("stream")
        let file = try VMAWriter(path: s.path("a.dat"), uuid: uuid, ctime: 7, devices: devices, configs: conf,
                                 reservedMetadataSize: nil, compression: compression)
        try fill(file)
        try file.finish(snapdumpJSON: nil)
        try file.commit(to: s.path("a.vma"))

        let (out, collected) = try pipeReader()
        let w = try VMAWriter(stream: out, uuid: uuid, ctime: 7, devices: devices, configs: conf, compression: compression)
        #expect(w.isStreaming)
        try fill(w)
        try w.finish(snapdumpJSON: nil)
        let bytes = collected()   // EOF: finish closed the stream
        #expect(bytes == (try readFile(s.path("a.vma"))))
        #expect(w.statistics.fileBytes == UInt64(bytes.count))
        #expect(throws: ArchiveError.self) { try w.commit(to: s.path("b.vma")) }

        try writeFile(s.path("s.vma"), bytes)
        let r = try VMAReader(path: s.path("s.vma"))
        #expect(try r.readClusters { _ in }.clusters == devices.reduce(0) { $0 + $1.clusterCount })
        #expect(r.header.configs.map(\.name) == ["qemu-server.conf"])
    }

    @Test("a stream cannot carry snapdump.json; abort closes it (the reader sees a cut archive) and unlinks nothing")
    func metadataRefusedAndAbortCloses() throws {
        let (out, collected) = try pipeReader()
        let w = try VMAWriter(stream: out, uuid: uuid, ctime: 7, devices: devices, configs: conf, compression: .zstd())
        try w.addZeroCluster(device: 1, cluster: 0)
        #expect(throws: ArchiveError.self) { try w.finish(snapdumpJSON: Array("{}".utf8)) }
        w.abort()
        let bytes = collected()
        #expect(Compression.detect(bytes.prefix(4)) == .zstd)
        #expect(throws: ArchiveError.self) { try w.addZeroCluster(device: 1, cluster: 1) }
    }

    @Test("a reader that goes away: the write fails with EPIPE, not SIGPIPE")
    func brokenPipe() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        close(fds[0])
        let old = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, old) }
        let out = File(adopting: fds[1], path: "<stdout>", isStream: true)
        let e = #expect(throws: ArchiveError.self) {
            let w = try VMAWriter(stream: out, uuid: uuid, ctime: 7, devices: devices, configs: conf, compression: .none)
            try fill(w)
        }
        #expect(e?.description.contains("Broken pipe") == true, "\(String(describing: e))")
    }
}
