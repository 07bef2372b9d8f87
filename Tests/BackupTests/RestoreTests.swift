import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// Restore through the real CLI on a plain dir storage: a stopped VM needs no
/// QEMU, so these run everywhere.
@Suite("Restore", .serialized)
struct RestoreTests {
    /// A config dir with storage `local` (images, backup) and a stopped VM 100 whose
    /// 24 MiB disk holds random data at 3 MiB and 17 MiB; returns its archive.
    func makeBackup(_ label: String, compress: String = "zstd") throws -> (dir: String, archive: String, disk: String) {
        let dir = try Integration.scratchDirectory("restore-\(label)")
        try FileSystem.createDirectory(dir + "/store")
        func must(_ a: [String]) throws -> SnapdumpBinary.Result { try SnapdumpBinary.must(a, configDir: dir) }
        _ = try must(["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"])
        _ = try must(["vm", "create", "100", "--name", "web", "--memory", "128", "--scsi0", "local:24M"])
        let disk = try must(["volume", "path", "local:100/vm-100-disk-0.raw"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=1M", "count=2", "seek=3", "conv=notrunc", "status=none"])
        try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=4k", "count=5", "seek=\(17 * 256)", "conv=notrunc", "status=none"])
        let out = try must(["backup", "100", "--storage", "local", "--compress", compress, "--output-format", "json"]).stdout
        let archive = try #require((try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first?["archive"] as? String)
        return (dir, archive, disk)
    }

    func run(_ dir: String, _ a: [String]) throws -> SnapdumpBinary.Result { try SnapdumpBinary.run(a, configDir: dir) }

    func volumes(_ dir: String) throws -> [String] {
        try run(dir, ["volume", "list", "local"]).stdout.split(separator: "\n").dropFirst().map { String($0.split(separator: " ")[0]) }
    }

    @Test func restoreRoundTripIsSparseAndByteExact() throws {
        let (dir, archive, disk) = try makeBackup("ok")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(dir, ["restore", archive, "101"])
        #expect(r.status == 0, "\(r)")
        #expect(r.stderr.contains("verified SHA-256 of 1 device(s)"))
        let config = try FileSystem.readText(dir + "/qemu/101.conf")
        #expect(config.contains("scsi0: local:101/vm-101-disk-0.raw,size=24M"))
        #expect(config.contains("name: web"))
        #expect(!config.contains("#qmdump#map"))
        let restored = dir + "/store/images/101/vm-101-disk-0.raw"
        #expect(try Command.capture(["cmp", disk, restored]).status == 0)
        // Sparse: about 2 MiB + 20 KiB of data allocated, not 24 MiB.
        let f = try File.openForReading(restored)
        #expect(try f.allocatedBytes() < 4 << 20)
    }

    @Test func existingVMIsRefusedWithoutForce() throws {
        let (dir, archive, _) = try makeBackup("exists")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let before = try FileTree.capture(dir, excluding: ["run"])
        let r = try run(dir, ["restore", archive, "100"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("VM 100 already exists"))
        #expect(try FileTree.capture(dir, excluding: ["run"]) == before)

        let forced = try run(dir, ["restore", archive, "100", "--force"])
        #expect(forced.status == 0, "\(forced)")
        // The old disk was replaced by a new one and freed afterwards.
        #expect(try volumes(dir) == ["local:100/vm-100-disk-1.raw"])
        #expect(try FileSystem.readText(dir + "/qemu/100.conf").contains("local:100/vm-100-disk-1.raw"))
    }

    @Test(arguments: ["zstd", "0"])
    func truncatedArchiveLeavesNothingBehind(compress: String) throws {
        let (dir, archive, _) = try makeBackup("trunc-\(compress)", compress: compress)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cut = dir + "/cut" + (compress == "zstd" ? ".vma.zst" : ".vma")
        let size = try File.openForReading(archive).size()
        try Command.run(["sh", "-c", "head -c \(size * 2 / 3) '\(archive)' > '\(cut)'"])
        let r = try run(dir, ["restore", cut, "102"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("unexpected end of archive"), "\(r)")
        #expect(!FileSystem.exists(dir + "/qemu/102.conf"))
        #expect(try volumes(dir) == ["local:100/vm-100-disk-0.raw"])
    }

    @Test func corruptDataFailsTheDigestAndLeavesNothingBehind() throws {
        let (dir, archive, _) = try makeBackup("corrupt", compress: "0")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Flip one byte of disk data deep inside the archive (VMA checksums headers only).
        let bad = dir + "/bad.vma"
        try Command.run(["cp", archive, bad])
        let f = try File.open(bad, O_RDWR)
        let offset = try f.size() / 2
        var byte: [UInt8] = [0]
        _ = try byte.withUnsafeMutableBytes { try f.read(into: $0, at: offset) }
        byte[0] ^= 0xFF
        try byte.withUnsafeBytes { try f.write($0, at: offset) }
        try f.close()
        let r = try run(dir, ["restore", bad, "103"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("content digest") || r.stderr.contains("MD5"), "\(r)")
        #expect(!FileSystem.exists(dir + "/qemu/103.conf"))
        #expect(try volumes(dir) == ["local:100/vm-100-disk-0.raw"])
    }

    /// File offsets of the zstd frames of `b` (frame header, block headers, checksum).
    static func frameOffsets(_ b: [UInt8]) -> [Int] {
        var offsets: [Int] = []
        var pos = 0
        while pos < b.count {
            offsets.append(pos)
            let fhd = b[pos + 4]
            let fcsFlag = Int(fhd >> 6), single = Int(fhd >> 5 & 1), checksum = fhd >> 2 & 1, dictFlag = Int(fhd & 3)
            var p = pos + 5 + (single == 1 ? 0 : 1) + [0, 1, 2, 4][dictFlag] + [single, 2, 4, 8][fcsFlag]
            while true {
                let h = Int(b[p]) | Int(b[p + 1]) << 8 | Int(b[p + 2]) << 16
                p += 3 + (h >> 1 & 3 == 1 ? 1 : h >> 3)
                if h & 1 == 1 { break }
            }
            pos = p + (checksum == 1 ? 4 : 0)
        }
        return offsets
    }

    /// Restore decodes frames on two threads and writes chunks asynchronously:
    /// a damaged frame in the middle must still fail the whole restore with
    /// that frame's offset, after the chunks before it were written, and
    /// leave no volume or config behind.
    @Test func corruptFrameInTheMiddleFailsWithItsOffsetAndLeavesNothingBehind() throws {
        let dir = try Integration.scratchDirectory("restore-badframe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileSystem.createDirectory(dir + "/store")
        func must(_ a: [String]) throws -> SnapdumpBinary.Result { try SnapdumpBinary.must(a, configDir: dir) }
        _ = try must(["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"])
        _ = try must(["vm", "create", "100", "--scsi0", "local:48M"])
        let disk = try must(["volume", "path", "local:100/vm-100-disk-0.raw"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=1M", "count=44", "seek=2", "conv=notrunc", "status=none"])
        let out = try must(["backup", "100", "--storage", "local", "--compress", "zstd", "--output-format", "json"]).stdout
        let archive = try #require((try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first?["archive"] as? String)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: archive)))
        let frames = Self.frameOffsets(bytes)
        // The header frame, then 16 MiB frames: 44 MiB of data is at least three of them.
        try #require(frames.count >= 4, "frames at \(frames)")
        bytes[frames[2] + (frames[3] - frames[2]) / 2] ^= 0x5A
        let bad = dir + "/bad.vma.zst"
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        let r = try run(dir, ["restore", bad, "105"])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count == 1, "\(r)")
        #expect(r.stderr.contains("zstd frame at file offset \(frames[2])"), "\(r)")
        #expect(!FileSystem.exists(dir + "/qemu/105.conf"))
        #expect(try volumes(dir) == ["local:100/vm-100-disk-0.raw"])
        // No file of VM 105 anywhere in the storage (its directory may stay, empty).
        let left = try Command.run(["find", dir + "/store", "-type", "f", "-path", "*105*"])
        #expect(left.isEmpty, "\(left)")
    }

    @Test func notAnArchiveIsOneClearError() throws {
        let (dir, _, disk) = try makeBackup("junk")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(dir, ["restore", disk, "104"])
        #expect(r.status != 0)
        #expect(r.errorLines.count == 1, "\(r)")
        #expect(r.stderr.contains(disk))
        #expect(try volumes(dir) == ["local:100/vm-100-disk-0.raw"])
    }

    /// qmrestore's `restore_cleanup_oldconf`: over an existing VM, only volumes owned by that
    /// VMID *and* restored by the archive are freed; its other own volumes become `unusedN`;
    /// another VM's volume is never touched. A `backup=0` drive is commented out (issue 13, items 1-2).
    @Test func forceFreesOnlyTheTargetsOwnRestoredVolumes() throws {
        let (dir, _, disk100) = try makeBackup("force-owner")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sum100 = try Command.run(["sha256sum", disk100])
        // VM 202: its own scsi0, VM 100's disk as scsi1, and its own virtio0 excluded with backup=0.
        #expect(try run(dir, ["vm", "create", "202", "--scsi0", "local:4M", "--scsi1", "local:100/vm-100-disk-0.raw",
                              "--virtio0", "local:4M"]).status == 0)
        let conf = dir + "/qemu/202.conf"
        let text = try FileSystem.readText(conf)
        try FileSystem.writeAtomically(conf, text.split(separator: "\n").map { $0.hasPrefix("virtio0:") ? $0 + ",backup=0" : $0 }
            .joined(separator: "\n") + "\n")
        let out = try run(dir, ["backup", "202", "--storage", "local", "--mode", "stop", "--output-format", "json"])
        #expect(out.status == 0, "\(out)")
        #expect(out.stderr.contains("exclude disk 'virtio0'"), "\(out.stderr)")
        let archive = try #require((try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [[String: Any]])?.first?["archive"] as? String)

        let r = try run(dir, ["restore", archive, "202", "--force"])
        #expect(r.status == 0, "\(r)")
        // VM 100's disk is untouched.
        #expect(FileSystem.exists(disk100))
        #expect(try Command.run(["sha256sum", disk100]) == sum100)
        let config = try FileSystem.readText(conf)
        let vols = try volumes(dir)
        // The old own scsi0 (restored) is freed; the old virtio0 (not in the archive) is kept as unused0.
        #expect(!vols.contains("local:202/vm-202-disk-0.raw"), "\(vols)")
        #expect(vols.contains("local:202/vm-202-disk-1.raw"), "\(vols)")
        #expect(config.contains("unused0: local:202/vm-202-disk-1.raw"), "\(config)")
        // The backup=0 drive is commented out, as qmrestore writes it; scsi0 and scsi1 point at new volumes of VM 202.
        #expect(config.contains("#virtio0: local:202/vm-202-disk-1.raw"), "\(config)")
        #expect(!config.split(separator: "\n").contains { $0.hasPrefix("virtio0:") }, "\(config)")
        let scsi = config.split(separator: "\n").filter { $0.hasPrefix("scsi") }
        #expect(scsi.count == 2 && scsi.allSatisfy { $0.contains("local:202/vm-202-disk-") }, "\(config)")
        #expect(!config.contains("local:100/"), "\(config)")
        #expect(r.stderr.contains("kept as unused0"), "\(r.stderr)")
    }
}
