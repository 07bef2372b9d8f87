import Archive
import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// Hostile archives through the real CLI (issue 13, items 5–8): `vma
/// list|config|verify|extract` and `restore` never trap, print one `Error:`
/// line, exit non-zero and leave nothing behind — no volume, VM config or
/// extract directory. Restores go to a dir storage; no QEMU is needed.
@Suite("Untrusted archives through the CLI", .serialized)
struct UntrustedArchiveCLITests {
    static let uuid = UUID(uuidString: "0BAD0BAD-0BAD-0BAD-0BAD-0BAD0BAD0BAD")!

    /// A config dir with one dir storage `local` and no VM.
    func setUp(_ label: String) throws -> String {
        let dir = try Integration.scratchDirectory("untrusted-\(label)")
        try FileSystem.createDirectory(dir + "/store")
        let r = try SnapdumpBinary.run(["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"], configDir: dir)
        guard r.status == 0 else { throw HarnessError("storage add: \(r)") }
        return dir
    }

    /// A header with `devices` (placeholder sizes) and a VM config mapping each
    /// to `local`, then `patch` applied to the bytes and the MD5 redone.
    func header(_ devices: [VMADevice], patch: (inout [UInt8]) -> Void = { _ in }) throws -> [UInt8] {
        var conf = "name: hostile\nmemory: 128\n"
        for d in devices { conf += "#qmdump#map:\(d.name.dropFirst("drive-".count)):\(d.name):local:raw:\n" }
        var h = try VMAHeader(uuid: Self.uuid, ctime: 1_700_000_000, configs: [VMAConfigBlob(name: "qemu-server.conf", text: conf)],
                              devices: devices).encode()
        patch(&h)
        for i in 32..<48 { h[i] = 0 }
        let md5 = h.withUnsafeBytes { MD5.digest($0) }
        h.replaceSubrange(32..<48, with: md5)
        return h
    }

