import Archive
import Foundation
import SnapdumpSystem
import Testing
import TestSupport

// The archive commands run as the built binary (`.build/debug/snapdump`),
// with a temporary --config-dir and archives written by VMAWriter here.

/// The snapdump executable (one locator for every suite: `SnapdumpBinary`).
let snapdumpBinary = SnapdumpBinary.binary

/// A config dir with a `dir` storage `local` (content images,backup) whose dump dir is `dump`.
final class CLIFixture {
    let scratch: ScratchDir
    var configDir: String { scratch.file("etc") }
    var storePath: String { scratch.file("store") }
    var dump: String { storePath + "/dump" }

    init(_ label: String, pruneBackups: String? = "keep-last=2") throws {
        scratch = try ScratchDir("cli-\(label)")
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
        var cfg = "dir: local\n\tpath \(storePath)\n\tcontent images,backup\n"
        if let pruneBackups { cfg += "\tprune-backups \(pruneBackups)\n" }
        try cfg.write(toFile: configDir + "/storage.cfg", atomically: true, encoding: .utf8)
    }

    @discardableResult
    func touch(_ name: String, _ contents: String = "x") throws -> String {
        let p = dump + "/" + name
        try contents.write(toFile: p, atomically: false, encoding: .utf8)
        return p
    }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: dump + "/" + name) }

    /// Runs snapdump with `--config-dir` after the subcommand words, in UTC.
    func run(_ args: [String]) throws -> Command.Output {
        try Command.capture([snapdumpBinary] + args + ["--config-dir", configDir], environment: ["TZ": "UTC"])
    }
}

/// Runs snapdump without a config dir (vma commands take none).
func snapdump(_ args: [String]) throws -> Command.Output {
    try Command.capture([snapdumpBinary] + args, environment: ["TZ": "UTC"])
}

/// Device content for test archives: runs of a pattern, zeros elsewhere.
func testContent(size: Int, runs: [(Int, Int)], seed: UInt8) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: size)
    for (off, len) in runs { for i in off..<(off + len) { b[i] = UInt8(truncatingIfNeeded: i &* 31) &+ seed | 1 } }
    return b
}

/// Writes a snapdump VMA archive (with snapdump.json) at `path`.
func makeArchive(_ path: String, devices: [(name: String, content: [UInt8])], compression: Compression,
                 config: String = "name: web01\nmemory: 512\nscsi0: local:100/vm-100-disk-0.raw,size=1M\n") throws {
    let devs = devices.enumerated().map { VMADevice(id: UInt8($0.offset + 1), name: $0.element.name, size: UInt64($0.element.content.count)) }
    let w = try VMAWriter(path: path + ".dat", ctime: 1_700_000_000, devices: devs,
                          configs: [VMAConfigBlob(name: "qemu-server.conf", text: config)],
                          reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: devs.count), compression: compression)
    var cluster = [UInt8](repeating: 0, count: VMAFormat.clusterSize)
    for (d, dev) in zip(devices, devs) {
        for c in 0..<Int(dev.clusterCount) {
            let start = c * VMAFormat.clusterSize
            let end = min(start + VMAFormat.clusterSize, d.content.count)
            cluster.replaceSubrange(0..<(end - start), with: d.content[start..<end])
            try cluster.withUnsafeBytes { try w.addCluster(device: dev.id, cluster: UInt32(c), data: $0) }
        }
    }
    let meta = SnapdumpMetadata(
        devices: zip(devices, devs).map { d, dev in
            SnapdumpMetadata.Device(name: dev.name, size: dev.size, sha256: d.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
        },
        mode: "snapshot", downtimeMs: 3, startTime: 1_700_000_000, snapdumpVersion: "test")
    try w.finish(snapdumpJSON: try meta.encoded())
    try w.commit(to: path)
}

