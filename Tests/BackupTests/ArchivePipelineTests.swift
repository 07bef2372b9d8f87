import Archive
import Foundation
import SnapdumpSystem
import Storage
import Testing
@testable import Backup

@Suite struct ArchivePipelineTests {
    func scratch() throws -> String {
        let d = NSTemporaryDirectory() + "snapdump-pipeline-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// Deterministic, incompressible-ish content with zero stretches.
    func content(size: Int, seed: UInt64, zeroFrom: Int? = nil, zeroTo: Int? = nil) -> [UInt8] {
        var x = seed
        var b = [UInt8](repeating: 0, count: size)
        for i in 0..<size {
            if let f = zeroFrom, let t = zeroTo, i >= f && i < t { continue }
            x = x &* 6364136223846793005 &+ 1442695040888963407
            b[i] = UInt8(truncatingIfNeeded: x >> 33)
        }
        return b
    }

    func writeArchive(_ sources: [MemoryBlockSource], dir: String, compression: Compression, bwlimit: Int = 0, uuid: UUID = UUID(),
                      beforeSegment: (@Sendable (Int) throws -> Void)? = nil) throws -> (String, ArchivePipeline.Result) {
        let devices = sources.enumerated().map { VMADevice(id: UInt8($0.offset + 1), name: "drive-scsi\($0.offset)", size: $0.element.size) }
        let w = try VMAWriter(path: dir + "/a.dat", uuid: uuid, ctime: 1_700_000_000, devices: devices,
                              configs: [VMAConfigBlob(name: "qemu-server.conf", data: Array("memory: 128\n".utf8))],
                              reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: devices.count), compression: compression)
        let p = ArchivePipeline(writer: w, devices: zip(devices, sources).map { .init(id: $0.id, name: $0.name, source: $1) },
                                bwlimitKiB: bwlimit, bufferCount: 3, progress: nil, interrupt: Interrupt())
        p.beforeSegment = beforeSegment
        let r = try p.run()
        let meta = SnapdumpMetadata(devices: devices.map { .init(name: $0.name, size: $0.size, sha256: r.digests[$0.id]!) },
                                    mode: "snapshot", downtimeMs: 1, startTime: 0, snapdumpVersion: "test")
        try w.finish(snapdumpJSON: try meta.encoded())
        try w.commit(to: dir + "/a.vma")
        return (dir + "/a.vma", r)
    }

    @Test(arguments: [Compression.none, .zstd(level: 1, workers: 2), .gzip])
    func roundTripThroughTheReader(compression: Compression) throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // 9 MiB + 5 KiB: three chunks, a partial cluster and a partial block at the end.
        let a = content(size: 9 * 1048576 + 5 * 1024, seed: 1, zeroFrom: 4 * 1048576, zeroTo: 8 * 1048576)
        let b = content(size: 200 * 1024, seed: 2)
        let (path, r) = try writeArchive([MemoryBlockSource(bytes: a), MemoryBlockSource(bytes: b)], dir: dir, compression: compression)
        #expect(r.digests[1] == a.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        #expect(r.digests[2] == b.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })

