import Archive
import Backup
import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// `snapdump backup <vmid> --stdout` (vzdump's `--stdout`): the archive on
/// standard output — a pipe — and nothing in the dump directory. Stop mode of
/// a stopped VM here (no QEMU); a running guest whose reader goes away is in
/// FailureInjectionTests (`stdoutReaderGoesAwayMidArchive`).
@Suite("backup --stdout", .serialized)
struct StdoutBackupTests {
    /// A `dir` storage `local` and a stopped VM 100 with a 4 MiB disk holding 2 MiB of random data.
    static func world(_ label: String) throws -> (dir: String, disk: String, run: ([String]) throws -> SnapdumpBinary.Result) {
        let (dir, run) = try BackupFilesTests.world(label)
        let disk = dir + "/store/images/100/vm-100-disk-0.raw"
        try Command.run(["dd", "if=/dev/urandom", "of=\(disk)", "bs=64K", "seek=8", "count=32", "conv=notrunc", "status=none"])
        return (dir, disk, run)
    }

    /// Runs `script` with bash (pipefail); `$SNAPDUMP` is the binary, `$CONF` the config dir.
    static func shell(_ script: String, dir: String) throws -> Command.Output {
        try Command.capture(["bash", "-c", "set -o pipefail\n" + script],
                            environment: ["SNAPDUMP": SnapdumpBinary.binary, "CONF": dir + "/etc", "TZ": "UTC", "SNAPDUMP_CONFIG_DIR": ""])
    }

    /// The `drive-scsi0: sha256 …` line of a backup's log.
    static func digest(_ log: String) -> String? {
        log.split(separator: "\n").first { $0.hasPrefix("INFO: drive-scsi0: sha256 ") }.map { String($0.split(separator: " ").last!) }
    }