@Suite("CLI: backup archives, prune, vma", .serialized)
struct CLITests {
    @Test func binaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: snapdumpBinary), "build first: swift build (looked for \(snapdumpBinary))")
    }

    @Test("`snapdump backup <vmid> --mode snapshot` still runs a backup")
    func backupRunIsTheDefaultSubcommand() throws {
        let f = try CLIFixture("run")
        let o = try f.run(["backup", "100", "--mode", "snapshot"])
        #expect(o.status != 0)
        #expect(o.stderr.contains("unable to find configuration file for VM 100"), "\(o.stderr)")
        let all = try f.run(["backup", "--all", "--storage", "local"])
        #expect(all.stderr.contains("no guests selected"), "\(all.stderr)")
        let help = try snapdump(["backup", "--help"])
        #expect(help.stdout.contains("list") && help.stdout.contains("protect") && help.stdout.contains("(default)"))
    }

    @Test func listRemoveProtectNotes() throws {
        let f = try CLIFixture("list")
        let a1 = "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst"
        let a2 = "vzdump-qemu-100-2021_01_02-10_00_00.vma.gz"
        try f.touch(a1, "12345")
        try f.touch("vzdump-qemu-100-2021_01_01-10_00_00.log", "log")
        try f.touch(a2, "1")
        try f.touch("vzdump-qemu-101-2021_01_03-10_00_00.vma", "1")

        var o = try f.run(["backup", "list", "local"])
        #expect(o.status == 0, "\(o.stderr)")
        let lines = o.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[0].hasPrefix("Volid"))
        #expect(lines[1].hasPrefix("local:backup/vzdump-qemu-101-2021_01_03-10_00_00.vma "))
        #expect(lines[3].contains("local:backup/\(a1)") && lines[3].contains("2021-01-01 10:00:00") && lines[3].contains("5 B"))

        o = try f.run(["backup", "list", "local", "--vmid", "101"])
        #expect(o.stdout.split(separator: "\n").count == 2)

        // Notes by path, shown by volid and in the listing.
        o = try f.run(["backup", "notes", f.dump + "/" + a1, "--set", "before upgrade\nsecond line"])
        #expect(o.status == 0, "\(o.stderr)")
        o = try f.run(["backup", "notes", "local:backup/\(a1)"])
        #expect(o.stdout == "before upgrade\nsecond line\n")
        o = try f.run(["backup", "list", "local", "--vmid", "100"])
        #expect(o.stdout.contains("before upgrade") && !o.stdout.contains("second line"))

        // Protected: removal refused, archive and side files untouched.
        o = try f.run(["backup", "protect", "local:backup/\(a1)"])
        #expect(o.status == 0 && f.exists(a1 + ".protected"))
        o = try f.run(["backup", "list", "local", "--vmid", "100"])
        #expect(o.stdout.split(separator: "\n").last!.contains(" 1 "))
        o = try f.run(["backup", "remove", "local:backup/\(a1)"])
        #expect(o.status != 0)
        #expect(o.stderr.contains("cannot remove protected archive"), "\(o.stderr)")
        #expect(f.exists(a1) && f.exists(a1 + ".notes"))

        o = try f.run(["backup", "unprotect", "local:backup/\(a1)"])
        #expect(o.status == 0 && !f.exists(a1 + ".protected"))
        o = try f.run(["backup", "remove", "local:backup/\(a1)"])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(!f.exists(a1) && !f.exists(a1 + ".notes") && !f.exists("vzdump-qemu-100-2021_01_01-10_00_00.log"))
        #expect(f.exists(a2))

        // Bad names and missing archives: one error line, exit != 0.
        for bad in ["local:backup/nonsense.txt", "local:images/\(a2)", "nosuch:backup/\(a2)", "local:backup/\(a1)"] {
            o = try f.run(["backup", "remove", bad])
            #expect(o.status != 0, "\(bad)")
            #expect(!o.stderr.isEmpty, "\(bad)")
        }
        #expect(f.exists(a2))
    }

    @Test func pruneDryRunThenForReal() throws {
        let f = try CLIFixture("prune", pruneBackups: "keep-last=2")
        for d in 1...4 {
            try f.touch("vzdump-qemu-100-2021_01_0\(d)-10_00_00.vma.zst")
            try f.touch("vzdump-qemu-100-2021_01_0\(d)-10_00_00.log")
            try f.touch("vzdump-qemu-200-2021_01_0\(d)-10_00_00.vma.zst")
        }
        try f.touch("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst.protected", "")
        try f.touch("vzdump-qemu-100-manual.vma.zst")

        // No keep options: the storage's prune-backups (keep-last=2).
        var o = try f.run(["prune", "local", "--vmid", "100", "--dry-run"])
        #expect(o.status == 0, "\(o.stderr)")
        func mark(_ out: String, _ file: String) -> String? {
            out.split(separator: "\n").first { $0.contains(file + " ") }.flatMap { $0.split(separator: " ").last.map(String.init) }
        }
        #expect(mark(o.stdout, "vzdump-qemu-100-2021_01_04-10_00_00.vma.zst") == "keep")
        #expect(mark(o.stdout, "vzdump-qemu-100-2021_01_03-10_00_00.vma.zst") == "keep")
        #expect(mark(o.stdout, "vzdump-qemu-100-2021_01_02-10_00_00.vma.zst") == "remove")
        #expect(mark(o.stdout, "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst") == "protected")
        #expect(mark(o.stdout, "vzdump-qemu-100-manual.vma.zst") == "renamed")
        #expect(!o.stdout.contains("vzdump-qemu-200-"))
        #expect(f.exists("vzdump-qemu-100-2021_01_02-10_00_00.vma.zst"))

        // Explicit options override the storage's.
        o = try f.run(["prune", "local", "--vmid", "100", "--keep-last", "1"])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stderr.contains("removing backup 'local:backup/vzdump-qemu-100-2021_01_03-10_00_00.vma.zst'"))
        #expect(f.exists("vzdump-qemu-100-2021_01_04-10_00_00.vma.zst"))
        #expect(!f.exists("vzdump-qemu-100-2021_01_03-10_00_00.vma.zst") && !f.exists("vzdump-qemu-100-2021_01_03-10_00_00.log"))
        #expect(!f.exists("vzdump-qemu-100-2021_01_02-10_00_00.vma.zst"))
        #expect(f.exists("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst") && f.exists("vzdump-qemu-100-manual.vma.zst"))
        #expect(try FileSystem.list(f.dump).filter { $0.hasPrefix("vzdump-qemu-200-") }.count == 4)

        o = try f.run(["prune", "local", "--keep-all", "2"])
        #expect(o.status != 0 && o.stderr.contains("invalid value '2' for keep-all"), "\(o.stderr)")
        o = try f.run(["prune", "local", "--keep-all", "1", "--keep-daily", "3"])
        #expect(o.status != 0 && o.stderr.contains("keep-all cannot be set together"), "\(o.stderr)")
    }

    @Test("vma list, config, extract and verify on .vma, .vma.zst and .vma.gz",
          arguments: [Compression.none, .zstd(level: 3, workers: 0), .gzip])
    func vmaTools(_ compression: Compression) throws {
        let s = try ScratchDir("vma")
        let d1 = testContent(size: 3 * 1024 * 1024 + 4096 + 512, runs: [(0, 5000), (1_000_000, 70_000), (3 * 1024 * 1024, 4196)], seed: 7)
        let d2 = testContent(size: 8 * 1024 * 1024, runs: [(4 * 1024 * 1024 + 12_288, 4096)], seed: 99)
        let archive = s.file("vzdump-qemu-100-2023_11_14-22_13_20.vma" + compression.kind.fileExtension)
        try makeArchive(archive, devices: [("drive-scsi0", d1), ("drive-virtio1", d2)], compression: compression)

        var o = try snapdump(["vma", "list", archive])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout.contains("CFG: size: 67 name: qemu-server.conf"))
        #expect(o.stdout.contains("DEV: dev_id=1 size: \(d1.count) devname: drive-scsi0"))
        #expect(o.stdout.contains("DEV: dev_id=2 size: \(d2.count) devname: drive-virtio1"))
        #expect(o.stdout.contains("CTIME: Tue Nov 14 22:13:20 2023"))
        #expect(o.stdout.contains("MODE: snapshot"))

        o = try snapdump(["vma", "config", archive])
        #expect(o.stdout == "name: web01\nmemory: 512\nscsi0: local:100/vm-100-disk-0.raw,size=1M\n")
        o = try snapdump(["vma", "config", archive, "-c", "nothing.conf"])
        #expect(o.status != 0 && o.stderr.contains("has no config 'nothing.conf'"))

        o = try snapdump(["vma", "verify", archive])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout.contains("OK") && o.stdout.contains("device 2: sha256"))

        let target = s.file("out")
        o = try snapdump(["vma", "extract", archive, target])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: target + "/disk-drive-scsi0.raw"))) == d1)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: target + "/disk-drive-virtio1.raw"))) == d2)
        #expect(try String(contentsOfFile: target + "/qemu-server.conf", encoding: .utf8).hasPrefix("name: web01"))
        // Sparse: the mostly-zero 8 MiB device occupies far less.
        let f2 = try File.openForReading(target + "/disk-drive-virtio1.raw")
        #expect(try f2.allocatedBytes() < 1024 * 1024)

        // An existing target directory is never overwritten.
        o = try snapdump(["vma", "extract", archive, target])
        #expect(o.status != 0 && o.stderr.contains("already exists"))
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: target + "/disk-drive-scsi0.raw"))) == d1)
    }

    @Test func verifyAndExtractReportCorruption() throws {
        let s = try ScratchDir("corrupt")
        let d1 = testContent(size: 1024 * 1024, runs: [(0, 300_000)], seed: 3)
        let good = s.file("vzdump-qemu-100-2023_11_14-22_13_20.vma")
        try makeArchive(good, devices: [("drive-scsi0", d1)], compression: .none)
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: good)))
        let extent = try #require(firstIndex(of: [0x56, 0x4D, 0x41, 0x45], in: bytes)) // "VMAE"

        // A flipped byte in the extent header: bad MD5 at that extent's offset.
        var hdr = bytes
        hdr[extent + 100] ^= 0xFF
        let badHeader = s.file("bad-header.vma")
        try Data(hdr).write(to: URL(fileURLWithPath: badHeader))
        var o = try snapdump(["vma", "verify", badHeader])
        #expect(o.status != 0)
        #expect(o.stderr.contains("bad extent MD5") && o.stderr.contains("at offset \(extent)"), "\(o.stderr)")

        // A flipped data byte: only the SHA-256 from snapdump.json sees it.
        var data = bytes
        data[extent + 512 + 10] ^= 0xFF
        let badData = s.file("bad-data.vma")
        try Data(data).write(to: URL(fileURLWithPath: badData))
        o = try snapdump(["vma", "verify", badData])
        #expect(o.status != 0)
        #expect(o.stderr.contains("content digest of device 1 (drive-scsi0)"), "\(o.stderr)")
        // … and extract leaves nothing behind.
        let target = s.file("out")
        o = try snapdump(["vma", "extract", badData, target])
        #expect(o.status != 0)
        #expect(!FileManager.default.fileExists(atPath: target))

        // Truncated in the middle of the data.
        let cut = s.file("cut.vma")
        try Data(bytes[0..<(extent + 512 + 8192)]).write(to: URL(fileURLWithPath: cut))
        o = try snapdump(["vma", "verify", cut])
        #expect(o.status != 0 && o.stderr.contains("unexpected end of archive"), "\(o.stderr)")

        // Not an archive.
        let junk = s.file("junk.vma")
        try "hello world, not a VMA".write(toFile: junk, atomically: false, encoding: .utf8)
        o = try snapdump(["vma", "list", junk])
        #expect(o.status != 0 && o.stderr.contains("not a VMA archive"), "\(o.stderr)")
    }
}

func firstIndex(of needle: [UInt8], in hay: [UInt8]) -> Int? {
    guard hay.count >= needle.count else { return nil }
    for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
    return nil
}
