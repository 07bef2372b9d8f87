/// `key: value` files: VM configs (`qemu/<vmid>.conf`) and `vzdump.conf`.
/// Comments (`#…`) are kept in place so a rewrite preserves them; the VM
/// description lives in such comments in Proxmox.
public struct KeyValueConfig: Equatable, Sendable {
    public enum Line: Equatable, Sendable {
        case comment(String)
        case entry(key: String, value: String, line: Int)
    }

    public var lines: [Line]

    public init(lines: [Line] = []) { self.lines = lines }

    public var entries: [(key: String, value: String, line: Int)] {
        lines.compactMap { if case let .entry(k, v, l) = $0 { return (k, v, l) } else { return nil } }
    }

    public subscript(key: String) -> String? {
        get {
            for l in lines { if case let .entry(k, v, _) = l, k == key { return v } }
            return nil
        }
        set {
            if let i = lines.firstIndex(where: { if case let .entry(k, _, _) = $0 { return k == key } else { return false } }) {
                if let newValue { lines[i] = .entry(key: key, value: newValue, line: 0) } else { lines.remove(at: i) }
            } else if let newValue {
                lines.append(.entry(key: key, value: newValue, line: 0))
            }
        }
    }

    /// Parses `text`. A line without `:` or a repeated key is an error naming file:line.
    /// Parsing stops at the first `[section]` header (snapshots, pending changes).
    public static func parse(_ text: String, file: String) throws -> KeyValueConfig {
        var lines: [Line] = []
        var seen = Set<String>()
        var n = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            n += 1
            let s = raw.trimmingWhitespace()
            if s.isEmpty { continue }
            if s.hasPrefix("#") { lines.append(.comment(s)); continue }
            if s.hasPrefix("[") { break }
            guard let colon = s.firstIndex(of: ":") else {
                throw ConfigError(file: file, line: n, "expected 'key: value', got '\(s)'")
            }
            let key = String(s[..<colon]).trimmingWhitespace()
            let value = String(s[s.index(after: colon)...]).trimmingWhitespace()
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw ConfigError(file: file, line: n, "invalid key '\(key)'")
            }
            if let problem = ConfigValue.problem(value) {
                throw ConfigError(file: file, line: n, "\(key): \(problem)")
            }
            guard seen.insert(key).inserted else {
                throw ConfigError(file: file, line: n, "duplicate key '\(key)'")
            }
            lines.append(.entry(key: key, value: value, line: n))
        }
        return KeyValueConfig(lines: lines)
    }

    public func serialized() -> String {
        var out = ""
        for l in lines {
            switch l {
            case .comment(let c): out += c + "\n"
            case let .entry(k, v, _): out += "\(k): \(v)\n"
            }
        }
        return out
    }
}
