import Archive
import SnapdumpConfig
import Testing
@testable import Backup

@Suite("vzdump.conf and option precedence")
struct VzdumpConfigTests {
    let file = "/etc/snapdump/vzdump.conf"

    @Test func parsesProxmoxKeys() throws {
        let text = """
            # defaults for all backups
            mode: suspend
            compress: zstd
            zstd: 0
            pigz: 2
            storage: backup1
            tmpdir: /var/tmp
            script: /usr/local/bin/hook.sh
            bwlimit: 10240
            ionice: 8
            lockwait: 60
            stopwait: 5
            prune-backups: keep-last=3,keep-daily=7
            remove: 1
            notes-template: {{guestname}} on {{node}}
            protected: 0
            fleecing: enabled=1,storage=local
            performance: max-workers=8
            mailto: root@localhost, admin@example.com
            mailnotification: failure
            quiet: 1
            stop: 0
            exclude-path: /tmp/?* "/var/cache/my dir"
            stdexcludes: 0
            snapshot-fallback: refuse
            """
        let v = try VzdumpValues.parse(text, file: file)
        #expect(v.mode == .suspend)
        #expect(v.compress == "zstd" && v.zstd == 0 && v.pigz == 2)
        #expect(v.storage == "backup1" && v.tmpdir == "/var/tmp" && v.script == "/usr/local/bin/hook.sh")
        #expect(v.bwlimit == 10240 && v.ionice == 8 && v.lockwait == 60 && v.stopwait == 5)
        #expect(v.pruneBackups == (try PrunePolicy(parsing: "keep-daily=7,keep-last=3")))
        #expect(v.remove == true && v.protected == false && v.quiet == true && v.stop == false && v.stdexcludes == false)
        #expect(v.notesTemplate == "{{guestname}} on {{node}}")
        #expect(v.fleecing == FleecingSettings(enabled: true, storage: "local") && v.performance == "max-workers=8")
        #expect(v.mailto == ["root@localhost", "admin@example.com"] && v.mailnotification == "failure")
        #expect(v.excludePath == ["/tmp/?*", "/var/cache/my dir"])
        #expect(v.snapshotFallback == .refuse)
        #expect(v.origins["prune-backups"] == "\(file):13")
        #expect(v.origins["mode"] == "\(file):2")
    }