    static func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    @Test("the stream holds what a file-mode archive holds: same digest, vma verify, extract and restore equal the disk",
          arguments: ["zstd", "gzip", "0"])
    func streamEqualsFileArchive(compress: String) throws {
        let (dir, disk, run) = try Self.world("stdout-\(compress)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dump = dir + "/store/dump"

        let file = try run(["backup", "100", "--storage", "local", "--compress", compress])
        try #require(file.status == 0, "\(file)")
        let fileDigest = try #require(Self.digest(file.stderr), "\(file.stderr)")
        let before = Set(try FileSystem.list(dump))

        // A real pipe (through cat), as `| ssh …` or `| zstd -d` would read it.
        let stream = dir + "/stream.vma"
        let r = try Self.shell("\"$SNAPDUMP\" backup 100 --stdout --compress \(compress) --config-dir \"$CONF\" 2>\(dir)/err | cat >\(stream)", dir: dir)
        let err = try FileSystem.readText(dir + "/err")
        try #require(r.status == 0, "\(r) \(err)")
        #expect(err.contains("INFO: starting new backup job: snapdump backup 100 --mode snapshot --storage local --compress \(compress)"), "\(err)")
        #expect(err.contains(" --stdout 1\n"), "the logged command names --stdout: \(err)")
        #expect(err.contains("INFO: creating vzdump archive '-'"), "\(err)")
        #expect(err.contains("INFO: Finished Backup of VM 100"), "\(err)")
        // The summary went to stderr too: stdout carried the archive only.
        #expect(err.contains("VMID") && err.contains("ok"), "\(err)")
        #expect(Self.digest(err) == fileDigest, "stream log: \(err)")
        #expect(Set(try FileSystem.list(dump)) == before, "--stdout wrote into the dump directory")

        let head = try [UInt8](Self.bytes(stream).prefix(4))
        #expect(Compression.detect(head) == (compress == "0" ? Compression.Kind.none : Compression.Kind(rawValue: compress)))
        let verify = try SnapdumpBinary.run(["vma", "verify", stream])
        #expect(verify.status == 0, "\(verify)")
        let list = try SnapdumpBinary.run(["vma", "list", stream])
        #expect(list.status == 0 && list.stdout.contains("qemu-server.conf") && !list.stdout.contains("snapdump.json"), "\(list)")
        #expect(list.stdout.contains("snapdump-stream.json"), "the mode is recorded in the stream: \(list)")

        let extracted = dir + "/x"
        let x = try SnapdumpBinary.run(["vma", "extract", stream, extracted])
        try #require(x.status == 0, "\(x)")
        #expect(try Self.bytes(extracted + "/disk-drive-scsi0.raw") == Self.bytes(disk), "extracted disk differs from the source")
        let streamMeta = try JSONDecoder().decode(SnapdumpMetadata.self, from: try Self.bytes(extracted + "/snapdump-stream.json"))
        // The guest is stopped: snapshot mode was asked, stop mode used (as vzdump), and the stream says so.
        #expect(streamMeta.mode == "stop" && streamMeta.devices.isEmpty && streamMeta.snapdumpVersion == SnapdumpVersion.current, "\(streamMeta)")

        let restore = try run(["restore", stream, "101", "--storage", "local"])
        try #require(restore.status == 0, "\(restore)")
        #expect(try Self.bytes(dir + "/store/images/101/vm-101-disk-0.raw") == Self.bytes(disk), "restored disk differs from the source")

        if compress == "zstd" {
            // Standard zstd reads the stream as one: header frame, then libzstd's frames.
            let plain = dir + "/plain.vma"
            let d = try Self.shell("zstd -dc <\(stream) >\(plain)", dir: dir)
            try #require(d.status == 0, "\(d)")
            let v = try SnapdumpBinary.run(["vma", "verify", plain])
            #expect(v.status == 0, "\(v)")
        }
    }

    @Test func terminalAndSeveralGuestsAreRefused() throws {
        let (dir, _, run) = try Self.world("stdout-refused")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dump = dir + "/store/dump"
        // `script` gives the command a pseudo-terminal as stdout.
        let tty = try Self.shell("script -qec '\"$SNAPDUMP\" backup 100 --stdout --config-dir \"$CONF\"' /dev/null", dir: dir)
        #expect(tty.status != 0, "\(tty)")
        #expect((tty.stdout + tty.stderr).contains("Error: --stdout: standard output is a terminal"), "\(tty)")
        #expect(((try? FileSystem.list(dump)) ?? []).isEmpty)

        let many = try Self.shell("\"$SNAPDUMP\" vm create 101 --scsi0 local:1M --config-dir \"$CONF\" >/dev/null && "
                                  + "\"$SNAPDUMP\" backup 100 101 --stdout --config-dir \"$CONF\" | cat >/dev/null", dir: dir)
        #expect(many.status != 0, "\(many)")
        #expect(many.stderr.contains("you can only backup a single VM with option --stdout"), "\(many)")
        let all = try run(["backup", "--all", "1", "--stdout", "1"])
        #expect(all.status != 0 && all.stderr.contains("single VM"), "\(all)")
        #expect(((try? FileSystem.list(dump)) ?? []).isEmpty)
    }

    /// `-` as an archive (stdin, as `qmrestore -`) is refused with a way out, not "no such file '/cwd/-'".
    @Test(arguments: [["vma", "verify", "-"], ["vma", "list", "-"], ["vma", "extract", "-", "/nonexistent-target"], ["restore", "-", "101"]])
    func stdinArchiveIsRefused(args: [String]) throws {
        // vma commands take no config dir; restore fails on the archive before it reads one.
        let r = try SnapdumpBinary.run(args, configDir: args[0] == "restore" ? "/nonexistent-config" : nil)
        #expect(r.status != 0, "\(r)")
        #expect(r.errorLines == ["Error: reading an archive from standard input is not supported: save the stream to a file first (snapdump backup … --stdout > FILE)"], "\(r)")
    }

    /// The reader stops after 64 KiB (`head`): the next write fails with
    /// EPIPE (SIGPIPE is ignored), the backup fails with a clear error and a
    /// non-zero exit instead of dying of the signal, and leaves nothing behind.
    @Test func readerThatGoesAwayFailsTheBackup() throws {
        let (dir, _, _) = try Self.world("stdout-epipe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try Self.shell("\"$SNAPDUMP\" backup 100 --stdout --compress 0 --config-dir \"$CONF\" 2>\(dir)/err | head -c 65536 >/dev/null\n"
                               + "echo \"status=${PIPESTATUS[0]}\"", dir: dir)
        let err = try FileSystem.readText(dir + "/err")
        let status = r.stdout.split(separator: "\n").first { $0.hasPrefix("status=") }.map { Int($0.dropFirst(7)) ?? -1 }
        #expect(status == 1, "snapdump's exit: \(r) \(err)")
        #expect(err.contains("ERROR: Backup of VM 100 failed") && err.contains("Broken pipe"), "\(err)")
        #expect(((try? FileSystem.list(dir + "/store/dump")) ?? []).isEmpty)
        let config = try FileSystem.readText(dir + "/etc/qemu/100.conf")
        #expect(!config.contains("lock:"), "\(config)")
    }
}
