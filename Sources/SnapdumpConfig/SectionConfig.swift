/// Proxmox's section-config format (`storage.cfg`, `jobs.cfg`):
///
///     dir: local
///     	path /var/lib/vz
///     	content images,backup
///
/// A header `type: id` starts a section; indented `key value` lines belong to
/// it; blank lines and `#` comments separate. Order of sections and keys is
/// kept so that a rewrite changes only what was changed.
public struct SectionConfig: Equatable, Sendable {
    public struct Section: Equatable, Sendable {
        public var type: String
        public var id: String
        public var properties: [(key: String, value: String)]
        public var line: Int

        public init(type: String, id: String, properties: [(key: String, value: String)] = [], line: Int = 0) {
            self.type = type
            self.id = id
            self.properties = properties
            self.line = line
        }

        public subscript(key: String) -> String? {
            get { properties.first { $0.key == key }?.value }
            set {
                if let i = properties.firstIndex(where: { $0.key == key }) {
                    if let newValue { properties[i].value = newValue } else { properties.remove(at: i) }
                } else if let newValue {
                    properties.append((key, newValue))
                }
            }
        }

        /// Every value of a key that may repeat (notifications.cfg's `target`, `match-field`).
        public func values(_ key: String) -> [String] {
            properties.filter { $0.key == key }.map(\.value)
        }

        public static func == (a: Section, b: Section) -> Bool {
            a.type == b.type && a.id == b.id && a.properties.map { [$0.key, $0.value] } == b.properties.map { [$0.key, $0.value] }
        }
    }

    /// Keys each section type accepts; a key outside the set is an error.
    public typealias Schema = [String: Set<String>]

    public var sections: [Section]

    public init(sections: [Section] = []) { self.sections = sections }

    public subscript(id id: String) -> Section? {
        sections.first { $0.id == id }
    }

    /// Parses `text`; errors name `file` and the line. With a schema, unknown
    /// types and keys are errors too. A key repeats only if it is in `repeatable`.
    public static func parse(_ text: String, file: String, schema: Schema? = nil, repeatable: Set<String> = [],
                             validID: (String) -> Bool = SectionConfig.isValidID) throws -> SectionConfig {
        var result: [Section] = []
        var current: Section?
        var seenIDs = Set<String>()
        var lineNo = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNo += 1
            let line = String(raw)
            let trimmed = line.trimmingWhitespace()
            if trimmed.isEmpty {
                if let c = current { result.append(c); current = nil }
                continue
            }
            if trimmed.hasPrefix("#") { continue }
            let indented = line.first == " " || line.first == "\t"
            if !indented {
                if let c = current { result.append(c) }
                guard let colon = trimmed.firstIndex(of: ":") else {
                    throw ConfigError(file: file, line: lineNo, "expected a section header 'type: id', got '\(trimmed)'")
                }
                let type = String(trimmed[..<colon]).trimmingWhitespace()
                let id = String(trimmed[trimmed.index(after: colon)...]).trimmingWhitespace()
                guard !type.isEmpty, type.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw ConfigError(file: file, line: lineNo, "invalid section type '\(type)'")
                }
                if let schema, schema[type] == nil {
                    throw ConfigError(file: file, line: lineNo, "unknown section type '\(type)' (known: \(schema.keys.sorted().joined(separator: ", ")))")
                }
                guard validID(id) else {
                    throw ConfigError(file: file, line: lineNo, "invalid \(type) id '\(id)'")
                }
                guard seenIDs.insert(id).inserted else {
                    throw ConfigError(file: file, line: lineNo, "duplicate id '\(id)'")
                }
                current = Section(type: type, id: id, line: lineNo)
            } else {
                guard current != nil else {
                    throw ConfigError(file: file, line: lineNo, "property line outside a section: '\(trimmed)'")
                }
                let parts = trimmed.split(maxSplits: 1, whereSeparator: { $0 == " " || $0 == "\t" })
                let key = String(parts[0])
                let value = parts.count > 1 ? String(parts[1]).trimmingWhitespace() : ""
                guard key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw ConfigError(file: file, line: lineNo, "invalid key '\(key)'")
                }
                if let schema, let allowed = schema[current!.type], !allowed.contains(key) {
                    throw ConfigError(file: file, line: lineNo, "unknown key '\(key)' for \(current!.type) '\(current!.id)'")
                }
                if let problem = ConfigValue.problem(value) {
                    throw ConfigError(file: file, line: lineNo, "\(key): \(problem)")
                }
                if current![key] != nil, !repeatable.contains(key) {
                    throw ConfigError(file: file, line: lineNo, "duplicate key '\(key)' in \(current!.type) '\(current!.id)'")
                }
                current!.properties.append((key, value))
            }
        }
        if let c = current { result.append(c) }
        return SectionConfig(sections: result)
    }

    /// Checks that `serialized()` reads back as these sections: ids and keys
    /// of the allowed characters, values without control characters (a
    /// newline in a value would inject a line). Call before writing; errors
    /// name `file`, the section and the key.
    public func validate(file: String, validID: (String) -> Bool = SectionConfig.isValidID) throws(ConfigError) {
        func isKey(_ k: String) -> Bool { !k.isEmpty && k.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" } }
        for s in sections {
            guard isKey(s.type) else { throw ConfigError(file: file, "invalid section type '\(s.type)'") }
            guard validID(s.id) else { throw ConfigError(file: file, "invalid \(s.type) id '\(s.id)'") }
            for p in s.properties {
                guard isKey(p.key) else { throw ConfigError(file: file, "invalid key '\(p.key)' in \(s.type) '\(s.id)'") }
                if let problem = ConfigValue.problem(p.value) {
                    throw ConfigError(file: file, "\(s.type) '\(s.id)': \(p.key): \(problem)")
                }
            }
        }
    }

    /// The text form, as Proxmox writes it: header, tab-indented keys, blank line.
    public func serialized() -> String {
        var out = ""
        for s in sections {
            out += "\(s.type): \(s.id)\n"
            for p in s.properties {
                out += p.value.isEmpty ? "\t\(p.key)\n" : "\t\(p.key) \(p.value)\n"
            }
            out += "\n"
        }
        return out
    }

    /// Proxmox's id rule: starts with a letter, then letters, digits, `-`, `_`, `.`.
    public static func isValidID(_ id: String) -> Bool {
        guard let first = id.first, first.isASCII, first.isLetter else { return false }
        return id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
