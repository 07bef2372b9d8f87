import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// `<config-dir>/notifications.cfg` in Proxmox VE's notification format:
/// `sendmail:`, `smtp:` and `webhook:` targets, and `matcher:` sections that
/// route notifications to them. `target`, `match-field`, `mailto` and
/// `header` may repeat, one value per line, as Proxmox writes lists.
public struct NotificationConfig: Sendable {
    public var targets: [Target] = []
    public var matchers: [Matcher] = []
    public var file: String

    static let schema: SectionConfig.Schema = [
        "sendmail": ["mailto", "from-address", "author", "comment", "disable"],
        "smtp": ["server", "port", "mode", "username", "password-file", "mailto", "from-address", "author", "comment", "disable"],
        "webhook": ["url", "method", "header", "body", "comment", "disable"],
        "matcher": ["mode", "match-severity", "match-field", "invert-match", "target", "comment", "disable"],
    ]
    static let repeatable: Set<String> = ["mailto", "target", "match-field", "header"]

    public init(file: String) { self.file = file }

    /// Reads the file; a missing file is an empty configuration (nothing is sent).
    public static func load(_ path: String) throws -> NotificationConfig {
        guard FileManager.default.fileExists(atPath: path) else { return NotificationConfig(file: path) }
        return try parse(try FileSystem.readText(path), file: path)
    }

    public static func parse(_ text: String, file: String) throws -> NotificationConfig {
        let sections = try SectionConfig.parse(text, file: file, schema: schema, repeatable: repeatable)
        var cfg = NotificationConfig(file: file)
        for s in sections.sections {
            do {
                if s.type == "matcher" { cfg.matchers.append(try matcher(s)) } else { cfg.targets.append(try target(s)) }
            } catch let e as NotifyError {
                throw ConfigError(file: file, line: s.line, "\(s.type) '\(s.id)': \(e.message)")
            }
        }
        try cfg.check()
        return cfg
    }

    /// Cross-section rules: every matcher's targets exist.
    public func check() throws {
        let names = Set(targets.map(\.name))
        for m in matchers {
            for t in m.targets where !names.contains(t) {
                throw ConfigError(file: file, "matcher '\(m.name)': unknown target '\(t)'")
            }
        }
    }

    public func target(named name: String) -> Target? { targets.first { $0.name == name } }

    public func save() throws {
        try check()
        // A value with a newline (`--comment`) would inject a line: refused before writing.
        try sectionConfig.validate(file: file)
        // Root-only: webhook headers and URLs often carry tokens.
        try FileSystem.writeAtomically(file, serialized(), mode: 0o600)
    }

    public func serialized() -> String { sectionConfig.serialized() }

    var sectionConfig: SectionConfig {
        var sections: [SectionConfig.Section] = []
        for t in targets { sections.append(Self.section(t)) }
        for m in matchers { sections.append(Self.section(m)) }
        return SectionConfig(sections: sections)
    }

    // MARK: parsing one section

    static func bool(_ s: SectionConfig.Section, _ key: String) throws -> Bool {
        guard let v = s[key] else { return false }
        guard let b = ConfigValue.bool(v) else { throw NotifyError("invalid value '\(v)' for \(key): expected 0 or 1") }
        return b
    }

    static func addresses(_ s: SectionConfig.Section) throws -> [String] {
        let list = s.values("mailto").flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        for a in list { try MailMessage.checkAddress(a, what: "mailto") }
        return list
    }

