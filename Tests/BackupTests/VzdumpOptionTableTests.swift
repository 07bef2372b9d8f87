import Archive
import Foundation
import SnapdumpConfig
import Testing
@testable import Backup

/// `VzdumpOption.table`: the one description of vzdump's keys, and the
/// parsers that used to disagree (command line / jobs.cfg vs vzdump.conf).
@Suite("vzdump option table")
struct VzdumpOptionTableTests {
    static let samples = [
        "0", "1", "-1", "7", "8", "9", "256", "257", "1024", "3000000000", "2147483647", "2147483648", "9223372036854775807",
        "9223372036854775808", "+5", "1e3", "0.5", "yes", "off", "maybe", "", "/abs/path", "rel/path", "local", "1bad",
        "stop", "fast", "zstd", "lzo", "gzip", "suspend", "keep-last=3", "keep-last=9223372036854775807", "keep-all=1",
        "enabled=1,storage=local", "1,storage=local", "enabled=2", "max-workers=8", "max-workers=300", "root@localhost",
        "100,101", "99", "always", "{{vmid}}",
    ]

    /// The command line / jobs.cfg check and the vzdump.conf parser accept and refuse the same values.
    @Test(arguments: VzdumpOption.table.filter(\.inVzdumpConf).map(\.name))
    func commandLineAndVzdumpConfAgree(_ key: String) {
        for value in Self.samples {
            let cli = Result { try BackupParameters.check(key: key, value: value) }
            var v = VzdumpValues()
            let conf = Result { try v.set(key, value, file: "vzdump.conf", line: 1) }
            let cliOK = (try? cli.get()) != nil, confOK = (try? conf.get()) != nil
            #expect(cliOK == confOK, "\(key) '\(value)': command line \(cliOK ? "accepts" : "refuses"), vzdump.conf \(confOK ? "accepts" : "refuses")")
        }
    }

    /// Every integer key has a finite range; values beyond it, overflowing
    /// values and non-decimal forms are one error naming the key.
    @Test(arguments: VzdumpOption.table.compactMap { o -> String? in if case .integer = o.kind { return o.name } else { return nil } })
    func everyIntegerKeyIsBounded(_ key: String) throws {
        let option = try #require(VzdumpOption.named(key))
        guard case .integer(let range) = option.kind else { return }
        #expect(range.upperBound <= Int(Int32.max), "\(key): \(range) lets arithmetic overflow")
        for bad in [String(range.upperBound + 1), String(range.lowerBound - 1), "9223372036854775807", "9223372036854775808",
                    "-9223372036854775809", "1e3", "+1", " 1", "0x10"] {
            do {
                _ = try option.parse(bad)
                Issue.record("\(key) accepted '\(bad)'")
            } catch {
                #expect(error.message.contains(key), "\(error)")
            }
        }
        #expect(try option.parse(String(range.upperBound)) == .int(range.upperBound))
    }

