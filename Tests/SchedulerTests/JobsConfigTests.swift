import Foundation
import Testing
import Archive
import Backup
import SnapdumpConfig
@testable import Scheduler

@Suite struct JobsConfigTests {
    /// The example of reference/proxmox-vzdump.md.
    static let reference = """
        vzdump: backup-07cdf241-8b56
        \tschedule sat 02:00
        \tall 1
        \tmode snapshot
        \tstorage local
        \tcompress zstd
        \tprune-backups keep-daily=7
        \tenabled 1

        """

    @Test func parsesTheReferenceExample() throws {
        let cfg = try JobsConfig.parse(Self.reference, file: "/etc/snapdump/jobs.cfg")
        let j = try #require(cfg.job("backup-07cdf241-8b56"))
        #expect(j.schedule.text == "sat 02:00" && j.enabled && !j.repeatMissed && j.line == 1)
        let o = try j.parameters.options()
        #expect(o.all && o.mode == .snapshot && o.storage == "local" && o.compression.kind == .zstd)
        // prune-backups is applied (BackupDefaults → BackupLifecycle.afterCommit): nothing to warn about.
        #expect(j.parameters.notApplied.isEmpty)
        // Rewriting an unchanged file changes nothing.
        #expect(cfg.config.serialized() == Self.reference + "\n" || cfg.config.serialized() == Self.reference)
    }

    @Test func everyProxmoxKeyIsAccepted() throws {
        let text = """
            vzdump: full
            \tschedule mon..fri 22:30
            \tcomment nightly, all guests
            \trepeat-missed 1
            \tenabled 0
            \tnode pve1
            \texclude 101,102
            \tmode stop
            \tdumpdir /srv/dump
            \tcompress gzip
            \tzstd 0
            \tstopwait 5
            \tbwlimit 100000
            \ttmpdir /var/tmp
            \tsnapshot-fallback refuse
            \tprune-backups keep-last=3,keep-daily=7,keep-weekly=4
            \tremove 0
            \tnotes-template {{guestname}} on {{node}}
            \tprotected 1
            \tscript /usr/local/bin/hook.sh
            \tlockwait 30
            \tionice 8
            \tquiet 1
            \tmailto root@example.com,ops@example.com
            \tmailnotification failure
            \tnotification-mode auto
            \tpigz 2
            \tfleecing enabled=1,storage=local
            \tperformance max-workers=8
            \tmaxfiles 3
            \tstdexcludes 1
            \texclude-path /tmp

            """
        let j = try #require(try JobsConfig.parse(text, file: "jobs.cfg").job("full"))
        #expect(!j.enabled && j.repeatMissed && j.comment == "nightly, all guests" && j.node == "pve1")
        let o = try j.parameters.options()
        #expect(o.exclude == [101, 102] && o.mode == .stop && o.dumpdir == "/srv/dump" && o.compression.kind == .gzip)
        #expect(o.stopwait == 5 && o.bwlimit == 100000 && o.tmpdir == "/var/tmp" && o.snapshotFallback == .refuse && o.quiet)
        #expect(j.parameters.lockwait == 30)
        // Everything vzdump.conf knows is applied (or warned about by BackupDefaults); the rest is reported.
        #expect(Set(j.parameters.notApplied.map(\.key)) == ["notification-mode", "maxfiles", "stdexcludes", "exclude-path"])
    }

    struct Bad: Sendable, CustomTestStringConvertible {
        var text: String
        var line: Int
        var message: String
        var testDescription: String { message }
    }