        var out: [UInt8: [UInt8]] = [1: [UInt8](repeating: 0xEE, count: a.count), 2: [UInt8](repeating: 0xEE, count: b.count)]
        let reader = try VMAReader(path: path)
        let v = try reader.verify { c in
            var full = [UInt8](repeating: 0, count: 65536)
            full.withUnsafeMutableBytes { c.expand(into: $0) }
            let start = Int(c.deviceOffset)
            out[c.deviceID]!.replaceSubrange(start..<start + c.validBytes, with: full[0..<c.validBytes])
        }
        #expect(v.metadataChecked)
        #expect(out[1]! == a)
        #expect(out[2]! == b)
    }

    @Test func holesAreNeverRead() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 16 * 1048576
        var bytes = [UInt8](repeating: 0, count: size)
        for i in 0..<4096 { bytes[12 * 1048576 + i] = UInt8(i & 0xff) }
        // The storage says only [12 MiB, 12 MiB + 4 KiB) holds data.
        let src = MemoryBlockSource(bytes: bytes, allocation: [
            AllocationRange(offset: 0, length: 12 * 1048576, kind: .zero),
            AllocationRange(offset: 12 * 1048576, length: 4096, kind: .data),
            AllocationRange(offset: 12 * 1048576 + 4096, length: UInt64(size - 12 * 1048576 - 4096), kind: .zero),
        ])
        let (path, r) = try writeArchive([src], dir: dir, compression: .none)
        #expect(src.reads.count == 1)
        #expect(src.reads.first?.0 == 12 * 1048576)
        #expect(r.bytesRead == 4 * 1048576)
        #expect(r.digests[1] == bytes.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        _ = try VMAReader(path: path).verify()
    }

    @Test func aReadErrorFailsTheRunAndFreesTheReader() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let src = MemoryBlockSource(bytes: content(size: 40 * 1048576, seed: 3), failAt: 21 * 1048576, name: "bad-disk")
        #expect {
            _ = try writeArchive([src], dir: dir, compression: .zstd(level: 1, workers: 1))
        } throws: { "\($0)".contains("injected read error in 'bad-disk'") }
        // VMAWriter is dropped uncommitted: its .dat is gone, and no archive appeared.
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.vma"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.dat"))
    }

    /// zstd segments (SegmentPipeline): the device bytes of the tests below, data and holes mixed.
    func segmentDisk() -> MemoryBlockSource {
        // 70 MiB + 5 KiB: segments of 4 data chunks, a hole of 12 MiB inside, a partial cluster at the end.
        let size = 70 * 1048576 + 5 * 1024
        let bytes = content(size: size, seed: 7, zeroFrom: 20 * 1048576, zeroTo: 36 * 1048576)
        return MemoryBlockSource(bytes: bytes, allocation: [
            AllocationRange(offset: 0, length: 24 * 1048576, kind: .data),
            AllocationRange(offset: 24 * 1048576, length: 12 * 1048576, kind: .zero),
            AllocationRange(offset: 36 * 1048576, length: UInt64(size - 36 * 1048576), kind: .data),
        ])
    }

    @Test func segmentsFinishingOutOfOrderAreWrittenInStreamOrder() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let uuid = UUID()
        // Two workers, every segment held back but the first: they finish in order. Four workers (on
        // this machine's two cores), every third segment held back: later ones finish first and wait for it.
        try FileManager.default.createDirectory(atPath: dir + "/one", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/four", withIntermediateDirectories: true)
        let src = segmentDisk()
        let (one, r1) = try writeArchive([src], dir: dir + "/one", compression: .zstd(level: 1, workers: 2), uuid: uuid) { n in
            if n > 0 { Thread.sleep(forTimeInterval: 0.05 * Double(n)) }
        }
        let (four, r4) = try writeArchive([segmentDisk()], dir: dir + "/four", compression: .zstd(level: 1, workers: 4), uuid: uuid) { n in
            if n % 3 == 0 { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(r1.digests[1] == src.bytes.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        #expect(r4.digests == r1.digests)
        #expect(r4.bytesRead == 58 * 1048576 + 5 * 1024)
        // Same frames in the same order: the same file, byte for byte.
        #expect(FileManager.default.contents(atPath: one) == FileManager.default.contents(atPath: four))
        // A standard multi-frame zstd file of a valid VMA stream holding the device.
        try Command.run(["zstd", "-t", "-q", four])
        var out = [UInt8](repeating: 0xEE, count: Int(src.size))
        let v = try VMAReader(path: four).verify { c in
            var full = [UInt8](repeating: 0, count: 65536)
            full.withUnsafeMutableBytes { c.expand(into: $0) }
            let start = Int(c.deviceOffset)
            out.replaceSubrange(start..<start + c.validBytes, with: full[0..<c.validBytes])
        }
        #expect(v.metadataChecked)
        #expect(out == src.bytes)
    }

    @Test func aFailingSegmentFailsTheRunCleanly() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        struct Injected: Error, CustomStringConvertible { var description: String { "injected failure of segment 0" } }
        // 32 chunks of data: 8 segments, more than the 4 slots of two workers.
        let src = MemoryBlockSource(bytes: [UInt8](repeating: 1, count: 128 * 1048576))
        #expect {
            _ = try writeArchive([src], dir: dir, compression: .zstd(level: 1, workers: 2)) { n in
                if n == 0 { Thread.sleep(forTimeInterval: 0.2); throw Injected() }
            }
        } throws: { "\($0)".contains("injected failure of segment 0") }
        // The run stopped reading (no slot came back after the failure) and left no archive, complete or not.
        #expect(src.reads.count <= 16)
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.vma"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.dat"))
    }

    @Test func interruptStopsTheReader() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let devices = [VMADevice(id: 1, name: "drive-scsi0", size: 64 * 1048576)]
        let w = try VMAWriter(path: dir + "/a.dat", ctime: 0, devices: devices, configs: [], reservedMetadataSize: nil, compression: .none)
        let interrupt = Interrupt()
        interrupt.raise(SIGTERM)
        let p = ArchivePipeline(writer: w, devices: [.init(id: 1, name: "drive-scsi0", source: MemoryBlockSource(bytes: content(size: 64 * 1048576, seed: 4)))],
                                bwlimitKiB: 0, progress: nil, interrupt: interrupt)
        #expect(throws: Interrupt.Interrupted.self) { _ = try p.run() }
        w.abort()
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.dat"))
    }

    @Test func bandwidthLimitThrottlesReads() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // 12 MiB at 16 MiB/s: the limit must stretch the run to ≥ ~0.5 s (it would take ms unthrottled).
        let t0 = Date()
        _ = try writeArchive([MemoryBlockSource(bytes: content(size: 12 * 1048576, seed: 5))], dir: dir, compression: .none, bwlimit: 16 * 1024)
        #expect(Date().timeIntervalSince(t0) >= 0.45)
    }
}
