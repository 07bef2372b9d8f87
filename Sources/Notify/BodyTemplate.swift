import Foundation
import SnapdumpConfig

/// The webhook body template, a small subset of the Handlebars syntax Proxmox
/// VE's webhook target uses: `{{ title }}`, `{{ message }}`, `{{ severity }}`,
/// `{{ timestamp }}` (Unix seconds), `{{ fields.<name> }}`, and the helpers
/// `{{ json <value> }}` (a JSON string with quotes), `{{ escape <value> }}`
/// (JSON-escaped, without quotes) and `{{ url-encode <value> }}`.
/// Parsed when the target is configured, so a bad template is refused then.
public struct BodyTemplate: Sendable {
    enum Part { case text(String), value(helper: String?, name: String) }
    let parts: [Part]

    public init(_ template: String) throws {
        var parts: [Part] = []
        var rest = Substring(template)
        while let open = rest.range(of: "{{") {
            parts.append(.text(String(rest[..<open.lowerBound])))
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                throw NotifyError("body template: '{{' without '}}'")
            }
            let words = rest[open.upperBound..<close.lowerBound].split(separator: " ").map(String.init)
            switch words.count {
            case 1: parts.append(.value(helper: nil, name: words[0]))
            case 2:
                guard ["json", "escape", "url-encode"].contains(words[0]) else {
                    throw NotifyError("body template: unknown helper '\(words[0])' (json, escape, url-encode)")
                }
                parts.append(.value(helper: words[0], name: words[1]))
            default: throw NotifyError("body template: cannot read '{{\(rest[open.upperBound..<close.lowerBound])}}'")
            }
            if case let .value(_, name) = parts.last!, !Self.isKnown(name) {
                throw NotifyError("body template: unknown value '\(name)' (title, message, severity, timestamp, fields.<name>)")
            }
            rest = rest[close.upperBound...]
        }
        parts.append(.text(String(rest)))
        self.parts = parts
    }

    static func isKnown(_ name: String) -> Bool {
        ["title", "message", "severity", "timestamp"].contains(name) || (name.hasPrefix("fields.") && name.count > 7)
    }

    public func render(_ n: NotificationEvent) -> String {
        parts.map { part in
            switch part {
            case let .text(t): return t
            case let .value(helper, name):
                let v = Self.value(name, n)
                switch helper {
                case "json": return "\"\(Self.jsonEscape(v))\""
                case "escape": return Self.jsonEscape(v)
                case "url-encode":
                    var allowed = CharacterSet.alphanumerics
                    allowed.insert(charactersIn: "-._~")
                    return v.addingPercentEncoding(withAllowedCharacters: allowed) ?? v
                default: return v
                }
            }
        }.joined()
    }

    static func value(_ name: String, _ n: NotificationEvent) -> String {
        switch name {
        case "title": return n.title
        case "message": return n.message
        case "severity": return n.severity.rawValue
        case "timestamp": return String(Int(n.timestamp.timeIntervalSince1970))
        default: return (n.fields[String(name.dropFirst(7))] ?? []).joined(separator: ",")
        }
    }

    static func jsonEscape(_ s: String) -> String { JSONText.escaped(s) }
}
