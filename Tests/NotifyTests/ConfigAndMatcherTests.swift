import Foundation
import Notify
import SnapdumpConfig
import Testing

@Suite struct NotificationConfigTests {
    let sample = """
    sendmail: mail-root
    \tmailto root@example.com
    \tmailto ops@example.com
    \tcomment both

    webhook: hook
    \turl http://127.0.0.1:8080/notify
    \theader name=Authorization,value=\(Data("Bearer abc".utf8).base64EncodedString())
    \tbody \(Data("{\"t\": {{ json title }}}".utf8).base64EncodedString())

    matcher: errors
    \tmode all
    \tmatch-severity warning,error
    \tmatch-field exact:type=vzdump
    \ttarget mail-root
    \ttarget hook

    """

    @Test func parsesRepeatedKeysAndRoundTrips() throws {
        let cfg = try NotificationConfig.parse(sample, file: "n.cfg")
        guard case let .sendmail(s) = cfg.targets[0] else { Issue.record("not sendmail"); return }
        #expect(s.mailto == ["root@example.com", "ops@example.com"])
        guard case let .webhook(w) = cfg.targets[1] else { Issue.record("not webhook"); return }
        #expect(w.headers.first?.name == "Authorization" && w.headers.first?.value == "Bearer abc")
        #expect(w.body == "{\"t\": {{ json title }}}")
        #expect(cfg.matchers[0].targets == ["mail-root", "hook"])
        let again = try NotificationConfig.parse(cfg.serialized(), file: "again.cfg")
        #expect(again.targets == cfg.targets && again.matchers == cfg.matchers)
    }

    @Test(arguments: [
        ("matcher: m\n\ttarget nowhere\n", "n.cfg: matcher 'm': unknown target 'nowhere'"),
        ("smtp: s\n\tserver x\n\tmailto a@b\n", "n.cfg:1: smtp 's': no 'from-address'"),
        ("smtp: s\n\tserver x\n\tport 70000\n\tmailto a@b\n\tfrom-address c@d\n", "n.cfg:1: smtp 's': invalid port '70000': 1 to 65535"),
        ("sendmail: s\n\tmailto not-an-address\n", "n.cfg:1: sendmail 's': invalid mailto address 'not-an-address'"),
        ("sendmail: s\n\tmailto a@b\n\tfrom-address x\n\tauthor y\n\tauthor z\n", "n.cfg:5: duplicate key 'author' in sendmail 's'"),
        ("webhook: w\n\turl ftp://x/\n", "n.cfg:1: webhook 'w': invalid url 'ftp://x/': expected http://host[:port]/path or https://…"),
        ("webhook: w\n\turl http://x/\n\tbody \(Data("{{ nope }}".utf8).base64EncodedString())\n",
         "n.cfg:1: webhook 'w': body template: unknown value 'nope' (title, message, severity, timestamp, fields.<name>)"),
        ("matcher: m\n\tmatch-severity fatal\n", "n.cfg:1: matcher 'm': invalid severity 'fatal': info, notice, warning, error or unknown"),
        ("matcher: m\n\tmatch-field fuzzy:type=x\n", "n.cfg:1: matcher 'm': invalid match-field 'fuzzy:type=x': 'fuzzy' is neither 'exact' nor 'regex'"),
        ("gotify: g\n\tserver x\n", "n.cfg:1: unknown section type 'gotify' (known: matcher, sendmail, smtp, webhook)"),
    ])
    func refusesBadConfigWithFileAndLine(text: String, message: String) {
        #expect(throws: (any Error).self) { try NotificationConfig.parse(text, file: "n.cfg") }
        do { _ = try NotificationConfig.parse(text, file: "n.cfg") } catch { #expect("\(error)" == message) }
    }

    @Test func refusesControlCharactersInValues() {
        let s = SectionConfig.Section(type: "sendmail", id: "s", properties: [("mailto", "a@b"), ("comment", "x\n\tmailto evil@x")])
        #expect(throws: NotifyError.self) { try NotificationConfig.target(s) }
    }
}

@Suite struct MatcherTests {
    func event(_ sev: Severity, vmids: [String] = ["100", "101"], job: String? = nil) -> NotificationEvent {
        var f: [String: [String]] = ["type": ["vzdump"], "hostname": ["pve1"], "vmid": vmids]
        if let job { f["job-id"] = [job] }
        return NotificationEvent(severity: sev, title: "t", message: "m", fields: f)
    }

    @Test func emptyMatcherMatchesEverything() {
        #expect(Matcher(name: "m").matches(event(.info)))
    }

    @Test func severityAndFieldsModeAllAndAny() throws {
        var m = Matcher(name: "m")
        m.severities = [.error]
        m.fields = [try .init("exact:vmid=101,200")]
        #expect(m.matches(event(.error)))
        #expect(!m.matches(event(.info)))
        #expect(!m.matches(event(.error, vmids: ["100"])))
        m.mode = .any
        #expect(m.matches(event(.info)))
        #expect(m.matches(event(.error, vmids: ["100"])))
        #expect(!m.matches(event(.info, vmids: ["100"])))
    }

    @Test func regexAndMissingFieldAndInvert() throws {
        var m = Matcher(name: "m")
        m.fields = [try .init("regex:job-id=^nightly-")]
        #expect(m.matches(event(.info, job: "nightly-7")))
        #expect(!m.matches(event(.info, job: "hourly")))
        #expect(!m.matches(event(.info)))  // no job-id at all
        m.invert = true
        #expect(m.matches(event(.info, job: "hourly")))
    }

    @Test func notifierSendsEachTargetOnceAndSkipsDisabled() throws {
        var cfg = NotificationConfig(file: "x")
        var a = SendmailTarget(name: "a"); a.mailto = ["a@b"]
        var b = SendmailTarget(name: "b"); b.mailto = ["a@b"]; b.disabled = true
        cfg.targets = [.sendmail(a), .sendmail(b)]
        var m1 = Matcher(name: "m1"); m1.targets = ["a", "b"]
        var m2 = Matcher(name: "m2"); m2.targets = ["a"]
        var m3 = Matcher(name: "m3"); m3.targets = ["b"]; m3.severities = [.error]
        cfg.matchers = [m1, m2, m3]
        #expect(Notifier(config: cfg, hostname: "h").targets(for: event(.error)).map(\.name) == ["a"])
    }
}

@Suite struct BodyTemplateTests {
    @Test func rendersValuesAndHelpers() throws {
        let n = NotificationEvent(severity: .error, title: "vzdump \"x\"", message: "line1\nline2",
                                  fields: ["vmid": ["100", "101"]], timestamp: Date(timeIntervalSince1970: 1_700_000_000))
        let t = try BodyTemplate("{\"title\": {{ json title }}, \"msg\": \"{{ escape message }}\", \"sev\": \"{{ severity }}\", \"vm\": \"{{ fields.vmid }}\", \"ts\": {{ timestamp }}, \"q\": \"{{ url-encode title }}\"}")
        let out = t.render(n)
        #expect(out == "{\"title\": \"vzdump \\\"x\\\"\", \"msg\": \"line1\\nline2\", \"sev\": \"error\", \"vm\": \"100,101\", \"ts\": 1700000000, \"q\": \"vzdump%20%22x%22\"}")
        #expect((try? JSONSerialization.jsonObject(with: Data(out.utf8))) != nil)
    }

    @Test func refusesUnknownHelperAndUnclosedBraces() {
        #expect(throws: NotifyError.self) { try BodyTemplate("{{ shout title }}") }
        #expect(throws: NotifyError.self) { try BodyTemplate("{{ title ") }
    }
}