    /// An extent of mask-0 (all-zero) clusters.
    func zeroExtent(_ entries: [(dev: UInt8, cluster: UInt32)]) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: 512)
        e.replaceSubrange(0..<4, with: Array("VMAE".utf8))
        withUnsafeBytes(of: Self.uuid.uuid) { e.replaceSubrange(8..<24, with: $0) }
        for (i, x) in entries.enumerated() {
            let v = UInt64(x.dev) << 32 | UInt64(x.cluster)
            for k in 0..<8 { e[40 + 8 * i + k] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(k))) }
        }
        let md5 = e.withUnsafeBytes { MD5.digest($0) }
        e.replaceSubrange(24..<40, with: md5)
        return e
    }

    static func setSize(_ h: inout [UInt8], device id: Int, _ size: UInt64) {
        for k in 0..<8 { h[4096 + 32 * id + 8 + k] = UInt8(truncatingIfNeeded: size >> (56 - 8 * UInt64(k))) }
    }

    func volumes(_ dir: String) throws -> [String] {
        try SnapdumpBinary.run(["volume", "list", "local"], configDir: dir).stdout.split(separator: "\n").dropFirst().map { String($0) }
    }

    /// Runs the five commands on `archive`; those in `failing` must fail cleanly.
    func expectRefused(_ dir: String, _ archive: String, failing: Set<String>, because text: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let commands: [(String, [String])] = [
            ("list", ["vma", "list", archive]), ("config", ["vma", "config", archive]), ("verify", ["vma", "verify", archive]),
            ("extract", ["vma", "extract", archive, dir + "/extracted"]), ("restore", ["restore", archive, "150"]),
        ]
        for (name, args) in commands {
            let r = try SnapdumpBinary.run(args, configDir: name == "restore" ? dir : nil)
            guard failing.contains(name) else {
                #expect(r.status == 0, "\(name): \(r)", sourceLocation: sourceLocation)
                continue
            }
            #expect(r.status == 1, "\(name) must fail with an error, not a signal: \(r)", sourceLocation: sourceLocation)
            // One `Error:` line; restore logs its INFO lines before it.
            #expect(r.errorLines.filter { $0.hasPrefix("Error: ") }.count == 1, "\(name): one error line: \(r)", sourceLocation: sourceLocation)
            #expect(r.errorLines.allSatisfy { $0.hasPrefix("Error: ") || $0.hasPrefix("INFO: ") }, "\(name): \(r)", sourceLocation: sourceLocation)
            #expect(r.stderr.contains(text), "\(name): \(r)", sourceLocation: sourceLocation)
            #expect(!r.stdout.contains("DEV:"), "\(name): \(r)", sourceLocation: sourceLocation)
            #expect(!FileSystem.exists(dir + "/extracted"), "\(name) left the extract dir", sourceLocation: sourceLocation)
            #expect(!FileSystem.exists(dir + "/qemu/150.conf"), "\(name) left a VM config", sourceLocation: sourceLocation)
            #expect(try volumes(dir).isEmpty, "\(name) left volumes", sourceLocation: sourceLocation)
        }
    }

    @Test("claimed device sizes past 2^48 (2^64-1, 2^63, 2^50): no trap, nothing allocated",
          arguments: [UInt64.max, 1 << 63, 1 << 50] as [UInt64])
    func hugeSizes(size: UInt64) throws {
        let dir = try setUp("huge")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try header([VMADevice(id: 1, name: "drive-scsi0", size: 65536)]) { Self.setSize(&$0, device: 1, size) }
        try Data(h + zeroExtent([(1, 0)])).write(to: URL(fileURLWithPath: dir + "/huge.vma"))
        try expectRefused(dir, dir + "/huge.vma", failing: ["list", "config", "verify", "extract", "restore"],
                          because: "device 1 claims \(size) bytes")
    }

    @Test("254 devices × 1 TiB and a stream that ends early: verify, extract and restore fail without memory growth and free all 254 volumes")
    func manyHugeDevices() throws {
        let dir = try setUp("many")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let devices = (1...254).map { VMADevice(id: UInt8($0), name: "drive-scsi\($0)", size: 1 << 40) }
        try Data(try header(devices) + zeroExtent((1...59).map { (UInt8($0), 0) })).write(to: URL(fileURLWithPath: dir + "/many.vma"))
        try expectRefused(dir, dir + "/many.vma", failing: ["verify", "extract", "restore"], because: "missing cluster 1 of device 1 (drive-scsi1)")
        // Memory stays small: GNU time's maximum resident set of `vma verify`.
        let timed = try Command.capture(["/usr/bin/time", "-f", "maxrss=%M", SnapdumpBinary.binary, "vma", "verify", dir + "/many.vma"])
        let kib = Int(timed.stderr.split(separator: "\n").first { $0.hasPrefix("maxrss=") }?.dropFirst(7) ?? "") ?? Int.max
        #expect(kib < 200 * 1024, "vma verify used \(kib) KiB")
    }

    @Test("names Proxmox never writes are refused by every command; vma list prints no forged line")
    func forgedNames() throws {
        let dir = try setUp("names")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try header([VMADevice(id: 1, name: "drive-scsi0", size: 65536)]) { h in
            // The device name blob comes last: replace its last occurrence.
            let name = Array("drive-scsi0".utf8)
            let at = stride(from: h.count - name.count, through: 12288, by: -1).first { Array(h[$0..<$0 + name.count]) == name }!
            h.replaceSubrange(at..<at + name.count, with: Array("x\nDEV: 9 9".utf8) + [0x20])
        }
        try Data(h + zeroExtent([(1, 0)])).write(to: URL(fileURLWithPath: dir + "/names.vma"))
        try expectRefused(dir, dir + "/names.vma", failing: ["list", "config", "verify", "extract", "restore"],
                          because: #"device 1 has a name Proxmox never writes: "x\nDEV: 9 9 ""#)
    }

    @Test("a snapdump.json whose strings would forge vma list lines is refused before anything is printed or allocated")
    func forgedMetadata() throws {
        let dir = try setUp("meta")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dev = VMADevice(id: 1, name: "drive-scsi0", size: 65536)
        let conf = "name: m\nmemory: 128\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"
        let archive = dir + "/meta.vma"
        let w = try VMAWriter(path: archive + ".dat", ctime: 1, devices: [dev], configs: [VMAConfigBlob(name: "qemu-server.conf", text: conf)],
                              reservedMetadataSize: 1024, compression: .none)
        try w.addZeroCluster(device: 1, cluster: 0)
        let meta = SnapdumpMetadata(devices: [.init(name: dev.name, size: dev.size, sha256: SHA256Digest())],
                                    mode: "stop\nDEV: dev_id=9 size: 1 devname: forged", downtimeMs: nil, startTime: 0, snapdumpVersion: "t")
        try w.finish(snapdumpJSON: try meta.encoded())
        try w.commit(to: archive)
        try expectRefused(dir, archive, failing: ["list", "verify", "extract", "restore"], because: #"unknown mode "stop\nDEV: dev_id=9"#)
        #expect(try SnapdumpBinary.run(["vma", "list", archive]).stdout.isEmpty)
    }

    @Test("a FIFO named .vma is refused at once by every command")
    func fifo() throws {
        let dir = try setUp("fifo")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(mkfifo(dir + "/pipe.vma", 0o600) == 0)
        try expectRefused(dir, dir + "/pipe.vma", failing: ["list", "config", "verify", "extract", "restore"],
                          because: "not a regular file (a FIFO)")
    }

    @Test("clusters scattered over 11 chunks: vma verify and restore accept them and check the digest; the restored disk is exact")
    func scatteredOrderRestores() throws {
        let dir = try setUp("scattered")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 40 * 1024 * 1024 + 512
        var content = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 8192) { content[i] = UInt8(truncatingIfNeeded: i >> 13) | 1 }
        let dev = VMADevice(id: 1, name: "drive-scsi0", size: UInt64(size))
        let conf = "name: scattered\nmemory: 128\nscsi0: local:100/vm-100-disk-0.raw,size=\(size)\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"
        let archive = dir + "/vzdump-qemu-100-2024_01_01-00_00_00.vma.zst"
        let w = try VMAWriter(path: archive + ".dat", ctime: 1_700_000_000, devices: [dev], configs: [VMAConfigBlob(name: "qemu-server.conf", text: conf)],
                              reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: 1), compression: .zstd())
        let clusters = Int(dev.clusterCount)
        var buffer = [UInt8](repeating: 0, count: 65536)
        for k in 0..<64 {
            for chunk in 0..<((clusters + 63) / 64) where chunk * 64 + k < clusters {
                let c = chunk * 64 + k, start = c * 65536, end = min(start + 65536, size)
                buffer.replaceSubrange(0..<(end - start), with: content[start..<end])
                try buffer.withUnsafeBytes { try w.addCluster(device: 1, cluster: UInt32(c), data: $0) }
            }
        }
        let meta = SnapdumpMetadata(devices: [.init(name: dev.name, size: dev.size, sha256: content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })],
                                    mode: "snapshot", downtimeMs: 1, startTime: 0, snapdumpVersion: "test")
        try w.finish(snapdumpJSON: try meta.encoded())
        try w.commit(to: archive)

        let v = try SnapdumpBinary.run(["vma", "verify", archive])
        #expect(v.status == 0 && v.stdout.contains("device 1: sha256"), "\(v)")
        let r = try SnapdumpBinary.run(["restore", archive, "150"], configDir: dir)
        #expect(r.status == 0, "\(r)")
        #expect(r.stderr.contains("verified SHA-256 of 1 device(s)"), "\(r)")
        let restored = try Data(contentsOf: URL(fileURLWithPath: dir + "/store/images/150/vm-150-disk-0.raw"))
        #expect(restored.count >= size && Array(restored.prefix(size)) == content)
    }
}

