import Foundation
import SnapdumpSystem

/// A plain-text mail as vzdump sends it: RFC 5322 headers, UTF-8 body,
/// CRLF line ends, `Auto-Submitted` so that mailers do not answer it.
struct MailMessage {
    var from: String
    var to: [String]
    var subject: String
    var body: String
    var author: String
    var date: Date
    var hostname: String

    init(from: String, author: String, to: [String], notification n: NotificationEvent, hostname: String) {
        self.from = from
        self.author = author
        self.to = to
        subject = n.title
        body = n.message
        date = n.timestamp
        self.hostname = hostname
    }

    /// A bare address without anything a header or an SMTP command could be
    /// broken with (no spaces, angle brackets, control characters).
    static func checkAddress(_ a: String, what: String) throws {
        let parts = a.split(separator: "@", omittingEmptySubsequences: false)
        let bad = a.unicodeScalars.contains { $0.value < 0x21 || $0.value == 0x7f || "<>()[]\\,;:\"".unicodeScalars.contains($0) }
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, !bad else {
            throw NotifyError("invalid \(what) address '\(a)'")
        }
    }

    /// RFC 2047 encoded-word when the text is not plain ASCII.
    static func headerText(_ s: String) -> String {
        let clean = s.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ")
        if clean.unicodeScalars.allSatisfy({ $0.isASCII }) { return clean }
        return "=?UTF-8?B?\(Data(clean.utf8).base64EncodedString())?="
    }

    /// `Mon, 30 Nov 2026 03:00:00 +0100`, local time.
    var rfc5322Date: String { CivilTime(date, .local).rfc5322 }

    /// The whole message with CRLF line ends (not yet dot-stuffed).
    var text: String {
        var lines = [
            "From: \(Self.headerText(author)) <\(from)>",
            "To: \(to.joined(separator: ", "))",
            "Subject: \(Self.headerText(subject))",
            "Date: \(rfc5322Date)",
            "Message-ID: <\(UUID().uuidString.lowercased())@\(hostname)>",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=UTF-8",
            "Content-Transfer-Encoding: 8bit",
            "",
        ]
        lines += body.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        return lines.joined(separator: "\r\n") + "\r\n"
    }
}

/// The host's MTA through its sendmail interface: recipients as arguments,
/// the message on standard input (`-i`: a lone dot does not end it).
enum Sendmail {
    static func deliver(_ mail: MailMessage, program: String) throws {
        guard FileManager.default.isExecutableFile(atPath: program) else {
            throw NotifyError("'\(program)' not found: install a mail transfer agent (e.g. postfix or msmtp-mta)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = ["-i", "-f", mail.from, "--"] + mail.to
        let input = Pipe(), errors = Pipe()
        p.standardInput = input
        p.standardError = errors
        p.standardOutput = FileHandle.nullDevice
        do { try p.run() } catch { throw NotifyError("cannot run '\(program)': \(error)") }
        input.fileHandleForWriting.write(Data(mail.text.replacingOccurrences(of: "\r\n", with: "\n").utf8))
        try? input.fileHandleForWriting.close()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            let msg = String(decoding: err, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw NotifyError("'\(program)' exited with status \(p.terminationStatus)\(msg.isEmpty ? "" : ": \(msg)")")
        }
    }
}
