import ArgumentParser
import Foundation
import Testing
import Backup
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import SnapdumpCLI

/// Values from the command line and config files, through the real binary:
/// a value out of range or holding a newline is one `Error:` line, exit ≠ 0,
/// and no config written; Proxmox's spellings (`--all 1`, global options
/// before the subcommand, `--version`) work.
@Suite(.serialized) struct OptionCLITests {
    let configDir: String
    let dataDir: String

    init() throws {
        configDir = try Integration.scratchDirectory("optcli-cfg")
        dataDir = try Integration.scratchDirectory("optcli-data")
    }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: configDir)
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    func run(_ args: [String]) throws -> SnapdumpBinary.Result { try SnapdumpBinary.run(args, configDir: configDir) }

    @discardableResult
    func ok(_ args: [String]) throws -> SnapdumpBinary.Result {
        let r = try run(args)
        guard r.status == 0 else { throw CLIError("snapdump \(args.joined(separator: " ")) failed: \(r)") }
        return r
    }

    /// Exit ≠ 0, no signal, exactly one stderr line `Error: …` mentioning `mentions`, config dir and data dir unchanged.
    /// `schedule analyze` reads no configuration: it runs without `--config-dir`.
    func expectCleanFailure(_ args: [String], mentions: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try [configDir, dataDir].map { try FileTree.capture($0) }
        let r = try args.first == "schedule" ? SnapdumpBinary.run(args) : run(args)
        let cmd = "snapdump \(args.map(\.debugDescription).joined(separator: " "))"
        #expect(r.status != 0 && r.status < 128, "\(cmd): \(r)", sourceLocation: sourceLocation)
        #expect(r.errorLines.count == 1, "\(cmd): expected one error line: \(r)", sourceLocation: sourceLocation)
        let line = r.errorLines.first ?? ""
        #expect(line.hasPrefix("Error: "), "\(cmd): \(line)", sourceLocation: sourceLocation)
        for m in mentions {
            #expect(line.contains(m), "\(cmd): error line does not mention '\(m)': \(line)", sourceLocation: sourceLocation)
        }
        let after = try [configDir, dataDir].map { try FileTree.capture($0) }
        #expect(after == before, "\(cmd) changed files: \(zip(before, after).map { $0.differences(to: $1) })", sourceLocation: sourceLocation)
    }

    func addStorage() throws {
        try ok(["storage", "add", "dir", "local", "--path", dataDir, "--content", "images,backup"])
    }

    @Test func trapsAreErrors() throws {
        defer { cleanup() }
        try addStorage()
        let cases: [([String], [String])] = [
            (["vm", "create", "200", "--scsi0", "local:1e30"], ["--scsi0", "local:1e30"]),
            (["vm", "create", "200", "--scsi0", "local:99999999999T"], ["--scsi0"]),
            (["backup", "--all", "--zstd", "3000000000"], ["--zstd", "3000000000", "0-256"]),
            (["backup", "--all", "--bwlimit", "9223372036854775807"], ["--bwlimit", "9223372036854775807"]),
            (["backup", "--all", "--prune-backups", "keep-last=9223372036854775807"], ["keep-last"]),
            (["backup", "--all", "--lockwait", "1e300"], ["lockwait"]),
            (["backup", "--all", "--lockwait", "nan"], ["lockwait"]),
            (["job", "add", "--schedule", "daily", "--all", "--stopwait", "99999999999999999999"], ["stopwait"]),
            (["storage", "add", "dir", "other", "--path", dataDir, "--prune-backups", "keep-daily=9223372036854775807"], ["keep-daily"]),
            (["schedule", "analyze", "daily", "--starttime", "99999999999999999"], ["--starttime"]),
            (["schedule", "analyze", "daily", "--starttime", "9223372036854775807"], ["--starttime"]),
            (["schedule", "analyze", "daily", "--starttime", "99999999-01-01 00:00"], ["--starttime"]),
        ]
        for (args, mentions) in cases { try expectCleanFailure(args, mentions: mentions) }
    }

    @Test func newlinesAndInvalidValuesAreNotWritten() throws {
        defer { cleanup() }
        try addStorage()
        try ok(["job", "add", "--id", "a", "--schedule", "daily", "--vmid", "100"])
        let cases: [([String], [String])] = [
            (["job", "add", "--schedule", "daily", "--all", "--comment", "x\n\tscript /tmp/evil.sh"], ["--comment", "control character"]),
            (["job", "set", "a", "--comment", "x\n\tall 1"], ["--comment", "control character"]),
            (["job", "set", "a", "--notes-template", "a\nb"], ["notes-template", "control character"]),
            (["job", "set", "a", "--enabled", "maybe"], ["--enabled"]),
            (["vm", "create", "200", "--append", "a\nscsi5: /dev/vda"], ["--append", "control character"]),
            (["vm", "create", "200", "--name", "bad name"], ["--name", "'bad name'"]),
            (["vm", "create", "200", "--cores", "0"], ["--cores"]),
            (["vm", "create", "200", "--memory", "1"], ["--memory"]),
            (["vm", "create", "200", "--scsi0", "local:1\n"], ["--scsi0"]),
            (["storage", "add", "dir", "other", "--path", dataDir, "--prune-backups", "keep-last=1\n\tpath /etc"],
             ["--prune-backups", "control character"]),
            (["storage", "add", "dir", "other", "--path", dataDir, "--prune-backups", "keep-lats=1"], ["--prune-backups", "keep-lats"]),
            (["notify", "target", "add", "sendmail", "ops", "--mailto", "root@localhost", "--comment", "x\n\tmailto evil@example.com"],
             ["comment", "control character"]),
        ]
        for (args, mentions) in cases { try expectCleanFailure(args, mentions: mentions) }
    }

    /// Config files with such values: `vm list` and `backup --all` fail with one error naming file:line.
    @Test func badConfigFilesAreErrors() throws {
        defer { cleanup() }
        try addStorage()
        let qemu = configDir + "/qemu"
        try FileManager.default.createDirectory(atPath: qemu, withIntermediateDirectories: true)
        try FileSystem.writeAtomically(qemu + "/200.conf", "name: a\nscsi0: local:200/vm-200-disk-0.raw,size=99999999999T\n")
        try expectCleanFailure(["vm", "list"], mentions: ["200.conf:2", "size"])
        let r = try run(["backup", "--all", "--mode", "stop"])
        #expect(r.status == 1 && r.stderr.contains("200.conf:2: scsi0"), "\(r)")
        try FileManager.default.removeItem(atPath: qemu + "/200.conf")
        for (conf, mention) in [("zstd: 3000000000\n", "vzdump.conf:1: invalid value '3000000000' for zstd"),
                                ("\nbwlimit: 9223372036854775807\n", "vzdump.conf:2: invalid value '9223372036854775807' for bwlimit"),
                                ("prune-backups: keep-last=9223372036854775807\n", "vzdump.conf:1"),
                                ("script: /bin/true\u{1B}[2J\n", "vzdump.conf:1")] {
            try FileSystem.writeAtomically(configDir + "/vzdump.conf", conf)
            try expectCleanFailure(["backup", "--all"], mentions: [mention])
        }
    }

    /// Item 15: the job's first line shows options that were applied, from the command line and vzdump.conf.
    @Test func startLineShowsAppliedOptions() throws {
        defer { cleanup() }
        try addStorage()
        try ok(["vm", "create", "100", "--scsi0", "local:4M"])
        try FileSystem.writeAtomically(configDir + "/vzdump.conf", "bwlimit: 100000\n")
        let r = try ok(["backup", "100", "--mode", "stop", "--storage", "local", "--prune-backups", "keep-last=3", "--remove", "0"])
        let expected = "INFO: starting new backup job: snapdump backup 100 --mode stop --storage local --compress 0 --bwlimit 100000"
            + " --prune-backups keep-last=3 --remove 0"
        #expect(r.stderr.contains(expected + "\n"), "\(r.stderr)")
    }

    @Test func versionAndGlobalOptionsBeforeTheSubcommand() throws {
        defer { cleanup() }
        let v = try SnapdumpBinary.run(["--version"])
        let printed: String = v.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let expected: String = SnapdumpVersion.current
        #expect(v.status == 0, "\(v)")
        #expect(printed == expected)
        let add = try SnapdumpBinary.run(["--config-dir", configDir, "storage", "add", "dir", "local", "--path", dataDir])
        #expect(add.status == 0, "\(add)")
        let written = FileManager.default.fileExists(atPath: configDir + "/storage.cfg")
        #expect(written)
        let list = try SnapdumpBinary.run(["--config-dir=\(configDir)", "storage", "list"])
        #expect(list.status == 0 && list.stdout.contains(dataDir), "\(list)")
        let vms = try SnapdumpBinary.run(["--config-dir", configDir, "vm", "list"])
        #expect(vms.status == 0, "\(vms)")
    }

    /// `ProxmoxArguments.booleanFlags` names every boolean flag of every command (from the binary's own help dump).
    @Test func booleanFlagListIsComplete() throws {
        defer { cleanup() }
        let dump = try SnapdumpBinary.run(["--experimental-dump-help"])
        let root = try #require(try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [String: Any])
        var flags = Set<String>()
        func walk(_ command: [String: Any]) {
            for a in command["arguments"] as? [[String: Any]] ?? [] where a["kind"] as? String == "flag" {
                for n in a["names"] as? [[String: Any]] ?? [] where n["kind"] as? String == "long" {
                    flags.insert("--" + (n["name"] as? String ?? ""))
                }
            }
            for sub in command["subcommands"] as? [[String: Any]] ?? [] { walk(sub) }
        }
        walk(try #require(root["command"] as? [String: Any]))
        #expect(flags.subtracting(["--help", "--version"]) == ProxmoxArguments.booleanFlags)
    }

    /// Proxmox booleans on flags: `--all 1`, `--quiet 1`, `--all 0`, `--force=1`; `--remove 0` as before.
    @Test func proxmoxBooleans() throws {
        defer { cleanup() }
        func parse(_ args: [String]) throws -> BackupCommand {
            try #require(try Snapdump.parseAsRoot(ProxmoxArguments.normalize(args, root: Snapdump.self)) as? BackupCommand)
        }
        let a = try parse(["backup", "--all", "1", "--quiet", "1", "--remove", "0"])
        #expect(a.options.all && a.options.quiet && a.options.remove == "0")
        let b = try parse(["backup", "--all", "yes", "--quiet", "0", "--exclude", "101"])
        #expect(b.options.all && !b.options.quiet)
        let c = try parse(["backup", "--quiet", "100", "101"])
        #expect(c.options.quiet && c.vmids == [100, 101])
        let d = try parse(["backup", "--all=true", "--quiet=off"])
        #expect(d.options.all && !d.options.quiet)
        #expect(ProxmoxArguments.normalize(["backup", "100", "--all", "0"], root: Snapdump.self) == ["backup", "100"])
        #expect(ProxmoxArguments.normalize(["--config-dir", "/c", "vm", "list", "--", "--all", "1"], root: Snapdump.self)
                == ["vm", "list", "--config-dir", "/c", "--", "--all", "1"])
        // Through the binary: `--all 1` selects all guests (it was "invalid VMID '1'").
        try addStorage()
        let r = try run(["backup", "--all", "1", "--quiet", "1"])
        #expect(r.status != 0 && !r.stderr.contains("invalid VMID") && r.stderr.contains("no guests selected"), "\(r)")
    }
}
