/// JSON string escaping (RFC 8259 §7), the one place for it: QMP commands,
/// `--output-format json` and webhook bodies all write JSON text by hand so
/// that field order and number formatting stay what they document.
public enum JSONText {
    /// `s` escaped for the inside of a JSON string, without the quotes.
    public static func escaped(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20 || u.value == 0x7f:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }

    /// `s` as a JSON string, with the quotes.
    public static func quoted(_ s: String) -> String { "\"" + escaped(s) + "\"" }
}
