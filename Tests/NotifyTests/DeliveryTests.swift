import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// Notifications delivered for real: an SMTP server (aiosmtpd) in each TLS
/// mode, the host's sendmail interface (msmtp relaying to that server), and
/// an HTTP server for webhooks — each started by the test and stopped by PID.
@Suite(.serialized, .enabled(if: Integration.required || FileManager.default.fileExists(atPath: "/usr/bin/msmtp")))
struct DeliveryTests {
    let scratch: String
    var configDir: String { scratch + "/etc" }

    init() throws {
        scratch = try Integration.scratchDirectory("notify")
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
    }

    func cli(_ args: [String], env: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        try SnapdumpBinary.run(args, configDir: configDir, environment: env.merging(["TZ": "UTC"]) { a, _ in a })
    }

    @discardableResult
    func must(_ args: [String], env: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        let r = try cli(args, env: env)
        #expect(r.status == 0, "snapdump \(args.joined(separator: " ")): \(r)")
        return r
    }

    /// Headers and body of a stored mail.
    func parseMail(_ text: String) -> (headers: [String: String], body: String) {
        let parts = text.replacingOccurrences(of: "\r\n", with: "\n").components(separatedBy: "\n\n")
        var headers: [String: String] = [:]
        for l in parts[0].split(separator: "\n") {
            if let c = l.firstIndex(of: ":") { headers[String(l[..<c])] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces) }
        }
        return (headers, parts.dropFirst().joined(separator: "\n\n"))
    }

    @Test(arguments: ["insecure", "starttls", "tls"])
    func smtpTargetDeliversInEveryModeWithAuth(mode: String) throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cert = try TestCertificate(in: scratch)
        let sink = try Sink("mailsink.py", ["--mode", mode, "--cert", cert.cert, "--key", cert.key, "--user", "bob", "--password", "s3cret"])
        defer { sink.stop() }
        try "s3cret\n".write(toFile: scratch + "/pw", atomically: true, encoding: .utf8)
        try must(["notify", "target", "add", "smtp", "mail", "--server", "localhost", "--port", "\(sink.port)", "--mode", mode,
                  "--username", "bob", "--password-file", scratch + "/pw", "--mailto", "admin@example.com",
                  "--mailto", "ops@example.com", "--from-address", "backup@example.com", "--author", "Backup Bot"])
        let trusted = ["SSL_CERT_FILE": cert.cert]
        try must(["notify", "target", "test", "mail"], env: trusted)
        let env = try #require(sink.json("1.json"))
        #expect(env["from"] as? String == "backup@example.com")
        #expect(env["to"] as? [String] == ["admin@example.com", "ops@example.com"])
        #expect(env["tls"] as? Bool == (mode != "insecure"))
        #expect(env["auth"] as? Bool == true)
        let mail = parseMail(try #require(sink.file("1.eml")))
        #expect(mail.headers["Subject"] == "Test notification")
        #expect(mail.headers["From"] == "Backup Bot <backup@example.com>")
        #expect(mail.body.contains("This is a test of the notification target 'mail'."))

        if mode != "insecure" {
            // The certificate is checked: without trusting it the handshake fails, with one clear error.
            let r = try cli(["notify", "target", "test", "mail"])
            #expect(r.status != 0)
            #expect(r.errorLines.count == 1 && r.stderr.contains("certificate verify failed"), "\(r)")
        }
        try "wrong\n".write(toFile: scratch + "/pw", atomically: true, encoding: .utf8)
        let bad = try cli(["notify", "target", "test", "mail"], env: trusted)
        #expect(bad.status != 0 && bad.errorLines.count == 1 && bad.stderr.contains("refused AUTH"), "\(bad)")
        #expect(sink.count(".eml") == 1)
    }

    @Test func webhookPostsTheRenderedBodyAndHeaders() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let sink = try Sink("webhooksink.py")
        defer { sink.stop() }
        try must(["notify", "target", "add", "webhook", "hook", "--url", "http://127.0.0.1:\(sink.port)/hooks/backup?x=1",
                  "--header", "Authorization: Bearer t0ken", "--body", "{\"text\": {{ json title }}, \"sev\": \"{{ severity }}\"}"])
        try must(["notify", "target", "test", "hook"])
        let req = try #require(sink.json("1.json"))
        #expect(req["method"] as? String == "POST")
        #expect(req["path"] as? String == "/hooks/backup?x=1")
        let headers = try #require(req["headers"] as? [String: String])
        #expect(headers["Authorization"] == "Bearer t0ken")
        #expect(headers["Content-Type"] == "application/json")
        let body = try #require(req["body"] as? String)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: String])
        #expect(obj == ["text": "Test notification", "sev": "info"])
    }

    @Test func webhookErrorStatusFailsTheTest() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let sink = try Sink("webhooksink.py", ["--status", "500"])
        defer { sink.stop() }
        try must(["notify", "target", "add", "webhook", "hook", "--url", "http://127.0.0.1:\(sink.port)/x"])
        let r = try cli(["notify", "target", "test", "hook"])
        #expect(r.status != 0 && r.errorLines.count == 1 && r.stderr.contains("500"), "\(r)")
    }

    /// A stopped guest's backup job: its report goes to the matched targets
    /// only (severity and vmid matchers), with the summary table and the task log.
    @Test func backupJobReportGoesThroughMatchers() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let mail = try Sink("mailsink.py")
        defer { mail.stop() }
        let hook = try Sink("webhooksink.py")
        defer { hook.stop() }
        let store = scratch + "/store"
        try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
        try must(["storage", "add", "dir", "local", "--path", store, "--content", "images,backup"])
        try must(["vm", "create", "100", "--name", "web", "--memory", "128", "--scsi0", "local:4M"])
        try must(["vm", "create", "101", "--name", "db", "--memory", "128", "--scsi0", "local:4M"])
        try must(["notify", "target", "add", "smtp", "mail", "--server", "127.0.0.1", "--port", "\(mail.port)", "--mode", "insecure",
                  "--mailto", "admin@example.com", "--from-address", "backup@example.com"])
        try must(["notify", "target", "add", "webhook", "hook", "--url", "http://127.0.0.1:\(hook.port)/",
                  "--body", "{{ json title }}"])
        // Mail for everything about VM 101; the webhook only for errors.
        try must(["notify", "matcher", "add", "vm101", "--target", "mail", "--match-field", "exact:vmid=101",
                  "--match-field", "exact:type=vzdump"])
        try must(["notify", "matcher", "add", "errors", "--target", "hook", "--match-severity", "error"])

        let ok = try must(["backup", "100", "101", "--mode", "stop", "--storage", "local"])
        #expect(ok.stderr.contains("sent notification to target 'mail'"), "\(ok)")
        let m = parseMail(try #require(mail.file("1.eml")))
        #expect(m.headers["Subject"]?.hasPrefix("vzdump backup status (") == true)
        #expect(m.headers["Subject"]?.hasSuffix("): backup successful") == true)
        let row = m.body.split(separator: "\n").first { $0.hasPrefix("101 ") }
        #expect(row?.contains("db") == true && row?.contains(" ok ") == true && row?.contains("vzdump-qemu-101-") == true, "\(m.body)")
        #expect(m.body.contains("100: ") && m.body.contains("101: "))
        #expect(m.body.contains("INFO: Starting Backup of VM 101 (qemu)"))
        #expect(hook.count(".json") == 0)

        // Only VM 100, and it fails (its disk is gone): no mail (matcher is for VM 101), one webhook call.
        let disk = try must(["volume", "list", "local", "--vmid", "100"]).stdout
        let volid = try #require(disk.split(separator: "\n").dropFirst().first?.split(separator: " ").first.map(String.init))
        let path = try must(["volume", "path", volid]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try FileManager.default.removeItem(atPath: path)
        let failed = try cli(["backup", "100", "--mode", "stop", "--storage", "local"])
        #expect(failed.status != 0)
        let req = try #require(hook.json("1.json"))
        #expect((req["body"] as? String)?.hasSuffix("): backup failed\"") == true, "\(req)")
        #expect(mail.count(".eml") == 1)
    }

    /// vzdump's `mailto`: straight to the host's sendmail interface (here msmtp relaying to the test server),
    /// and with `mailnotification failure` only when something failed.
    @Test func mailtoUsesSendmailAndHonoursMailnotification() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let mail = try Sink("mailsink.py")
        defer { mail.stop() }
        let wrapper = scratch + "/sendmail"
        try "#!/bin/sh\nexec /usr/bin/msmtp --host=127.0.0.1 --port=\(mail.port) --auth=off --tls=off \"$@\"\n"
            .write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let env = ["SNAPDUMP_SENDMAIL": wrapper]
        try FileManager.default.createDirectory(atPath: scratch + "/store", withIntermediateDirectories: true)
        try must(["storage", "add", "dir", "local", "--path", scratch + "/store", "--content", "images,backup"])
        try must(["vm", "create", "100", "--name", "web", "--memory", "128", "--scsi0", "local:4M"])
        try must(["backup", "100", "--mode", "stop", "--storage", "local", "--mailto", "root@example.com"], env: env)
        let envl = try #require(mail.json("1.json"))
        #expect(envl["to"] as? [String] == ["root@example.com"])
        #expect(parseMail(try #require(mail.file("1.eml"))).headers["Subject"]?.hasSuffix("backup successful") == true)
        sleep(1)  // a new archive name: they have one-second resolution
        try must(["backup", "100", "--mode", "stop", "--storage", "local", "--mailto", "root@example.com",
                  "--mailnotification", "failure"], env: env)
        usleep(500_000)
        #expect(mail.count(".eml") == 1)
    }
}
