import Foundation

/// vzdump's `notes-template`: the text written to `<archive>.notes` after a
/// backup. `\n` is a newline and `\\` a backslash; `{{guestname}}`,
/// `{{vmid}}`, `{{node}}` and `{{cluster}}` are replaced; any other `{{…}}`
/// is an error (the backup then gets no notes and a warning, as in Proxmox).
public enum NotesTemplate {
    /// Proxmox's limit on the template's length.
    public static let maxLength = 1024

    public struct Variables: Sendable, Equatable {
        /// The VM's `name`, or "VM <vmid>" when it has none.
        public var guestname: String
        public var vmid: Int
        /// The host's name up to the first dot (Proxmox's node name).
        public var node: String
        /// The cluster name; snapdump hosts are standalone, so "".
        public var cluster: String

        public init(vmid: Int, guestName: String?, node: String = NotesTemplate.nodeName(), cluster: String = "") {
            self.vmid = vmid
            self.guestname = guestName.flatMap { $0.isEmpty ? nil : $0 } ?? "VM \(vmid)"
            self.node = node
            self.cluster = cluster
        }
    }

    /// Checks a template as an option value: at most 1024 characters.
    public static func validate(_ template: String) -> String? {
        template.count > maxLength ? "notes-template is \(template.count) characters long, at most \(maxLength) allowed" : nil
    }

    /// Renders `template`; throws `BackupError` on an unknown escape or variable.
    public static func render(_ template: String, _ vars: Variables) throws -> String {
        // Escapes first (Perl: s/\\(.)/.../eg; `.` does not match a newline).
        var unescaped = ""
        var it = template.makeIterator()
        while let c = it.next() {
            guard c == "\\" else { unescaped.append(c); continue }
            guard let n = it.next() else { unescaped.append(c); break }
            switch n {
            case "\\": unescaped.append("\\")
            case "n": unescaped.append("\n")
            case "\n": unescaped.append(c); unescaped.append(n)
            default: throw BackupError("unexpected escape character '\(n)'")
            }
        }
        let values = ["cluster": vars.cluster, "guestname": vars.guestname, "node": vars.node, "vmid": String(vars.vmid)]
        let variable = /\{\{(cluster|guestname|node|vmid)\}\}/
        let rendered = unescaped.replacing(variable) { m in values[String(m.output.1)] ?? "" }
        if let unknown = rendered.firstMatch(of: /\{\{(\S+?)\}\}/) {
            throw BackupError("unexpected variable name '\(unknown.output.1)'")
        }
        return rendered
    }

    /// This host's name up to the first dot, as Proxmox's `nodename()`.
    public static func nodeName() -> String {
        var u = utsname()
        guard uname(&u) == 0 else { return "localhost" }
        let raw = u.nodename
        let full = withUnsafeBytes(of: raw) { b in
            String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)
        }
        return full.split(separator: ".").first.map(String.init) ?? full
    }
}
