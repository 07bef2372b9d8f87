/// Proxmox property strings: `keep-daily=7,keep-last=3` or, with a default
/// key, `local:vm-100-disk-0,size=8G,cache=none` (the first item has no `=`).
public struct PropertyString: Equatable, Sendable {
    public var items: [(key: String, value: String)]

    public init(items: [(key: String, value: String)] = []) { self.items = items }

    public subscript(key: String) -> String? {
        get { items.first { $0.key == key }?.value }
        set {
            if let i = items.firstIndex(where: { $0.key == key }) {
                if let newValue { items[i].value = newValue } else { items.remove(at: i) }
            } else if let newValue { items.append((key, newValue)) }
        }
    }

    /// Parses `text`; `defaultKey` names an item written without `key=`.
    /// `what` names the value in errors ("prune-backups", "scsi0").
    public static func parse(_ text: String, defaultKey: String? = nil, what: String) throws -> PropertyString {
        var items: [(String, String)] = []
        for (i, part) in text.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let p = part.trimmingWhitespace()
            if p.isEmpty { throw ConfigError(file: what, "empty item in '\(text)'") }
            if let eq = p.firstIndex(of: "=") {
                let k = String(p[..<eq]), v = String(p[p.index(after: eq)...])
                if k.isEmpty { throw ConfigError(file: what, "item '\(p)' has no key") }
                if items.contains(where: { $0.0 == k }) { throw ConfigError(file: what, "duplicate key '\(k)' in '\(text)'") }
                items.append((k, v))
            } else if i == 0, let defaultKey {
                items.append((defaultKey, p))
            } else {
                throw ConfigError(file: what, "expected 'key=value', got '\(p)' in '\(text)'")
            }
        }
        return PropertyString(items: items)
    }

    public func serialized(defaultKey: String? = nil) -> String {
        items.map { ($0.key == defaultKey) ? $0.value : "\($0.key)=\($0.value)" }.joined(separator: ",")
    }

    public static func == (a: PropertyString, b: PropertyString) -> Bool {
        a.items.map { [$0.key, $0.value] } == b.items.map { [$0.key, $0.value] }
    }
}