    @Test("unknown keys and bad values name file:line", arguments: [
        ("mode: snapshot\nmaxfile: 3\n", 2, "unknown key 'maxfile'"),
        ("mode: fast\n", 1, "invalid value 'fast' for mode"),
        ("\n\ncompress: bzip2\n", 3, "invalid value 'bzip2' for compress"),
        ("ionice: 9\n", 1, "invalid value '9' for ionice: expected an integer 0-8"),
        ("lockwait: -1\n", 1, "invalid value '-1' for lockwait"),
        ("bwlimit: lots\n", 1, "invalid value 'lots' for bwlimit"),
        ("remove: perhaps\n", 1, "invalid value 'perhaps' for remove"),
        ("# c\nprune-backups: keep-dayly=7\n", 2, "unknown key 'keep-dayly'"),
        ("prune-backups: keep-last=x\n", 1, "invalid value 'x' for keep-last"),
        ("prune-backups: keep-all=1,keep-last=2\n", 1, "keep-all cannot be set together"),
        ("storage: 1bad\n", 1, "invalid storage id '1bad'"),
        ("dumpdir: relative/dir\n", 1, "expected an absolute path"),
        ("fleecing: enabled=2\n", 1, "fleecing enabled"),
        ("fleecing: storage=local,speed=1\n", 1, "unknown key 'speed' in fleecing"),
        ("performance: max-workers=300\n", 1, "max-workers"),
        ("mailnotification: sometimes\n", 1, "mailnotification"),
        ("mode: stop\nmode: suspend\n", 2, "duplicate key 'mode'"),
        ("just some words\n", 1, "expected 'key: value'"),
        ("exclude-path: '/tmp\n", 1, "unbalanced quotes"),
        ("snapshot-fallback: maybe\n", 1, "snapshot-fallback"),
    ])
    func errors(_ text: String, _ line: Int, _ message: String) {
        do {
            _ = try VzdumpValues.parse(text, file: file)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.file == file)
            #expect(error.line == line, "\(error)")
            #expect(error.description.hasPrefix("\(file):\(line): "), "\(error)")
            #expect(error.description.contains(message), "\(error)")
        }
    }

    @Test func notesTemplateLongerThan1024IsRefused() throws {
        _ = try VzdumpValues.parse("notes-template: " + String(repeating: "a", count: 1024), file: file)
        #expect(throws: ConfigError.self) { try VzdumpValues.parse("notes-template: " + String(repeating: "a", count: 1025), file: file) }
    }

    // MARK: precedence

    func merge(cli: VzdumpValues = VzdumpValues(), conf: String = "", storages: [String: String] = [:]) throws -> EffectiveBackupSettings {
        let f = try VzdumpValues.parse(conf, file: file)
        return try BackupDefaults.merge(commandLine: cli, file: f) { storages[$0] }
    }

    func cli(_ pairs: [(String, String)]) throws -> VzdumpValues {
        var v = VzdumpValues()
        for (k, val) in pairs { try v.set(k, val, file: "--\(k)") }
        return v
    }

    @Test func builtInDefaults() throws {
        let e = try merge()
        #expect(e.options.mode == .snapshot && e.options.compression == .none && e.options.storage == "local" && e.options.dumpdir == nil)
        #expect(e.options.stopwait == 10 && e.options.bwlimit == 0 && e.options.zstdThreads == 1 && !e.options.quiet)
        #expect(e.options.snapshotFallback == .suspend)
        #expect(e.settings.pruneBackups.keepsEverything && e.settings.pruneBackupsOrigin == "default")
        #expect(e.settings.remove == false) // keep-all never prunes
        #expect(e.settings.lockwait == 180 && e.settings.ionice == 7 && !e.settings.protected && e.settings.notesTemplate == nil)
        #expect(e.warnings.isEmpty)
    }

    @Test func commandLineBeatsFileBeatsStorageBeatsDefault() throws {
        let conf = "mode: suspend\ncompress: gzip\nlockwait: 5\nprune-backups: keep-last=5\nstorage: nas\n"
        let storages = ["nas": "keep-daily=9", "local": "keep-weekly=2"]

        // vzdump.conf over defaults (and over the storage's retention).
        var e = try merge(conf: conf, storages: storages)
        #expect(e.options.mode == .suspend && e.options.compression == .gzip && e.settings.lockwait == 5)
        #expect(e.options.storage == "nas")
        #expect(e.settings.pruneBackups == (try PrunePolicy(parsing: "keep-last=5")))
        #expect(e.settings.pruneBackupsOrigin == "\(file):4")
        #expect(e.settings.remove)

        // Command line over vzdump.conf.
        e = try merge(cli: try cli([("mode", "stop"), ("prune-backups", "keep-last=1"), ("lockwait", "0")]), conf: conf, storages: storages)
        #expect(e.options.mode == .stop && e.settings.lockwait == 0)
        #expect(e.options.compression == .gzip) // not given on the command line: from the file
        #expect(e.settings.pruneBackups == (try PrunePolicy(parsing: "keep-last=1")) && e.settings.pruneBackupsOrigin == "--prune-backups")

        // No retention on the command line or in the file: the target storage's.
        e = try merge(conf: "storage: nas\n", storages: storages)
        #expect(e.settings.pruneBackups == (try PrunePolicy(parsing: "keep-daily=9")) && e.settings.pruneBackupsOrigin == "storage 'nas'")
        e = try merge(cli: try cli([("storage", "local")]), conf: "storage: nas\n", storages: storages)
        #expect(e.options.storage == "local" && e.settings.pruneBackups[.weekly] == 2)
        // Default storage 'local' has retention too.
        e = try merge(storages: storages)
        #expect(e.options.storage == "local" && e.settings.pruneBackupsOrigin == "storage 'local'")
        // A dumpdir has no storage retention: keep everything.
        e = try merge(cli: try cli([("dumpdir", "/backup")]), storages: storages)
        #expect(e.options.dumpdir == "/backup" && e.options.storage == nil && e.settings.pruneBackups.keepsEverything && !e.settings.remove)
    }

    @Test func storageAndDumpdirTravelTogether() throws {
        // The command line naming either replaces both from the file.
        var e = try merge(cli: try cli([("dumpdir", "/srv/dump")]), conf: "storage: nas\n")
        #expect(e.options.dumpdir == "/srv/dump" && e.options.storage == nil)
        e = try merge(cli: try cli([("storage", "nas")]), conf: "dumpdir: /srv/dump\n")
        #expect(e.options.storage == "nas" && e.options.dumpdir == nil)
        // Both in the file: dumpdir ignored with a warning.
        e = try merge(conf: "storage: nas\ndumpdir: /srv/dump\n")
        #expect(e.options.storage == "nas" && e.options.dumpdir == nil)
        #expect(e.warnings.contains { $0.contains("ignoring 'dumpdir'") })
        // Both on the command line: an error.
        #expect(throws: BackupError.self) { try merge(cli: try cli([("storage", "nas"), ("dumpdir", "/x")])) }
    }

    @Test func removeAndKeepAll() throws {
        var e = try merge(conf: "prune-backups: keep-last=2\nremove: 0\n")
        #expect(!e.settings.remove && e.settings.pruneBackups.backupLimit == 2)
        e = try merge(cli: try cli([("remove", "1")]), conf: "prune-backups: keep-all=1\n")
        #expect(!e.settings.remove) // keep-all: nothing to prune
    }

    @Test func deprecatedAndIgnoredOptionsWarn() throws {
        let e = try merge(conf: "mailto: root\nmailnotification: failure\nfleecing: 1\ncompress: gzip\npigz: 4\n")
        // mail is sent again (Notify): applied, without a warning
        #expect(e.settings.mailto == ["root"] && e.settings.mailnotification == "failure")
        #expect(!e.warnings.contains { $0.contains("'mailto'") || $0.contains("'mailnotification'") })
        #expect(!e.warnings.contains { $0.contains("'fleecing'") }, "fleecing is applied now")
        #expect(e.options.fleecing == FleecingSettings(enabled: true, storage: nil))
        #expect(e.warnings.contains { $0.contains("'pigz'") })
    }

    @Test func lzoIsRefusedNamingWhereItCameFrom() {
        do {
            _ = try merge(conf: "\ncompress: lzo\n")
            Issue.record("lzo accepted")
        } catch {
            #expect("\(error)".hasPrefix("\(file):2: compress 'lzo'"), "\(error)")
        }
    }

    @Test func compressZstdUsesZstdThreadsAndBaseLevel() throws {
        var base = BackupOptions()
        base.zstdLevel = 7
        base.vmids = [100, 101]
        let f = try VzdumpValues.parse("compress: zstd\nzstd: 4\n", file: file)
        let e = try BackupDefaults.merge(commandLine: VzdumpValues(), file: f, base: base) { _ in nil }
        #expect(e.options.compression == .zstd(level: 7, workers: 4))
        #expect(e.options.vmids == [100, 101])
    }

    @Test func excludePathAddsUp() throws {
        let e = try merge(cli: try cli([("exclude-path", "/a")]), conf: "exclude-path: /b /c\n")
        #expect(e.settings.excludePath == ["/b", "/c", "/a"])
    }

    @Test func badStorageRetentionIsAnError() {
        #expect(throws: BackupError.self) { try merge(conf: "storage: nas\n", storages: ["nas": "keep-every=1"]) }
    }
}
