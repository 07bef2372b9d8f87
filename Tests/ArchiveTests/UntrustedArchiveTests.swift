import Foundation
import Synchronization
import Testing
import SnapdumpSystem
@testable import Archive

/// Header bytes no honest writer produces: a valid header with fields
/// patched afterwards and its MD5 recomputed (with the test's own MD5), so
/// the reader's checks past the checksum are what is exercised.
struct HostileHeader {
    var bytes: [UInt8]

    /// `devices` with placeholder names of the right length; patch them later.
    init(devices: [VMADevice], configs: [VMAConfigBlob] = [VMAConfigBlob(name: "qemu-server.conf", text: "name: x\n")]) throws {
        bytes = try VMAHeader(uuid: testUUID, ctime: 1, configs: configs, devices: devices).encode()
    }

    mutating func setSize(device id: Int, _ size: UInt64) {
        for k in 0..<8 { bytes[4096 + 32 * id + 8 + k] = UInt8(truncatingIfNeeded: size >> (56 - 8 * UInt64(k))) }
    }

    /// Replaces the first occurrence of `old` in the blob buffer by `new` (same length).
    mutating func replace(_ old: String, with new: [UInt8]) {
        let o = Array(old.utf8)
        precondition(o.count == new.count)
        let start = (12288...(bytes.count - o.count)).first { Array(bytes[$0..<$0 + o.count]) == o }!
        bytes.replaceSubrange(start..<start + o.count, with: new)
    }

    var sealed: [UInt8] {
        var b = bytes
        for i in 32..<48 { b[i] = 0 }
        b.replaceSubrange(32..<48, with: TestMD5.digest(b))
        return b
    }
}

/// The process's resident memory in bytes (VmRSS): what an allocation that is
/// also initialized costs, as a bitmap or digest list per claimed cluster would.
func residentBytes() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
}

@Suite("Untrusted archives: bounded header values, any cluster order, Proxmox names, regular files only", .serialized)
struct UntrustedArchiveTests {
    typealias E = RawArchiveBuilder.Entry
    let b = RawArchiveBuilder()

    func expectError(_ bytes: [UInt8], _ code: ArchiveError.Code, _ text: String,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        let s = try Scratch("untrusted")
        try writeFile(s.path("x.vma"), bytes)
        let e = try #require(readError(s.path("x.vma")), "expected \(code)", sourceLocation: sourceLocation)
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
        #expect(e.description.contains(text), "\(e)", sourceLocation: sourceLocation)
        #expect(!e.description.contains("\n"), "one line: \(e)", sourceLocation: sourceLocation)
    }

    // Item 5: sizes are bounded before use.

    @Test("device sizes past 2^48 are refused in the header, naming the device", arguments: [UInt64.max, 1 << 63, 1 << 50, (1 << 48) + 512] as [UInt64])
    func hugeDeviceSize(size: UInt64) throws {
        var h = try HostileHeader(devices: [VMADevice(id: 1, name: "drive-scsi0", size: 65536)])
        h.setSize(device: 1, size)
        try expectError(h.sealed + b.extent([]), .format, "device 1 claims \(size) bytes, more than the 2^48 bytes (256 TiB)")
    }

