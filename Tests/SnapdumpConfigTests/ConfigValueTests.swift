import Foundation
import Testing
@testable import SnapdumpConfig
import SnapdumpSystem

/// Values in config files: one line of printable text, read and written by the same rule.
@Suite("Config values")
struct ConfigValueTests {
    static let controls = ["x\n\tscript /tmp/evil.sh", "a\rb", "a\u{1B}[31mb", "a\u{7F}", "a\u{85}b", "a\u{2028}b", "a\u{0}b", "a\tb"]

    @Test func controlCharactersAreNamed() {
        for v in Self.controls { #expect(ConfigValue.problem(v) != nil, "\(v.debugDescription)") }
        #expect(ConfigValue.problem("x\n")?.contains("U+000A") == true)
        for v in ["keep-last=3,keep-daily=7", "Web server – Zürich", "{{guestname}} \\n notes", ""] {
            #expect(ConfigValue.problem(v) == nil, "\(v)")
        }
    }

    @Test func oneBooleanParser() {
        for t in ["1", "yes", "on", "true", "TRUE", "Yes"] { #expect(ConfigValue.bool(t) == true, "\(t)") }
        for f in ["0", "no", "off", "false", "OFF"] { #expect(ConfigValue.bool(f) == false, "\(f)") }
        for n in ["2", "", "y", "enabled", "-1"] { #expect(ConfigValue.bool(n) == nil, "\(n)") }
    }

    /// Writing: a section whose value holds a newline is refused before anything is written.
    @Test func sectionConfigRefusesToWriteAnInjectedLine() throws {
        var s = SectionConfig.Section(type: "vzdump", id: "backup-1")
        s["schedule"] = "daily"
        s["comment"] = "x\n\tscript /tmp/evil.sh"
        let cfg = SectionConfig(sections: [s])
        // What the serializer alone would produce: an extra key when read back.
        let reread = try SectionConfig.parse(cfg.serialized(), file: "jobs.cfg")
        #expect(reread.sections.first?["script"] == "/tmp/evil.sh")
        do {
            try cfg.validate(file: "/etc/snapdump/jobs.cfg")
            Issue.record("validated a value with a newline")
        } catch {
            #expect(error.description.hasPrefix("/etc/snapdump/jobs.cfg: vzdump 'backup-1': comment: contains a control character"), "\(error)")
        }
        var bad = SectionConfig.Section(type: "vzdump", id: "1bad")
        bad["schedule"] = "daily"
        #expect(throws: ConfigError.self) { try SectionConfig(sections: [bad]).validate(file: "jobs.cfg") }
    }

    /// Reading: the same rule, with file and line.
    @Test func readersRefuseControlCharacters() {
        do {
            _ = try SectionConfig.parse("vzdump: a\n\tschedule daily\n\tcomment a\u{1B}[2Jb\n", file: "/etc/snapdump/jobs.cfg")
            Issue.record("accepted an escape sequence")
        } catch {
            #expect("\(error)".hasPrefix("/etc/snapdump/jobs.cfg:3: comment: contains a control character"), "\(error)")
        }
        do {
            _ = try KeyValueConfig.parse("name: a\nappend: console=ttyS0\u{7}\n", file: "/etc/snapdump/qemu/100.conf")
            Issue.record("accepted a BEL")
        } catch {
            #expect("\(error)".hasPrefix("/etc/snapdump/qemu/100.conf:2: append: contains a control character"), "\(error)")
        }
    }

    /// `schedule analyze --starttime` far in the future trapped in the seconds arithmetic.
    @Test func farFutureTimesDoNotTrap() throws {
        let ev = try CalendarEvent("daily")
        for seconds in [9.2e18, 1e300, Double(Int64.max), -9.2e18, 253_402_300_799] {
            #expect(ev.next(after: Date(timeIntervalSince1970: seconds), in: TimeZone(identifier: "UTC")!) == nil, "\(seconds)")
        }
        #expect(ev.next(after: Date(timeIntervalSince1970: .infinity)) == nil)
        #expect(ev.next(after: Date(timeIntervalSince1970: .nan)) == nil)
        #expect(CivilTime(lenient: "999999999999-01-01 00:00") == nil)
        #expect(CivilTime(lenient: "10000-01-01") == nil)
        #expect(CivilTime(lenient: "9999-12-30 12:00")?.year == 9999)
        #expect(ev.next(after: CivilTime(year: 9999, month: 12, day: 1).date, in: TimeZone(identifier: "UTC")!) != nil)
    }
}