    static let bad: [Bad] = [
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tfrobnicate 1\n", line: 4, message: "unknown key 'frobnicate' for vzdump 'a'"),
        Bad(text: "vzdump: a\n\tvmid 100\n", line: 1, message: "job 'a' has no 'schedule'"),
        Bad(text: "vzdump: a\n\tvmid 100\n\tschedule 0 2 * * *\n", line: 3, message: "cron syntax, which calendar events do not use; write '02:00'"),
        Bad(text: "vzdump: a\n\tschedule mon..fry\n\tvmid 100\n", line: 2, message: "at 'fry' (column 6)"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tmode fast\n", line: 4, message: "invalid value 'fast' for mode"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100,x\n", line: 3, message: "invalid VMID 'x'"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tcompress lzo\n", line: 4, message: "lzo not supported"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tenabled maybe\n", line: 4, message: "invalid value 'maybe' for enabled"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tprune-backups keep-daly=7\n", line: 4, message: "unknown key 'keep-daly'"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tdumpdir dump\n", line: 4, message: "expected an absolute path"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tionice 9\n", line: 4, message: "expected an integer 0-8"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tvmid 100\n\tall 1\n", line: 1, message: "'vmid' and 'all' are mutually exclusive"),
        Bad(text: "vzdump: a\n\tschedule daily\n", line: 1, message: "no guests selected"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tall 1\n\tstorage x\n\tdumpdir /d\n", line: 1, message: "'storage' and 'dumpdir' are mutually exclusive"),
        Bad(text: "dir: a\n\tpath /x\n", line: 1, message: "unknown section type 'dir'"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tall 1\n\nvzdump: a\n\tschedule daily\n\tall 1\n", line: 5, message: "duplicate id 'a'"),
        Bad(text: "vzdump: 1a\n\tschedule daily\n\tall 1\n", line: 1, message: "invalid vzdump id '1a'"),
        Bad(text: "vzdump: a\n\tschedule daily\n\tall 1\n\tall 1\n", line: 4, message: "duplicate key 'all'"),
    ]

    @Test(arguments: bad)
    func errorsNameFileAndLine(_ b: Bad) {
        do {
            _ = try JobsConfig.parse(b.text, file: "/etc/snapdump/jobs.cfg")
            Issue.record("accepted: \(b.text)")
        } catch let e as ConfigError {
            #expect(e.file == "/etc/snapdump/jobs.cfg" && e.line == b.line, "\(e)")
            #expect(e.message.contains(b.message), "\(e)")
            #expect(e.description.hasPrefix("/etc/snapdump/jobs.cfg:\(b.line): "))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func editsKeepOrderAndCheckTheResult() throws {
        var cfg = try JobsConfig.parse(Self.reference, file: "jobs.cfg")
        try cfg.update("backup-07cdf241-8b56", set: [("mode", "stop"), ("comment", "weekly")], delete: ["prune-backups"])
        #expect(cfg.config.serialized() == """
            vzdump: backup-07cdf241-8b56
            \tschedule sat 02:00
            \tall 1
            \tmode stop
            \tstorage local
            \tcompress zstd
            \tenabled 1
            \tcomment weekly


            """)
        #expect(throws: ConfigError.self) { try cfg.update("backup-07cdf241-8b56", set: [("vmid", "100")], delete: []) }
        #expect(throws: ConfigError.self) { try cfg.update("backup-07cdf241-8b56", set: [], delete: ["schedule"]) }
        #expect(throws: ConfigError.self) { try cfg.update("nope", set: [("mode", "stop")], delete: []) }
        #expect(cfg.job("backup-07cdf241-8b56")?.parameters["mode"] == "stop") // failed edits changed nothing
        try cfg.remove("backup-07cdf241-8b56")
        #expect(cfg.jobs.isEmpty && cfg.config.serialized().isEmpty)
    }

    @Test func addAndSaveRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "jobs-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        let id = try JobsConfig.edit(paths: paths) { cfg -> String in
            var s = SectionConfig.Section(type: "vzdump", id: BackupJobDefinition.generateID())
            s["schedule"] = "*/1"
            s["vmid"] = "100,101"
            s["storage"] = "local"
            try cfg.add(try BackupJobDefinition(section: s, file: cfg.file))
            #expect(throws: ConfigError.self) { try cfg.add(try BackupJobDefinition(section: s, file: cfg.file)) }
            return s.id
        }
        #expect(id.count == 19 && id.hasPrefix("backup-") && id.dropFirst(7).allSatisfy(\.isHexDigit))
        let cfg = try JobsConfig.load(paths: paths)
        #expect(try cfg.job(id)?.parameters.options().vmids == [100, 101])
        #expect(try String(contentsOfFile: paths.jobsConfig, encoding: .utf8) == "vzdump: \(id)\n\tschedule */1\n\tvmid 100,101\n\tstorage local\n\n")
    }

    @Test func generatedIDsAreValidAndDistinct() {
        let ids = (0..<200).map { _ in BackupJobDefinition.generateID() }
        #expect(Set(ids).count == 200)
        #expect(ids.allSatisfy(BackupJobDefinition.isValidID))
    }
}

extension BackupParameters {
    /// These parameters over the table's defaults alone (no vzdump.conf, no storage retention).
    func options() throws -> BackupOptions { try effective(vzdumpConf: VzdumpValues()).options }
    var lockwait: Double { (try? effective(vzdumpConf: VzdumpValues()).settings.lockwait) ?? -1 }
}

@Suite struct BackupParametersTests {
    @Test func defaultsAreProxmoxs() throws {
        let o = try BackupParameters([("vmid", "100")]).options()
        #expect(o.vmids == [100] && !o.all && o.mode == .snapshot && o.compression.kind == .none)
        #expect(o.stopwait == 10 && o.bwlimit == 0 && o.zstdThreads == 1 && o.snapshotFallback == .suspend)
        #expect(try BackupParameters([("all", "1")]).lockwait == 180)
    }

    @Test func mapping() throws {
        let p = try BackupParameters([("exclude", "101 102;103"), ("compress", "zstd"), ("zstd", "4"), ("mode", "suspend"),
                                      ("lockwait", "30"), ("quiet", "yes")])
        let o = try p.options()
        #expect(o.exclude == [101, 102, 103] && o.mode == .suspend && o.quiet)
        #expect(o.compression == .zstd(level: 3, workers: 4) && o.zstdThreads == 4)
        #expect(p.lockwait == 30)
    }

    @Test func rejects() throws {
        #expect(throws: BackupError.self) { try BackupParameters([("vmid", "99")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("vmid", "100"), ("exclude", "101")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("compress", "1")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("bogus", "1")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("all", "1")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("notes-template", String(repeating: "x", count: 1025))]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("fleecing", "enabled=1,storage=-x")]) }
        // lockwait is one type everywhere (the job parser took 0.5, vzdump.conf did not; Double vs Int).
        #expect(try BackupParameters([("all", "1"), ("lockwait", "0.5")]).lockwait == 0.5)
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("lockwait", "1e300")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("lockwait", "inf")]) }
    }
}

@Suite struct JobsPurgeTests {
    @Test func purgeRemovesTheVMIDFromListsAndEmptyJobs() throws {
        var cfg = try JobsConfig.parse("""
            vzdump: only100
            \tschedule daily
            \tvmid 100

            vzdump: several
            \tschedule daily
            \tvmid 100,101,102

            vzdump: allbut
            \tschedule daily
            \texclude 100

            vzdump: other
            \tschedule daily
            \tvmid 103

            """, file: "jobs.cfg")
        let changes = try cfg.purge(vmid: 100)
        #expect(changes.count == 3)
        #expect(cfg.job("only100") == nil)
        #expect(cfg.job("several")?.parameters["vmid"] == "101,102")
        #expect(cfg.job("allbut")?.parameters["exclude"] == nil && cfg.job("allbut")?.parameters["all"] == "1")
        #expect(cfg.job("other")?.parameters["vmid"] == "103")
    }
}