    @Test func theReportedTrapsAreErrors() throws {
        for (text, line, message) in [
            ("zstd: 3000000000\n", 1, "invalid value '3000000000' for zstd: expected an integer 0-256"),
            ("bwlimit: 9223372036854775807\n", 1, "invalid value '9223372036854775807' for bwlimit"),
            ("# retention\nprune-backups: keep-last=9223372036854775807,keep-daily=9223372036854775807\n", 2, "for keep-last"),
            ("lockwait: 1e300\n", 1, "invalid value '1e300' for lockwait"),
        ] {
            #expect(throws: ConfigError.self) { try VzdumpValues.parse(text, file: "/etc/snapdump/vzdump.conf") }
            do { _ = try VzdumpValues.parse(text, file: "/etc/snapdump/vzdump.conf") } catch {
                #expect(error.line == line && error.message.contains(message), "\(error)")
            }
        }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("zstd", "3000000000")]) }
        #expect(throws: BackupError.self) { try BackupParameters([("all", "1"), ("prune-backups", "keep-hourly=9223372036854775806")]) }
        // The storage's retention goes through the same entry.
        #expect(throws: ConfigError.self) { try VzdumpValues.storagePruneBackups("keep-last=9223372036854775807", storage: "local") }
        // The largest counts allowed still sum without overflow (`remove 0` limit).
        let all = PrunePolicy.Option.allCases.map { "\($0.rawValue)=\(VzdumpOption.maxKeep)" }.joined(separator: ",")
        #expect(try PrunePolicy(parsing: all).backupLimit == 6 * VzdumpOption.maxKeep)
    }

    /// lockwait: one type (minutes, fractions allowed) for the command line, jobs.cfg and vzdump.conf.
    @Test func lockwaitIsOneTypeEverywhere() throws {
        #expect(try VzdumpValues.parse("lockwait: 0.05\n", file: "vzdump.conf").lockwait == 0.05)
        #expect(try BackupParameters([("all", "1"), ("lockwait", "0.05")]).effective(vzdumpConf: VzdumpValues()).settings.lockwait == 0.05)
        for bad in ["-1", "1e3", "inf", "nan", "0x1", "1.2.3", "3000000000"] {
            #expect(throws: VzdumpOption.Invalid.self, "\(bad)") { try VzdumpOption.named("lockwait")!.parse(bad) }
        }
    }

    /// A newline or other control character in any value is refused, whatever the key.
    @Test(arguments: VzdumpOption.table.map(\.name))
    func controlCharactersAreRefused(_ key: String) throws {
        let option = try #require(VzdumpOption.named(key))
        for bad in ["x\n\tscript /tmp/evil.sh", "keep-last=1\nmode stop", "a\rb", "a\u{1B}[2Jb", "a\u{2028}b", "1\t"] {
            #expect(throws: VzdumpOption.Invalid.self, "\(key) accepted \(bad.debugDescription)") { try option.parse(bad) }
        }
    }

    /// The defaults of the merge are the table's, and match BackupOptions/BackupSettings.
    @Test func defaultsComeFromTheTable() throws {
        let d = VzdumpValues.defaults
        for option in VzdumpOption.table where option.inVzdumpConf && option.defaultValue != nil {
            #expect(d.origins[option.name] == "default", "\(option.name) has a default but no field")
        }
        let e = try BackupDefaults.merge(commandLine: VzdumpValues(), file: VzdumpValues()) { _ in nil }
        let o = BackupOptions(), s = BackupSettings()
        #expect(e.options.mode == o.mode && e.options.stopwait == o.stopwait && e.options.bwlimit == o.bwlimit)
        #expect(e.options.zstdThreads == o.zstdThreads && e.options.quiet == o.quiet && e.options.fleecing == FleecingSettings())
        #expect(e.options.target == .local && e.options.compression == .none)
        #expect(e.settings.lockwait == s.lockwait && e.settings.ionice == s.ionice && e.settings.remove == false)
        #expect(e.settings.pruneBackups.keepsEverything && e.settings.pigz == s.pigz && e.settings.stdexcludes == s.stdexcludes)
        #expect(e.warnings.isEmpty, "\(e.warnings)")
    }

    @Test func fleecingIsTyped() throws {
        func fleecing(_ value: String) throws -> FleecingSettings {
            try BackupParameters([("all", "1"), ("fleecing", value)]).effective(vzdumpConf: VzdumpValues()).options.fleecing
        }
        #expect(try fleecing("1,storage=local") == FleecingSettings(enabled: true, storage: "local"))
        #expect(try fleecing("enabled=0") == FleecingSettings(enabled: false))
        #expect(try BackupParameters([("all", "1")]).effective(vzdumpConf: VzdumpValues()).options.fleecing == FleecingSettings())
        let conf = try VzdumpValues.parse("fleecing: enabled=1,storage=fast\n", file: "vzdump.conf")
        #expect(try BackupParameters([("all", "1")]).effective(vzdumpConf: conf).options.fleecing == FleecingSettings(enabled: true, storage: "fast"))
        #expect(FleecingSettings(enabled: true, storage: "fast").description == "enabled=1,storage=fast")
        for bad in ["enabled=2", "storage=-x", "speed=1", "enabled=1,enabled=0"] {
            #expect(throws: VzdumpOption.Invalid.self, "\(bad)") { try FleecingSettings(parsing: bad) }
        }
    }

    /// The target is decided once, in the merge: command line, then vzdump.conf, then `local`.
    @Test func backupTargetIsDecidedOnce() throws {
        let dumpdirConf = try VzdumpValues.parse("dumpdir: /srv/dump\n", file: "vzdump.conf")
        func target(_ props: [(String, String)], _ conf: VzdumpValues = VzdumpValues()) throws -> BackupTarget {
            try BackupParameters([("all", "1")] + props).effective(vzdumpConf: conf).options.target
        }
        #expect(try target([]) == .storage("local"))
        #expect(try target([], dumpdirConf) == .dumpdir("/srv/dump"))
        #expect(try target([("storage", "nas")], dumpdirConf) == .storage("nas"))
        #expect(try target([("dumpdir", "/x")]) == .dumpdir("/x"))
        #expect(try target([("dumpdir", "/x")]).storageID == nil)
    }

    /// Item 15: the job's first log line is the effective command, with
    /// options from the command line and from vzdump.conf.
    @Test func startLineShowsTheEffectiveCommand() throws {
        let conf = try VzdumpValues.parse("bwlimit: 1000\nionice: 5\nmode: stop\n", file: "vzdump.conf")
        let p = try BackupParameters([("vmid", "100"), ("prune-backups", "keep-last=3"), ("remove", "0"), ("compress", "zstd"),
                                      ("notes-template", "{{guestname}} nightly"), ("storage", "nas")])
        let eff = try p.effective(vzdumpConf: conf)
        let job = BackupJob(options: eff.options, paths: SnapdumpPaths(configDir: "/nonexistent", runDir: "/nonexistent/run"),
                            log: TaskLog(echo: false))
        job.settings = eff.settings
        job.lockwait = eff.settings.lockwait
        #expect(job.commandLine(vmids: [100]) == "snapdump backup 100 --mode stop --storage nas --compress zstd --bwlimit 1000"
                + " --prune-backups keep-last=3 --remove 0 --notes-template '{{guestname}} nightly' --ionice 5")
        // Defaults add nothing.
        let plain = try BackupParameters([("vmid", "100")]).effective(vzdumpConf: VzdumpValues())
        let job2 = BackupJob(options: plain.options, paths: SnapdumpPaths(configDir: "/nonexistent", runDir: "/nonexistent/run"),
                             log: TaskLog(echo: false))
        job2.settings = plain.settings
        #expect(job2.commandLine(vmids: [100, 101]) == "snapdump backup 100 101 --mode snapshot --storage local --compress 0")
    }
}
