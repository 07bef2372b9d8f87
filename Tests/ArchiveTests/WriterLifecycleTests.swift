import Foundation
import Testing
@testable import Archive

@Suite("VMAWriter lifecycle and argument checks")
struct WriterLifecycleTests {
    let dev = VMADevice(id: 1, name: "drive-scsi0", size: 3 * 65536)
    let conf = [VMAConfigBlob(name: "qemu-server.conf", text: "name: x\n")]

    func makeWriter(_ s: Scratch, _ compression: Compression = .zstd(), reserved: Int? = 512) throws -> VMAWriter {
        try VMAWriter(path: s.path("a.vma.dat"), ctime: 1, devices: [dev], configs: conf,
                      reservedMetadataSize: reserved, compression: compression)
    }

    func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p) }

    @Test("commit renames .dat to the final name; the archive is complete")
    func commit() throws {
        let s = try Scratch("life")
        let w = try makeWriter(s)
        #expect(exists(s.path("a.vma.dat")))
        for c in 0..<3 { try w.addZeroCluster(device: 1, cluster: UInt32(c)) }
        try w.finish(snapdumpJSON: Array(#"{"version":1}"#.utf8))
        #expect(!exists(s.path("a.vma.zst")))
        try w.commit(to: s.path("a.vma.zst"))
        #expect(!exists(s.path("a.vma.dat")))
        #expect(try VMAReader(path: s.path("a.vma.zst")).readClusters { _ in }.clusters == 3)
        #expect(throws: ArchiveError.self) { try w.commit(to: s.path("b.vma.zst")) }
    }

    @Test("abort, and dropping an unfinished writer, remove the .dat")
    func abortRemoves() throws {
        let s = try Scratch("abort")
        let w = try makeWriter(s)
        try w.addZeroCluster(device: 1, cluster: 0)
        w.abort()
        #expect(!exists(s.path("a.vma.dat")))
        w.abort()
        do {
            let w2 = try makeWriter(s)
            try w2.addZeroCluster(device: 1, cluster: 0)
        }
        #expect(!exists(s.path("a.vma.dat")))
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.dir).isEmpty)
    }

    @Test("commit refuses to replace an existing archive")
    func noReplace() throws {
        let s = try Scratch("noreplace")
        try writeFile(s.path("a.vma.zst"), [1, 2, 3])
        let w = try makeWriter(s)
        for c in 0..<3 { try w.addZeroCluster(device: 1, cluster: UInt32(c)) }
        #expect(throws: ArchiveError.self) { try w.finish(snapdumpJSON: nil) }   // room was reserved
        try w.finish(snapdumpJSON: Array("{}".utf8))
        #expect(throws: ArchiveError.self) { try w.commit(to: s.path("a.vma.zst")) }
        #expect(try readFile(s.path("a.vma.zst")) == [1, 2, 3])
        w.abort()
        #expect(!exists(s.path("a.vma.dat")))
    }

    @Test("every cluster exactly once: duplicates and missing clusters are refused")
    func clusterRules() throws {
        let s = try Scratch("rules")
        let w = try makeWriter(s)
        try w.addZeroCluster(device: 1, cluster: 0)
        let dup = try #require(throwing(ArchiveError.self) { try w.addZeroCluster(device: 1, cluster: 0) })
        #expect(dup.code == .duplicateCluster && dup.description.contains("duplicated cluster 0 of device 1 (drive-scsi0)"))
        #expect(throws: ArchiveError.self) { try w.addZeroCluster(device: 1, cluster: 3) }
        #expect(throws: ArchiveError.self) { try w.addZeroCluster(device: 2, cluster: 0) }
        try w.addZeroCluster(device: 1, cluster: 2)
        let missing = try #require(throwing(ArchiveError.self) { try w.finish(snapdumpJSON: Array("{}".utf8)) })
        #expect(missing.code == .missingCluster && missing.description.contains("missing cluster 1 of device 1 (drive-scsi0)"))
        w.abort()
    }

    @Test("snapdump.json larger than its reserved room is refused before anything is written")
    func metadataTooLarge() throws {
        let s = try Scratch("big")
        let w = try makeWriter(s, reserved: 16)
        for c in 0..<3 { try w.addZeroCluster(device: 1, cluster: UInt32(c)) }
        let e = try #require(throwing(ArchiveError.self) { try w.finish(snapdumpJSON: Array(#"{"version":1,"more":"x"}"#.utf8)) })
        #expect(e.code == .invalidArgument && e.description.contains("exceeds the 16 bytes reserved"))
        try w.finish(snapdumpJSON: Array(#"{"version":1}"#.utf8))
        try w.commit(to: s.path("a.vma.zst"))
        #expect(try VMAReader(path: s.path("a.vma.zst")).config(named: "snapdump.json") == Array(#"{"version":1   }"#.utf8))
    }

    @Test("bad arguments")
    func badArguments() throws {
        let s = try Scratch("args")
        let lzo = try #require(throwing(ArchiveError.self) { _ = try makeWriter(s, .lzo) })
        #expect(lzo.description.contains("lzo not supported: no maintained library"))
        #expect(!exists(s.path("a.vma.dat")))
        for devs in [[VMADevice(id: 0, name: "drive-scsi0", size: 1)], [VMADevice(id: 255, name: "d", size: 1)],
                     [VMADevice(id: 1, name: "d", size: 0)], [dev, dev], []] {
            #expect(throws: ArchiveError.self) {
                try VMAWriter(path: s.path("x.dat"), ctime: 1, devices: devs, configs: conf, reservedMetadataSize: nil, compression: .none)
            }
        }
        #expect(throws: ArchiveError.self) {
            try VMAWriter(path: s.path("x.dat"), ctime: 1, devices: [dev], configs: [VMAConfigBlob(name: "snapdump.json", text: "{}")],
                          reservedMetadataSize: 100, compression: .none)
        }
        #expect(throws: ArchiveError.self) {
            try VMAWriter(path: s.path("x.dat"), ctime: 1, devices: [dev],
                          configs: [VMAConfigBlob(name: "big", data: [UInt8](repeating: 1, count: 70000))],
                          reservedMetadataSize: nil, compression: .none)
        }
        #expect(!exists(s.path("x.dat")))
    }

    @Test("a short buffer for the last partial cluster is enough")
    func shortLastCluster() throws {
        let s = try Scratch("short")
        let small = VMADevice(id: 3, name: "drive-virtio0", size: 4608)
        let w = try VMAWriter(path: s.path("s.dat"), ctime: 1, devices: [small], configs: conf, reservedMetadataSize: nil, compression: .none)
        let data = [UInt8](repeating: 7, count: 4608)
        try data.withUnsafeBytes { try w.addCluster(device: 3, cluster: 0, data: $0) }
        try w.finish(snapdumpJSON: nil)
        try w.commit(to: s.path("s.vma"))
        let parsed = try independentParse(try readFile(s.path("s.vma")))
        #expect(parsed.entries.map(\.mask) == [0b11])
        #expect(parsed.contents[3]! == data)
    }
}

/// The error `body` throws, if it is an `E`.
func throwing<E: Error>(_ type: E.Type, _ body: () throws -> Void) -> E? {
    do {
        try body()
        return nil
    } catch let e as E {
        return e
    } catch {
        return nil
    }
}
