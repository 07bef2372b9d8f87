/// Rules every value written to or read from a config file obeys, whatever
/// its key: one line, no control characters (a newline in a value would
/// start a new key — `comment x\n\tscript /tmp/evil.sh` — when the file is
/// read back), and Proxmox's booleans.
public enum ConfigValue {
    /// Why `value` cannot be stored in a line-based config file, or nil.
    /// Tabs are refused too: the section-config writer indents with them.
    public static func problem(_ value: String) -> String? {
        guard let bad = value.unicodeScalars.first(where: isControl) else { return nil }
        let hex = String(bad.value, radix: 16, uppercase: true)
        return "contains a control character (U+\(String(repeating: "0", count: max(0, 4 - hex.count)) + hex)); values are one line of printable text"
    }

    /// Throws a `ConfigError` naming `what` (`--comment`, `jobs.cfg:4`) when
    /// `value` cannot be stored.
    public static func check(_ value: String, what: String) throws(ConfigError) {
        if let p = problem(value) { throw ConfigError(file: what, p) }
    }

    /// C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
    static func isControl(_ s: Unicode.Scalar) -> Bool {
        s.value < 0x20 || (0x7F...0x9F).contains(s.value) || s.value == 0x2028 || s.value == 0x2029
    }

    /// Proxmox booleans: 1/0, yes/no, on/off, true/false (any case). The one
    /// parser of booleans for config files and the command line.
    public static func bool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "1", "yes", "on", "true": return true
        case "0", "no", "off", "false": return false
        default: return nil
        }
    }
}