    @Test("the largest sizes a header may claim cost no memory: 254 devices × 1 TiB, and one of 2^48 bytes")
    func claimedSizeDoesNotAllocate() throws {
        let tib: UInt64 = 1 << 40
        // With snapdump.json, so that digests are computed too.
        func meta(_ devices: [(String, UInt64)]) throws -> [VMAConfigBlob] {
            [VMAConfigBlob(name: "snapdump.json", data: try SnapdumpMetadata(
                devices: devices.map { .init(name: $0.0, size: $0.1, sha256: SHA256Digest()) },
                mode: "stop", downtimeMs: nil, startTime: 0, snapdumpVersion: "t").encoded())]
        }
        let names = (1...254).map { "drive-scsi\($0)" }
        let many = try HostileHeader(devices: (1...254).map { VMADevice(id: UInt8($0), name: names[$0 - 1], size: tib) },
                                     configs: meta(names.map { ($0, tib) }))
        var one = try HostileHeader(devices: [VMADevice(id: 1, name: "drive-scsi0", size: 65536)], configs: meta([("drive-scsi0", 1 << 48)]))
        one.setSize(device: 1, 1 << 48)
        for (h, device) in [(many.sealed, "device 1 (drive-scsi1)"), (one.sealed, "device 1 (drive-scsi0)")] {
            let s = try Scratch("claims")
            // A few clusters of device 1 far apart and out of order, then the stream ends.
            let stream = h + b.extent([E(cluster: (1 << 24) - 1), E(cluster: 5, mask: 1), E(cluster: 0)]) + b.extent([])
            try writeFile(s.path("x.vma"), stream)
            let before = residentBytes()
            var peak = 0
            let reader = try VMAReader(path: s.path("x.vma"))
            let e = try #require(throwing(ArchiveError.self) {
                try reader.verify(targets: [:]) { _ in peak = max(peak, residentBytes() - before) }
            })
            #expect(e.code == .missingCluster && e.description.contains("missing cluster 1 of \(device)"), "\(e)")
            #expect(peak < 256 << 20, "memory grew to \(peak >> 20) MiB with the claimed size")
        }
    }

    @Test("an extracted device of a claimed size the filesystem cannot hold fails cleanly and leaves nothing")
    func extractLeavesNothing() throws {
        var h = try HostileHeader(devices: [VMADevice(id: 1, name: "drive-scsi0", size: 65536), VMADevice(id: 2, name: "drive-scsi1", size: 65536)])
        h.setSize(device: 1, 1 << 48)
        h.setSize(device: 2, 1 << 40)
        let s = try Scratch("extract-huge")
        try writeFile(s.path("x.vma"), h.sealed + b.extent([E(dev: 2, cluster: 3)]) + b.extent([]))
        let e = try #require(throwing(ArchiveError.self) { _ = try VMAExtractor.extract(archive: s.path("x.vma"), to: s.path("out")) })
        #expect(!e.description.contains("\n"))
        #expect(!FileSystem.exists(s.path("out")), "\(e)")
    }

    // Item 6: any order the format allows.

    /// 40 MiB + one sector: 11 chunks of 4 MiB, clusters dealt round-robin
    /// over all chunks — far more chunks open at once than buffers.
    static let scattered: TestDevice = {
        let size = 40 * 1024 * 1024 + 512
        var c = [UInt8](repeating: 0, count: size)
        var rng = SeededRandom(17)
        for i in stride(from: 0, to: size, by: 4096) where rng.next() % 3 != 0 {
            for k in i..<min(i + 512, size) { c[k] = UInt8(truncatingIfNeeded: rng.next()) | 1 }
        }
        return TestDevice(device: VMADevice(id: 1, name: "drive-scsi0", size: UInt64(size)), content: c, holes: [])
    }()

    static func roundRobin(_ d: TestDevice) -> [(UInt8, UInt32)] {
        let clusters = Int(d.device.clusterCount)
        let chunks = (clusters + 63) / 64
        var order: [(UInt8, UInt32)] = []
        for k in 0..<64 { for chunk in 0..<chunks where chunk * 64 + k < clusters { order.append((1, UInt32(chunk * 64 + k))) } }
        return order
    }

    @Test("clusters scattered over the whole device verify, with the digest checked", arguments: [Compression.none, .zstd()])
    func scatteredOrderVerifies(compression: Compression) throws {
        let s = try Scratch("scattered")
        let path = s.path("a.vma" + compression.kind.fileExtension)
        try writeArchive(path: path, uuid: testUUID, devices: [Self.scattered], configs: sampleConfigs,
                         order: Self.roundRobin(Self.scattered), compression: compression)
        let v = try VMAReader(path: path).verify(spillDirectory: s.dir)
        #expect(v.metadataChecked)
        #expect(v.deferredChunks > 0)
        #expect(v.digests[1] == Self.scattered.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.dir) == [(path as NSString).lastPathComponent], "no spill file left")
    }

    @Test("scattered clusters with a wrong digest in snapdump.json still fail verify and extract, and extract leaves nothing")
    func scatteredOrderStillChecksTheDigest() throws {
        let s = try Scratch("scattered-bad")
        let d = Self.scattered
        var wrong = d.content
        wrong[3 * 1024 * 1024 + 7] ^= 0x40
        let meta = try SnapdumpMetadata(devices: [.init(name: d.device.name, size: d.device.size,
                                                        sha256: wrong.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })],
                                        mode: "snapshot", downtimeMs: 1, startTime: 0, snapdumpVersion: "t").encoded()
        try writeArchive(path: s.path("a.vma"), uuid: testUUID, devices: [d], configs: sampleConfigs,
                         order: Self.roundRobin(d), compression: .none, metadata: meta)
        let e = try #require(throwing(ArchiveError.self) { try VMAReader(path: s.path("a.vma")).verify(spillDirectory: s.dir) })
        #expect(e.code == .digestMismatch, "\(e)")
        let x = try #require(throwing(ArchiveError.self) { _ = try VMAExtractor.extract(archive: s.path("a.vma"), to: s.path("out")) })
        #expect(x.code == .digestMismatch, "\(x)")
        #expect(!FileSystem.exists(s.path("out")))
    }

    @Test("scattered clusters extract byte for byte; the deferred chunks are hashed from the extracted file")
    func scatteredOrderExtracts() throws {
        let s = try Scratch("scattered-x")
        let d = Self.scattered
        try writeArchive(path: s.path("a.vma.zst"), uuid: testUUID, devices: [d], configs: sampleConfigs,
                         order: Self.roundRobin(d), compression: .zstd())
        let r = try VMAExtractor.extract(archive: s.path("a.vma.zst"), to: s.path("out"))
        #expect(r.metadataChecked)
        #expect(try readFile(s.path("out/disk-drive-scsi0.raw")) == d.content)
    }

    // Item 7: whole sectors.

    @Test("the writer refuses a device that is not whole 512-byte sectors, and names the padded size")
    func writerRefusesPartialSector() throws {
        let s = try Scratch("sector")
        let e = try #require(throwing(ArchiveError.self) {
            _ = try VMAWriter(path: s.path("x.dat"), ctime: 1, devices: [VMADevice(id: 1, name: "drive-scsi0", size: 200000)],
                              configs: sampleConfigs, reservedMetadataSize: nil, compression: .none)
        })
        #expect(e.code == .invalidArgument)
        #expect(e.description.contains("size 200000 of device 'drive-scsi0' is not a multiple of 512 bytes (pad it to 200192"), "\(e)")
        #expect(!FileSystem.exists(s.path("x.dat")))
        #expect(VMAFormat.paddedDeviceSize(200000) == 200192)
        #expect(VMAFormat.paddedDeviceSize(4096) == 4096)
        #expect(VMAFormat.paddedDeviceSize(1) == 512)
        #expect(VMAFormat.paddedDeviceSize(UInt64.max) % 512 == 0)
    }

    @Test("golden archives hold whole sectors only", arguments: GoldenArchive.names)
    func goldenSizesAreSectors(name: String) throws {
        for d in try GoldenArchive.load(name).devices { #expect(d.device.size % 512 == 0, "\(name): \(d.device.name)") }
    }

    // Item 8: names and file types.

    @Test("device and config names Proxmox never writes are refused, shown escaped")
    func badNames() throws {
        let dev = VMADevice(id: 1, name: "drive-scsi0", size: 65536)
        for bad: [UInt8] in [Array("drive\nDEV:0".utf8), Array("drive/../x0".utf8), Array("drive scsi0".utf8), Array("drive-scs\u{1b}0".utf8),
                             Array("..drivescsi".utf8), Array("drive-scs\u{7f}0".utf8)] {
            var h = try HostileHeader(devices: [dev])
            h.replace("drive-scsi0", with: bad)
            let shown = String(reflecting: String(decoding: bad, as: UTF8.self))
            try expectError(h.sealed + b.extent([E(cluster: 0)]), .format, "device 1 has a name Proxmox never writes: \(shown)")
        }
        var c = try HostileHeader(devices: [dev])
        c.replace("qemu-server.conf", with: Array("qemu-server\nDEV:".utf8))
        try expectError(c.sealed + b.extent([E(cluster: 0)]), .format, #"config 0 has a name Proxmox never writes: "qemu-server\nDEV:""#)
        var twice = try HostileHeader(devices: [dev, VMADevice(id: 2, name: "drive-scsi1", size: 65536)])
        twice.replace("drive-scsi1", with: Array("drive-scsi0".utf8))
        try expectError(twice.sealed + b.extent([E(cluster: 0)]), .format, "device name 'drive-scsi0' used twice")
    }

    @Test("snapdump.json strings that vma list prints must be what snapdump writes")
    func metadataStrings() throws {
        let s = try Scratch("meta")
        let good = SnapdumpMetadata.Device(name: "drive-scsi0", size: 65536, sha256: SHA256Digest())
        var forgedName = good
        forgedName.name = "drive-scsi0\nDEV: x"
        var badHex = good
        badHex.sha256 = "zz"
        for (devices, mode, why) in [([good], "snapshot\nDEV: forged", "unknown mode"), ([forgedName], "stop", "bad device name"),
                                     ([badHex], "stop", "is not 64 hex digits")] {
            let meta = try SnapdumpMetadata(devices: devices, mode: mode, downtimeMs: nil, startTime: 0, snapdumpVersion: "t").encoded()
            let d = TestDevice(device: VMADevice(id: 1, name: "drive-scsi0", size: 65536), content: [UInt8](repeating: 0, count: 65536), holes: [0])
            try writeArchive(path: s.path("m.vma"), uuid: testUUID, devices: [d], configs: sampleConfigs, order: [(1, 0)],
                             compression: .none, reserved: 1024, metadata: meta)
            let e = try #require(throwing(ArchiveError.self) { _ = try VMAReader(path: s.path("m.vma")).snapdumpMetadata() })
            #expect(e.description.contains("malformed snapdump.json") && e.description.contains(why), "\(e)")
            try FileManager.default.removeItem(atPath: s.path("m.vma"))
        }
    }

    @Test("a FIFO named .vma is refused at once instead of blocking; a directory too")
    func notARegularFile() throws {
        let s = try Scratch("fifo")
        let fifo = s.path("x.vma")
        #expect(mkfifo(fifo, 0o600) == 0)
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<ArchiveError?>(nil)
        let thread = Thread {
            do { _ = try VMAReader(path: fifo) } catch let e as ArchiveError { result.withLock { $0 = e } } catch {}
            done.signal()
        }
        thread.start()
        if done.wait(timeout: .now() + 10) == .timedOut {
            Issue.record("opening a FIFO blocked")
            let w = open(fifo, O_WRONLY | O_NONBLOCK)   // lets the blocked open return
            done.wait()
            close(w)
        }
        let e = try #require(result.withLock { $0 })
        #expect(e.description.contains("not a regular file (a FIFO)"), "\(e)")
        try FileManager.default.createDirectory(atPath: s.path("d.vma"), withIntermediateDirectories: false)
        let d = try #require(readError(s.path("d.vma")))
        #expect(d.description.contains("not a regular file (a directory)"), "\(d)")
    }
}