    /// A value with a line break or other control character would inject
    /// lines into the file when written: refused wherever it comes from.
    static func checkValues(_ s: SectionConfig.Section) throws {
        for p in s.properties where p.value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw NotifyError("the value of '\(p.key)' contains a line break or control character")
        }
    }

    /// Builds a target from its section: the one set of rules for the file and the command line.
    public static func target(_ s: SectionConfig.Section) throws -> Target {
        try checkValues(s)
        switch s.type {
        case "sendmail":
            var t = SendmailTarget(name: s.id)
            t.mailto = try addresses(s)
            guard !t.mailto.isEmpty else { throw NotifyError("no 'mailto' address") }
            t.fromAddress = s["from-address"]
            if let f = t.fromAddress { try MailMessage.checkAddress(f, what: "from-address") }
            t.author = s["author"]
            t.comment = s["comment"]
            t.disabled = try bool(s, "disable")
            return .sendmail(t)
        case "smtp":
            var t = SMTPTarget(name: s.id)
            guard let server = s["server"], !server.isEmpty else { throw NotifyError("no 'server'") }
            t.server = server
            if let p = s["port"] {
                guard let n = Int(p), (1...65535).contains(n) else { throw NotifyError("invalid port '\(p)': 1 to 65535") }
                t.port = n
            }
            if let m = s["mode"] {
                guard let mode = SMTPTarget.Mode(rawValue: m) else { throw NotifyError("invalid mode '\(m)': insecure, starttls or tls") }
                t.mode = mode
            }
            t.username = s["username"]
            t.passwordFile = s["password-file"]
            if t.passwordFile != nil, t.username == nil { throw NotifyError("'password-file' without 'username'") }
            t.mailto = try addresses(s)
            guard !t.mailto.isEmpty else { throw NotifyError("no 'mailto' address") }
            guard let from = s["from-address"] else { throw NotifyError("no 'from-address'") }
            try MailMessage.checkAddress(from, what: "from-address")
            t.fromAddress = from
            t.author = s["author"]
            t.comment = s["comment"]
            t.disabled = try bool(s, "disable")
            return .smtp(t)
        default: // webhook (the schema admits no other type)
            var t = WebhookTarget(name: s.id)
            guard let url = s["url"] else { throw NotifyError("no 'url'") }
            _ = try HTTPURL(url)
            t.url = url
            if let m = s["method"] {
                guard let method = WebhookTarget.Method(rawValue: m) else { throw NotifyError("invalid method '\(m)': post, put or get") }
                t.method = method
            }
            for h in s.values("header") { t.headers.append(try header(h)) }
            if let b = s["body"] {
                guard let data = Data(base64Encoded: b), let text = String(data: data, encoding: .utf8) else {
                    throw NotifyError("'body' is not base64-encoded UTF-8")
                }
                _ = try BodyTemplate(text)
                t.body = text
            }
            t.comment = s["comment"]
            t.disabled = try bool(s, "disable")
            return .webhook(t)
        }
    }

    /// `name=<header>,value=<base64>`, as Proxmox stores webhook headers.
    static func header(_ text: String) throws -> (name: String, value: String) {
        var name: String?, value: String?
        for part in text.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw NotifyError("invalid header '\(text)': expected name=<name>,value=<base64>") }
            switch kv[0] {
            case "name": name = kv[1]
            case "value":
                guard let d = Data(base64Encoded: kv[1]), let v = String(data: d, encoding: .utf8) else {
                    throw NotifyError("invalid header '\(text)': value is not base64")
                }
                value = v
            default: throw NotifyError("invalid header '\(text)': unknown part '\(kv[0])'")
            }
        }
        guard let name, let value else { throw NotifyError("invalid header '\(text)': needs name and value") }
        try HTTPClient.checkHeader(name: name, value: value)
        return (name, value)
    }

    /// Builds a matcher from its section (file and command line alike).
    public static func matcher(_ s: SectionConfig.Section) throws -> Matcher {
        try checkValues(s)
        var m = Matcher(name: s.id)
        if let v = s["mode"] {
            guard let mode = Matcher.Mode(rawValue: v) else { throw NotifyError("invalid mode '\(v)': all or any") }
            m.mode = mode
        }
        if let v = s["match-severity"] {
            m.severities = try v.split(separator: ",").map {
                guard let sev = Severity(rawValue: String($0)) else {
                    throw NotifyError("invalid severity '\($0)': info, notice, warning, error or unknown")
                }
                return sev
            }
        }
        m.fields = try s.values("match-field").map { try Matcher.FieldRule($0) }
        m.invert = try bool(s, "invert-match")
        m.targets = s.values("target")
        m.comment = s["comment"]
        m.disabled = try bool(s, "disable")
        return m
    }

    // MARK: writing

    static func section(_ t: Target) -> SectionConfig.Section {
        var s = SectionConfig.Section(type: t.type, id: t.name)
        func add(_ k: String, _ v: String?) { if let v { s.properties.append((k, v)) } }
        switch t {
        case let .sendmail(x):
            for a in x.mailto { add("mailto", a) }
            add("from-address", x.fromAddress); add("author", x.author)
        case let .smtp(x):
            add("server", x.server); add("port", x.port.map(String.init)); add("mode", x.mode.rawValue)
            add("username", x.username); add("password-file", x.passwordFile)
            for a in x.mailto { add("mailto", a) }
            add("from-address", x.fromAddress); add("author", x.author)
        case let .webhook(x):
            add("url", x.url); add("method", x.method.rawValue)
            for h in x.headers { add("header", "name=\(h.name),value=\(Data(h.value.utf8).base64EncodedString())") }
            add("body", x.body.map { Data($0.utf8).base64EncodedString() })
        }
        add("comment", t.comment)
        if t.disabled { add("disable", "1") }
        return s
    }

    static func section(_ m: Matcher) -> SectionConfig.Section {
        var s = SectionConfig.Section(type: "matcher", id: m.name)
        s.properties.append(("mode", m.mode.rawValue))
        if !m.severities.isEmpty { s.properties.append(("match-severity", m.severities.map(\.rawValue).joined(separator: ","))) }
        for f in m.fields { s.properties.append(("match-field", f.description)) }
        if m.invert { s.properties.append(("invert-match", "1")) }
        for t in m.targets { s.properties.append(("target", t)) }
        if let c = m.comment { s.properties.append(("comment", c)) }
        if m.disabled { s.properties.append(("disable", "1")) }
        return s
    }
}