/// Issue 13, item 7: a raw disk whose size is not whole sectors (a file
/// snapdump did not create) is archived as QEMU presents it, padded with
/// zeros to 512 bytes, so Proxmox's `vma` reads it whole.
@Suite("Disks that are not whole sectors", .serialized)
struct PartialSectorDiskTests {
    @Test func oddSizedRawDiskIsArchivedPaddedAndRestores() throws {
        let dir = try Integration.scratchDirectory("odd-sector")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileSystem.createDirectory(dir + "/store")
        func must(_ a: [String]) throws -> SnapdumpBinary.Result { try SnapdumpBinary.must(a, configDir: dir) }
        _ = try must(["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"])
        _ = try must(["vm", "create", "100", "--name", "odd", "--memory", "128", "--scsi0", "local:4M"])
        let disk = try must(["volume", "path", "local:100/vm-100-disk-0.raw"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let size = 4 * 1024 * 1024 + 100
        var content = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 997) { content[i] = UInt8(truncatingIfNeeded: i) | 1 }
        content[size - 1] = 0x7F   // the last byte of the partial sector holds data
        try Data(content).write(to: URL(fileURLWithPath: disk))

        let out = try must(["backup", "100", "--storage", "local", "--compress", "zstd", "--output-format", "json"]).stdout
        let archive = try #require((try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first?["archive"] as? String)
        let padded = 4 * 1024 * 1024 + 512
        let list = try SnapdumpBinary.run(["vma", "list", archive])
        #expect(list.stdout.contains("DEV: dev_id=1 size: \(padded) devname: drive-scsi0"), "\(list)")
        let x = try SnapdumpBinary.run(["vma", "extract", archive, dir + "/x"])
        #expect(x.status == 0 && x.stdout.contains("verified SHA-256"), "\(x)")
        let extracted = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/x/disk-drive-scsi0.raw")))
        #expect(extracted.count == padded)
        #expect(Array(extracted.prefix(size)) == content)
        #expect(extracted.dropFirst(size).allSatisfy { $0 == 0 })
        let r = try must(["restore", archive, "101"])
        #expect(r.stderr.contains("verified SHA-256 of 1 device(s)"))
    }
}
