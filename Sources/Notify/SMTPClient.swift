import Foundation

/// Delivers one mail over SMTP (RFC 5321): EHLO, STARTTLS when asked for,
/// AUTH PLAIN or LOGIN when a user is set, one envelope, DATA with dot-stuffing.
/// Every reply is checked; an error quotes the server's reply.
struct SMTPClient {
    var server: String
    var port: Int
    var mode: SMTPTarget.Mode
    var username: String?
    var password: String?
    var hostname: String

    func deliver(_ mail: MailMessage) throws {
        let c = try NetworkConnection(host: server, port: port)
        if mode == .tls { try c.startTLS() }
        _ = try expect(c, 220, "greeting")
        var ext = try ehlo(c)
        if mode == .starttls {
            guard ext.contains("STARTTLS") else { throw NotifyError("\(server):\(port) does not offer STARTTLS") }
            try c.write("STARTTLS\r\n")
            _ = try expect(c, 220, "STARTTLS")
            try c.startTLS()
            ext = try ehlo(c)
        }
        if let username {
            let auth = ext.first { $0.hasPrefix("AUTH ") || $0.hasPrefix("AUTH=") }?.dropFirst(5).split(separator: " ").map(String.init) ?? []
            let secret = password ?? ""
            if auth.contains("PLAIN") || auth.isEmpty {
                let token = Data(([0] + Array(username.utf8) + [0] + Array(secret.utf8))).base64EncodedString()
                try c.write("AUTH PLAIN \(token)\r\n")
                _ = try expect(c, 235, "AUTH PLAIN for user '\(username)'")
            } else if auth.contains("LOGIN") {
                try c.write("AUTH LOGIN\r\n")
                _ = try expect(c, 334, "AUTH LOGIN")
                try c.write(Data(username.utf8).base64EncodedString() + "\r\n")
                _ = try expect(c, 334, "AUTH LOGIN user")
                try c.write(Data(secret.utf8).base64EncodedString() + "\r\n")
                _ = try expect(c, 235, "AUTH LOGIN for user '\(username)'")
            } else {
                throw NotifyError("\(server):\(port) offers no AUTH mechanism snapdump speaks (PLAIN, LOGIN): \(auth.joined(separator: " "))")
            }
        }
        try c.write("MAIL FROM:<\(mail.from)>\r\n")
        _ = try expect(c, 250, "MAIL FROM")
        for r in mail.to {
            try c.write("RCPT TO:<\(r)>\r\n")
            _ = try expect(c, 250, "RCPT TO <\(r)>", also: [251])
        }
        try c.write("DATA\r\n")
        _ = try expect(c, 354, "DATA")
        // Dot-stuffing: a line starting with "." gets another one.
        let stuffed = mail.text.split(separator: "\r\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix(".") ? "." + $0 : String($0) }.joined(separator: "\r\n")
        try c.write(stuffed + (stuffed.hasSuffix("\r\n") ? "" : "\r\n") + ".\r\n")
        _ = try expect(c, 250, "end of DATA")
        try? c.write("QUIT\r\n")
    }

    /// EHLO; returns the extension lines (`STARTTLS`, `AUTH PLAIN LOGIN`, …).
    private func ehlo(_ c: NetworkConnection) throws -> [String] {
        try c.write("EHLO \(hostname)\r\n")
        return Array(try expect(c, 250, "EHLO").dropFirst()).map { $0.uppercased() }
    }

    /// Reads a (multi-line) reply and checks its code; returns its text lines.
    private func expect(_ c: NetworkConnection, _ code: Int, _ step: String, also: [Int] = []) throws -> [String] {
        var lines: [String] = []
        while true {
            guard let line = try c.readLine() else {
                throw NotifyError("\(server):\(port) closed the connection during \(step)")
            }
            guard line.count >= 3, let got = Int(line.prefix(3)) else {
                throw NotifyError("\(server):\(port) sent a malformed reply during \(step): '\(line)'")
            }
            lines.append(String(line.dropFirst(4)))
            if line.count > 3, line[line.index(line.startIndex, offsetBy: 3)] == "-" { continue }
            guard got == code || also.contains(got) else {
                throw NotifyError("\(server):\(port) refused \(step): \(line)")
            }
            return lines
        }
    }
}
