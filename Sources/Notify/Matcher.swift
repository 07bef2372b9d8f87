import Foundation

/// A `matcher:` section: which notifications go to which targets.
///
///     matcher: failures
///     	mode all
///     	match-severity warning,error
///     	match-field exact:type=vzdump
///     	target mail-admins
///
/// With no `match-*` rule a matcher matches everything. `mode all` needs every
/// rule to match, `mode any` one of them; `invert-match 1` inverts the result.
public struct Matcher: Sendable, Equatable {
    public enum Mode: String, Sendable { case all, any }

    /// `exact:field=a,b` (one of the values) or `regex:field=pattern`.
    public enum FieldRule: Sendable, Equatable, CustomStringConvertible {
        case exact(field: String, values: [String])
        case regex(field: String, pattern: String)

        public init(_ text: String) throws {
            let kind: String
            let rest: Substring
            if let colon = text.firstIndex(of: ":") {
                kind = String(text[..<colon])
                rest = text[text.index(after: colon)...]
            } else {
                kind = "exact"
                rest = Substring(text)
            }
            guard let eq = rest.firstIndex(of: "="), eq != rest.startIndex else {
                throw NotifyError("invalid match-field '\(text)': expected exact:<field>=<value> or regex:<field>=<pattern>")
            }
            let field = String(rest[..<eq])
            let value = String(rest[rest.index(after: eq)...])
            guard field.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw NotifyError("invalid match-field '\(text)': field name '\(field)'")
            }
            switch kind {
            case "exact":
                let values = value.split(separator: ",").map(String.init)
                guard !values.isEmpty else { throw NotifyError("invalid match-field '\(text)': no value") }
                self = .exact(field: field, values: values)
            case "regex":
                do { _ = try NSRegularExpression(pattern: value) } catch {
                    throw NotifyError("invalid match-field '\(text)': bad regular expression '\(value)'")
                }
                self = .regex(field: field, pattern: value)
            default:
                throw NotifyError("invalid match-field '\(text)': '\(kind)' is neither 'exact' nor 'regex'")
            }
        }

        public var description: String {
            switch self {
            case let .exact(f, v): return "exact:\(f)=\(v.joined(separator: ","))"
            case let .regex(f, p): return "regex:\(f)=\(p)"
            }
        }

        func matches(_ n: NotificationEvent) -> Bool {
            switch self {
            case let .exact(field, values):
                return (n.fields[field] ?? []).contains { values.contains($0) }
            case let .regex(field, pattern):
                guard let re = try? NSRegularExpression(pattern: pattern) else { return false }
                return (n.fields[field] ?? []).contains {
                    re.firstMatch(in: $0, range: NSRange($0.startIndex..., in: $0)) != nil
                }
            }
        }
    }

    public var name: String
    public var mode: Mode = .all
    public var severities: [Severity] = []
    public var fields: [FieldRule] = []
    public var invert = false
    public var targets: [String] = []
    public var disabled = false
    public var comment: String?

    public init(name: String) { self.name = name }

    public func matches(_ n: NotificationEvent) -> Bool {
        var results: [Bool] = []
        if !severities.isEmpty { results.append(severities.contains(n.severity)) }
        results += fields.map { $0.matches(n) }
        let matched = results.isEmpty ? true : (mode == .all ? results.allSatisfy { $0 } : results.contains(true))
        return matched != invert
    }
}
