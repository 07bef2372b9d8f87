import ArgumentParser
import Foundation
import SnapdumpConfig

/// `--output-format` as pvesm and pvesh take it.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case text, json
    case jsonPretty = "json-pretty"
}

/// The option every listing or showing command includes.
struct OutputOptions: ParsableArguments {
    @Option(name: .customLong("output-format"), help: "text (default), json or json-pretty.")
    var format: OutputFormat = .text
}

/// A typed value, so that JSON keeps numbers as numbers and absent as null.
indirect enum OutputValue: Sendable {
    case string(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case null
    case list([OutputValue])
    case record(OutputRecord)

    static func of(_ s: String?) -> OutputValue { s.map(OutputValue.string) ?? .null }
    static func of<I: BinaryInteger>(_ n: I?) -> OutputValue { n.map { .int(Int64(clamping: $0)) } ?? .null }
    static func of(_ d: Date?) -> OutputValue { d.map { .int(Int64($0.timeIntervalSince1970)) } ?? .null }
}

/// One object of output: fields in a fixed order, each with its stable JSON
/// key, its column header (nil: JSON only) and, where the table shows it
/// differently (a formatted time or size), its text.
struct OutputRecord: Sendable {
    struct Field: Sendable {
        var key: String
        var header: String?
        var value: OutputValue
        var text: String?
    }

    var fields: [Field] = []

    mutating func add(_ key: String, _ header: String?, _ value: OutputValue, text: String? = nil) {
        fields.append(Field(key: key, header: header, value: value, text: text))
    }
}

enum Output {
    /// A list: an aligned table in text, a JSON array of objects otherwise.
    /// `header` gives the columns when there is no record to take them from.
    static func list(_ records: [OutputRecord], _ format: OutputFormat, columns: [String] = []) {
        switch format {
        case .text:
            let headers = records.first.map { $0.fields.compactMap(\.header) } ?? columns
            let rows = records.map { r in r.fields.filter { $0.header != nil }.map { $0.text ?? text($0.value) } }
            print(Table.render(headers, rows))
        case .json, .jsonPretty:
            print(json(.list(records.map(OutputValue.record)), pretty: format == .jsonPretty, indent: ""))
        }
    }

    /// One object: `text` renders the human form; JSON is the record.
    static func object(_ record: OutputRecord, _ format: OutputFormat, text: () -> String) {
        switch format {
        case .text: print(text(), terminator: "")
        case .json, .jsonPretty: print(json(.record(record), pretty: format == .jsonPretty, indent: ""))
        }
    }

    static func text(_ v: OutputValue) -> String {
        switch v {
        case let .string(s): return s
        case let .int(n): return String(n)
        case let .double(d): return String(d)
        case let .bool(b): return b ? "1" : "0"
        case .null: return "-"
        case let .list(l): return l.map(text).joined(separator: ",")
        case .record: return "…"
        }
    }

    /// JSON in the record's field order (stable for scripts and diffs).
    static func json(_ v: OutputValue, pretty: Bool, indent: String) -> String {
        let inner = indent + "  "
        let nl = pretty ? "\n" : ""
        switch v {
        case let .string(s): return quote(s)
        case let .int(n): return String(n)
        case let .double(d): return d.isFinite ? String(d) : "null"
        case let .bool(b): return b ? "true" : "false"
        case .null: return "null"
        case let .list(items):
            if items.isEmpty { return "[]" }
            let parts = items.map { (pretty ? inner : "") + json($0, pretty: pretty, indent: inner) }
            return "[" + nl + parts.joined(separator: "," + nl) + nl + (pretty ? indent : "") + "]"
        case let .record(r):
            if r.fields.isEmpty { return "{}" }
            let parts = r.fields.map { (pretty ? inner : "") + quote($0.key) + (pretty ? ": " : ":") + json($0.value, pretty: pretty, indent: inner) }
            return "{" + nl + parts.joined(separator: "," + nl) + nl + (pretty ? indent : "") + "}"
        }
    }

    static func quote(_ s: String) -> String { JSONText.quoted(s) }
}
