import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// A config dir of its own with one `dir` storage `local` (in a scratch
/// directory), for driving the real `snapdump` binary.
final class CLISandbox: @unchecked Sendable {
    // @unchecked: used by one test at a time.
    let configDir: String
    let dataDir: String
    var storageConfig: String { configDir + "/storage.cfg" }

    init(label: String, dataUnder base: String? = nil) throws {
        configDir = try Integration.scratchDirectory("cli-\(label)-cfg")
        dataDir = try Integration.scratchDirectory("cli-\(label)-data", under: base ?? NSTemporaryDirectory())
        try ok(["storage", "add", "dir", "local", "--path", dataDir])
    }

    deinit {
        try? FileManager.default.removeItem(atPath: configDir)
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    func run(_ args: [String]) throws -> SnapdumpBinary.Result {
        try SnapdumpBinary.run(args, configDir: configDir)
    }

    /// Runs a command that must succeed; returns its stdout.
    @discardableResult
    func ok(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let r = try run(args)
        guard r.status == 0 else { throw TestFailure("snapdump \(args.joined(separator: " ")) failed: \(r)") }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A raw volume of VM 100 holding `bytes` of non-zero data; returns its id and path.
    func volumeWithData(_ bytes: Int = 1 << 20, size: String = "16M", format: String = "raw") throws -> (volid: String, path: String) {
        let volid = try ok(["volume", "alloc", "local", "100", size, "--format", format])
        let path = try ok(["volume", "path", volid])
        if format == "raw" {
            let f = try File.open(path, O_WRONLY)
            var rng = SplitMix64(seed: UInt64(bytes))
            let words = (0..<(bytes / 8)).map { _ in rng.next() }
            try words.withUnsafeBytes { try f.write($0, at: 0) }
            try f.sync()
        } else {
            try Command.run(["qemu-io", "-f", format, "-c", "write -q -P 0x5a 0 \(bytes)", path])
        }
        return (volid, path)
    }

    func configBytes() -> Data? { FileManager.default.contents(atPath: storageConfig) }

    /// Runs a command that must fail cleanly: exit ≠ 0, exactly one line on stderr
    /// (`Error: …`) naming everything in `mentions`, nothing on stdout, storage.cfg
    /// byte-identical and the data directories (`watch`) unchanged.
    @discardableResult
    func expectCleanFailure(_ args: [String], mentions: [String], watch extra: [String] = [],
                            sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let cfg = configBytes()
        let dirs = [dataDir] + extra
        let trees = try dirs.map { try FileTree.capture($0) }
        let r = try run(args)
        let cmd = "snapdump \(args.joined(separator: " "))"
        #expect(r.status != 0, "\(cmd): \(r)", sourceLocation: sourceLocation)
        #expect(r.errorLines.count == 1, "\(cmd): expected one error line: \(r)", sourceLocation: sourceLocation)
        let line = r.errorLines.first ?? ""
        #expect(line.hasPrefix("Error: "), "\(cmd): \(line)", sourceLocation: sourceLocation)
        for m in mentions {
            #expect(line.localizedCaseInsensitiveContains(m), "\(cmd): error line does not mention '\(m)': \(line)", sourceLocation: sourceLocation)
        }
        #expect(r.stdout.isEmpty, "\(cmd): stdout \(r.stdout.debugDescription)", sourceLocation: sourceLocation)
        #expect(configBytes() == cfg, "\(cmd) changed storage.cfg", sourceLocation: sourceLocation)
        for (dir, before) in zip(dirs, trees) {
            let after = try FileTree.capture(dir)
            #expect(after == before, "\(cmd) changed \(dir): \(before.differences(to: after))", sourceLocation: sourceLocation)
        }
        return line
    }
}

@Suite("CLI: bad input gives one clear error and changes nothing")
struct CLIBadInputTests {
    @Test func unknownStorageID() throws {
        let s = try CLISandbox(label: "unknown")
        _ = try s.volumeWithData()
        for args in [["volume", "alloc", "nosuch", "100", "1M"], ["volume", "list", "nosuch"], ["storage", "remove", "nosuch"],
                     ["storage", "status", "nosuch"], ["snapshot", "list", "nosuch"], ["volume", "path", "nosuch:100/vm-100-disk-0.raw"]] {
            try s.expectCleanFailure(args, mentions: ["'nosuch'", "does not exist"])
        }
    }

    @Test func duplicateStorageID() throws {
        let s = try CLISandbox(label: "dup")
        let other = try Integration.scratchDirectory("cli-dup-other")
        defer { try? FileManager.default.removeItem(atPath: other) }
        try s.expectCleanFailure(["storage", "add", "dir", "local", "--path", other], mentions: ["'local'", "already exists"])
    }

    @Test func unknownStorageType() throws {
        let s = try CLISandbox(label: "type")
        try s.expectCleanFailure(["storage", "add", "iscsi", "x", "--path", s.dataDir], mentions: ["unknown storage type 'iscsi'"])
        try s.expectCleanFailure(["storage", "add", "lvmthin", "x", "--vgname", "pve"], mentions: ["storage 'x'", "lvmthin needs 'thinpool'"])
        try s.expectCleanFailure(["storage", "add", "rbd", "x", "--keyring", "rel.keyring", "--content", "backup"], mentions: ["storage 'x'", "rbd cannot hold content 'backup'"])
    }

    @Test func badStorageAddArguments() throws {
        let s = try CLISandbox(label: "add")
        let zpool = Integration.fixture("SNAPDUMP_TEST_ZPOOL") ?? "snapdumptest"
        let cases: [([String], [String])] = [
            (["storage", "add", "dir", "bad/id", "--path", s.dataDir], ["invalid storage id 'bad/id'"]),
            (["storage", "add", "dir", "9x", "--path", s.dataDir], ["invalid storage id '9x'"]),
            // A missing path is created (as pvesm does) unless create-base-path is 0.
            (["storage", "add", "dir", "x", "--path", "/nonexistent/snapdump-test", "--create-base-path", "0"], ["'x'", "/nonexistent/snapdump-test"]),
            (["storage", "add", "dir", "x", "--path", "/nonexistent/snapdump-test", "--is_mountpoint", "yes"], ["'x'", "/nonexistent/snapdump-test", "not mounted"]),
            (["storage", "add", "zfspool", "x", "--pool", zpool, "--create-base-path", "1"], ["dir storages only"]),
            (["storage", "add", "dir", "x", "--path", s.dataDir, "--content", "images,isos"], ["unknown content type 'isos'"]),
            (["storage", "add", "dir", "x", "--path", s.dataDir, "--format", "vmdk"], ["unknown format 'vmdk'"]),
            (["storage", "add", "dir", "x", "--path", s.dataDir, "--reflink", "2"], ["reflink", "0 or 1"]),
            (["storage", "add", "btrfs", "x", "--path", s.dataDir, "--reflink", "1"], ["'x'", "reflink", "dir"]),
            (["storage", "add", "btrfs", "x", "--path", s.dataDir], ["'x'", "not btrfs"]),
            (["storage", "add", "dir", "x"], ["'x'", "path"]),
            (["storage", "add", "zfspool", "x", "--pool", "\(zpool)/snapdump-no-such-dataset"], ["'x'", "snapdump-no-such-dataset"]),
            // Options of another type would make a storage.cfg that cannot be loaded again.
            (["storage", "add", "zfspool", "x", "--pool", zpool, "--path", s.dataDir], ["'x'", "'path'", "zfspool"]),
            (["storage", "add", "zfspool", "x", "--pool", zpool, "--format", "raw"], ["'x'", "'format'", "zfspool"]),
            (["storage", "add", "zfspool", "x", "--pool", zpool, "--prune-backups", "keep-last=1"], ["'x'", "'prune-backups'", "zfspool"]),
            (["storage", "add", "dir", "x", "--path", s.dataDir, "--pool", zpool], ["'x'", "'pool'", "dir"]),
            (["storage", "add", "btrfs", "x", "--path", s.dataDir, "--pool", zpool], ["'x'", "'pool'", "btrfs"]),
        ]
        for (args, mentions) in cases {
            let line = try s.expectCleanFailure(args, mentions: mentions)
            #expect(!line.contains(":0:"), "no fake file:line in \(line)")
        }
    }

    @Test func malformedStorageConfig() throws {
        let s = try CLISandbox(label: "malformed")
        let other = try Integration.scratchDirectory("cli-malformed-other")
        defer { try? FileManager.default.removeItem(atPath: other) }
        let cases: [(String, Int, String)] = [
            ("dir: local\n\tpath \(s.dataDir)\n\ncontent images\n", 4, "section header"),
            ("dir: local\n\tpath \(s.dataDir)\n\tfoo bar\n", 3, "unknown key 'foo'"),
            ("dir: local\n\tpath \(s.dataDir)\n\niscsi: vg\n\tportal x\n", 4, "unknown section type 'iscsi'"),
            ("dir: local\n\tpath \(s.dataDir)\n\tpath /other\n", 3, "duplicate key 'path'"),
            ("dir: local\n\tpath \(s.dataDir)\n\ndir: local\n\tpath /x\n", 4, "duplicate id 'local'"),
            ("\tpath /x\n", 1, "outside a section"),
            ("dir: local\n\tpath \(s.dataDir)\n\treflink maybe\n", 1, "reflink must be 0 or 1"),
        ]
        for (text, line, what) in cases {
            try Data(text.utf8).write(to: URL(fileURLWithPath: s.storageConfig))
            for args in [["storage", "list"], ["storage", "add", "dir", "y", "--path", other], ["volume", "list", "local"]] {
                try s.expectCleanFailure(args, mentions: ["\(s.storageConfig):\(line):", what], watch: [other])
            }
        }
    }

    @Test func volumeOfAnotherStorage() throws {
        let s = try CLISandbox(label: "other")
        let (volid, _) = try s.volumeWithData()
        let second = try Integration.scratchDirectory("cli-other-second")
        defer { try? FileManager.default.removeItem(atPath: second) }
        try s.ok(["storage", "add", "dir", "second", "--path", second])
        let volname = String(volid.drop { $0 != ":" }.dropFirst())
        // A storage that does not exist.
        for args in [["volume", "free", "other:\(volname)"], ["volume", "export", "other:\(volname)", "--output", s.dataDir + "/x.raw"]] {
            try s.expectCleanFailure(args, mentions: ["'other'"], watch: [second])
        }
        // A storage that exists but does not hold the volume: the volume in 'local' stays.
        try s.expectCleanFailure(["volume", "free", "second:\(volname)"], mentions: ["second:\(volname)", "does not exist"], watch: [second])
        // One snapshot across two storages cannot be atomic.
        try s.expectCleanFailure(["snapshot", "create", volid, "second:\(volname)", "--name", "s1"], mentions: ["one storage", "local", "second"], watch: [second])
        // Volume names of another storage type, or outside the layout.
        for bad in ["local:vm-100-disk-0", "local:100/../../etc/passwd", "local:101/vm-100-disk-0.raw", "local100"] {
            try s.expectCleanFailure(["volume", "free", bad], mentions: ["invalid volume"], watch: [second])
        }
    }

    @Test func snapshotOnRawDirectoryStorage() throws {
        let s = try CLISandbox(label: "rawsnap")
        let (volid, _) = try s.volumeWithData()
        try s.expectCleanFailure(["snapshot", "create", volid, "--name", "s1"], mentions: ["'local'", "raw", "cannot snapshot"])
        #expect(try s.ok(["snapshot", "list", "local"]).split(separator: "\n").count == 1, "header only")
    }

    @Test func reflinkRefusedOnTmpfsAndExt4() throws {
        let s = try CLISandbox(label: "reflink")
        for base in ["/dev/shm", NSTemporaryDirectory()] where FileSystem.isDirectory(base) {
            let fs = FileSystem.filesystemType(base) ?? "?"
            guard fs == "tmpfs" || fs == "ext4" else { continue }
            let dir = try Integration.scratchDirectory("cli-reflink", under: base)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try s.expectCleanFailure(["storage", "add", "dir", "r", "--path", dir, "--reflink", "1"],
                                     mentions: ["'r'", "reflink", fs], watch: [dir])
        }
    }

    @Test func badSnapshotNames() throws {
        let s = try CLISandbox(label: "names")
        let (volid, _) = try s.volumeWithData(1 << 20, format: "qcow2")
        // (An empty name is ArgumentParser's "missing value"; NameRulesTests covers it.)
        for name in ["a/b", "a@b", "-x", "a b", "a:b", ".x", "a,b", String(repeating: "n", count: 65)] {
            try s.expectCleanFailure(["snapshot", "create", volid, "--name=\(name)"], mentions: ["invalid snapshot name"])
            try s.expectCleanFailure(["snapshot", "delete", volid, "--name=\(name)"], mentions: ["invalid snapshot name"])
            try s.expectCleanFailure(["volume", "export", volid, "--snapshot=\(name)", "--output", s.dataDir + "/x.raw"], mentions: ["invalid snapshot name"])
        }
        // A good name works on the same volume: the refusals were about the names only.
        try s.ok(["snapshot", "create", volid, "--name", "good-1"])
        try s.expectCleanFailure(["snapshot", "create", volid, "--name", "good-1"], mentions: ["'good-1'", "already exists"])
        try s.ok(["snapshot", "delete", volid, "--name", "good-1"])
        try s.expectCleanFailure(["snapshot", "delete", volid, "--name", "good-1"], mentions: ["'good-1'", "does not exist"])
    }

    @Test func badAllocationArguments() throws {
        let s = try CLISandbox(label: "alloc")
        for (size, what) in [("0", "invalid size '0'"), ("1X", "invalid size '1X'"), ("1.5G", "invalid size '1.5G'"), ("M", "invalid size 'M'"),
                             ("99999999999T", "invalid size")] {
            try s.expectCleanFailure(["volume", "alloc", "local", "100", size], mentions: [what])
        }
        try s.expectCleanFailure(["volume", "alloc", "local", "99", "1M"], mentions: ["VMID 99"])
        try s.expectCleanFailure(["volume", "alloc", "local", "100", "1M", "--format", "vmdk"], mentions: ["unknown format 'vmdk'"])
        // Sizes as pvesm takes them: a bare number is KiB.
        let a = try s.ok(["volume", "alloc", "local", "100", "2048"])
        let b = try s.ok(["volume", "alloc", "local", "100", "3M"])
        #expect(a == "local:100/vm-100-disk-0.raw" && b == "local:100/vm-100-disk-1.raw")
        let rows = try s.ok(["volume", "list", "local"]).split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(rows.contains(["local:100/vm-100-disk-0.raw", "raw", "2097152", "100"]), "\(rows)")
        #expect(rows.contains(["local:100/vm-100-disk-1.raw", "raw", "3145728", "100"]), "\(rows)")
    }
}

/// Tests that fill SNAPDUMP_TEST_SMALLFS run one at a time, and only they use it.
@Suite("CLI: full filesystem (ENOSPC)", .serialized)
struct CLIFullFilesystemTests {
    /// Fills the filesystem of `dir` with a new file in `dir` until ENOSPC; returns the file.
    /// Call again to take up space that a failed command gave back.
    static func fill(_ dir: String) throws -> String {
        let filler = dir + "/filler-" + Fixture.short()
        let f = try File.open(filler, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        var off: UInt64 = 0
        // Down to the smallest block size (1 KiB on a small ext4), so not one block is left.
        for size in [1 << 20, 64 << 10, 4 << 10, 1 << 10] {
            let chunk = [UInt8](repeating: 0xa5, count: size)
            do {
                while true {
                    try chunk.withUnsafeBytes { try f.write($0, at: off) }
                    off += UInt64(size)
                }
            } catch let e as SystemError where e.isNoSpace {
                continue
            }
        }
        try? f.sync()
        return filler
    }

    @Test func exportToFullFilesystem() throws {
        let small = try Fixture.directory("SNAPDUMP_TEST_SMALLFS")
        let s = try CLISandbox(label: "enospc-export")
        let out = try Integration.scratchDirectory("enospc-export", under: small)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let free = try FileSystem.usage(small).available
        // More data than the small filesystem has room for.
        let (volid, _) = try s.volumeWithData(Int(free) + (16 << 20), size: "\((free >> 20) + 32)M")
        let line = try s.expectCleanFailure(["volume", "export", volid, "--output", out + "/vol.raw"],
                                            mentions: ["no space left", volid, out + "/vol.raw"], watch: [out])
        #expect(try FileSystem.list(out).isEmpty, "no output and no temp file left: \(line)")
        #expect(try FileSystem.usage(small).available >= free - (1 << 20), "space given back")
    }

    @Test func qcow2AllocationAndConfigSaveOnFullFilesystem() throws {
        let small = try Fixture.directory("SNAPDUMP_TEST_SMALLFS")
        let dir = try Integration.scratchDirectory("enospc-alloc", under: small)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Config dir and storage both on the small filesystem.
        let cfgDir = dir + "/config", data = dir + "/data"
        try FileSystem.createDirectory(cfgDir)
        try FileSystem.createDirectory(data)
        let run = { (args: [String]) in try SnapdumpBinary.run(args, configDir: cfgDir) }
        #expect(try run(["storage", "add", "dir", "small", "--path", data]).status == 0)
        #expect(try run(["volume", "alloc", "small", "100", "1M"]).status == 0)
        let cfg = FileManager.default.contents(atPath: cfgDir + "/storage.cfg")
        var fillers = [try Self.fill(dir)]
        defer { for f in fillers { try? FileSystem.remove(f) } }

        let alloc = try run(["volume", "alloc", "small", "100", "1G", "--format", "qcow2"])
        #expect(alloc.status != 0 && alloc.errorLines.count == 1, "\(alloc)")
        #expect(alloc.errorLines.first?.localizedCaseInsensitiveContains("no space") == true, "\(alloc)")
        #expect(try FileSystem.list(data + "/images/100") == ["vm-100-disk-0.raw"], "no half-made qcow2 left")

        let other = try Integration.scratchDirectory("enospc-other")
        defer { try? FileManager.default.removeItem(atPath: other) }
        fillers.append(try Self.fill(dir))
        let add = try run(["storage", "add", "dir", "second", "--path", other])
        #expect(add.status != 0 && add.errorLines.count == 1, "\(add)")
        #expect(add.errorLines.first?.localizedCaseInsensitiveContains("no space") == true, "\(add)")
        #expect(add.errorLines.first?.contains("cannot save \(cfgDir)/storage.cfg") == true, "\(add)")
        #expect(FileManager.default.contents(atPath: cfgDir + "/storage.cfg") == cfg, "storage.cfg unchanged")
        #expect(try FileSystem.list(cfgDir) == ["storage.cfg"], "no temp file left")
    }

    /// FICLONE on a full XFS. The shared XFS fixture must not be filled (other tests
    /// use it at the same time), so this test makes a private 320 MiB XFS of its own
    /// (mkfs.xfs refuses smaller) on a loop device and removes it afterwards.
    @Test func reflinkSnapshotOnFullXFS() throws {
        guard getuid() == 0 else { try Test.cancel("needs root to mount a loop filesystem") }
        let tag = Fixture.short()
        let image = "/var/tmp/snapdump-test-xfs-\(tag).img", mnt = "/var/tmp/snapdump-test-xfs-\(tag)"
        try Command.run(["truncate", "-s", "320M", image])
        defer { try? FileSystem.remove(image) }
        try Command.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", image])
        try FileSystem.createDirectory(mnt)
        defer { try? FileSystem.removeDirectory(mnt) }
        // -o loop: the loop device is set to autoclear and goes away with the unmount.
        try Command.run(["mount", "-o", "loop", image, mnt])
        defer { _ = try? Command.capture(["umount", mnt]) }

        let cfg = try Integration.scratchDirectory("xfs-full-cfg")
        defer { try? FileManager.default.removeItem(atPath: cfg) }
        let data = mnt + "/data"
        try FileSystem.createDirectory(data)
        let run = { (args: [String]) in try SnapdumpBinary.run(args, configDir: cfg) }
        #expect(try run(["storage", "add", "dir", "xfs", "--path", data, "--reflink", "1"]).status == 0)
        let volid = try run(["volume", "alloc", "xfs", "100", "16M"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let path = try run(["volume", "path", volid]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try TestVolume.writeRaw(path: path, states: TestVolume.initialState(), tag: 1)
        // Most of the space in one preallocated file (fast), the rest byte by byte.
        let avail = try FileSystem.usage(mnt).available
        try Command.run(["fallocate", "-l", "\(avail - (4 << 20))", mnt + "/filler-big"])
        let filler = try Self.fill(mnt)

        let before = try FileTree.capture(data)
        let r = try run(["snapshot", "create", volid, "--name", "s1"])
        #expect(r.status != 0 && r.errorLines.count == 1, "\(r)")
        let line = r.errorLines.first ?? ""
        #expect(line.hasPrefix("Error: ") && line.localizedCaseInsensitiveContains("no space") && line.contains(volid) && line.contains("'s1'"), "\(line)")
        let after = try FileTree.capture(data)
        #expect(before == after, "changed: \(before.differences(to: after))")
        #expect(try run(["snapshot", "list", "xfs"]).stdout.split(separator: "\n").count == 1, "no snapshot listed")

        // With space again the same snapshot works: the refusal was about space.
        try FileSystem.remove(filler)
        try FileSystem.remove(mnt + "/filler-big")
        #expect(try run(["snapshot", "create", volid, "--name", "s1"]).status == 0)
        #expect(try run(["snapshot", "delete", volid, "--name", "s1"]).status == 0)
        #expect(try run(["volume", "free", volid]).status == 0)
    }

    @Test func reflinkRefusedOnSmallExt4() throws {
        let small = try Fixture.directory("SNAPDUMP_TEST_SMALLFS")
        let s = try CLISandbox(label: "reflink-ext4")
        let dir = try Integration.scratchDirectory("reflink", under: small)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fs = FileSystem.filesystemType(small) ?? "?"
        try s.expectCleanFailure(["storage", "add", "dir", "r", "--path", dir, "--reflink", "1"],
                                 mentions: ["'r'", "reflink", fs, "not supported"], watch: [dir])
    }
}
