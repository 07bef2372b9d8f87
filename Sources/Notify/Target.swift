import Foundation

/// Where a notification is delivered: one section of notifications.cfg.
public enum Target: Sendable, Equatable {
    case sendmail(SendmailTarget)
    case smtp(SMTPTarget)
    case webhook(WebhookTarget)

    public var name: String {
        switch self {
        case let .sendmail(t): return t.name
        case let .smtp(t): return t.name
        case let .webhook(t): return t.name
        }
    }

    public var type: String {
        switch self {
        case .sendmail: return "sendmail"
        case .smtp: return "smtp"
        case .webhook: return "webhook"
        }
    }

    public var disabled: Bool {
        switch self {
        case let .sendmail(t): return t.disabled
        case let .smtp(t): return t.disabled
        case let .webhook(t): return t.disabled
        }
    }

    public var comment: String? {
        switch self {
        case let .sendmail(t): return t.comment
        case let .smtp(t): return t.comment
        case let .webhook(t): return t.comment
        }
    }

    /// What `notify target list` shows in its last column.
    public var summary: String {
        switch self {
        case let .sendmail(t): return t.mailto.joined(separator: ",")
        case let .smtp(t): return "\(t.mailto.joined(separator: ",")) via \(t.server):\(t.effectivePort) (\(t.mode.rawValue))"
        case let .webhook(t): return "\(t.method.rawValue.uppercased()) \(t.url)"
        }
    }

    /// Delivers one notification; throws naming the target and the cause.
    public func send(_ n: NotificationEvent, hostname: String) throws {
        do {
            switch self {
            case let .sendmail(t): try t.send(n, hostname: hostname)
            case let .smtp(t): try t.send(n, hostname: hostname)
            case let .webhook(t): try t.send(n)
            }
        } catch let e as NotifyError {
            throw NotifyError("notification target '\(name)' (\(type)): \(e.message)")
        }
    }
}

/// Hands the mail to the host's mail transfer agent (`/usr/sbin/sendmail`).
public struct SendmailTarget: Sendable, Equatable {
    public var name: String
    public var mailto: [String] = []
    public var fromAddress: String?
    public var author: String?
    public var comment: String?
    public var disabled = false

    public init(name: String) { self.name = name }

    /// The MTA's sendmail interface; `SNAPDUMP_SENDMAIL` names another program
    /// with the same interface (msmtp, a relay wrapper).
    static var program: String {
        ProcessInfo.processInfo.environment["SNAPDUMP_SENDMAIL"] ?? "/usr/sbin/sendmail"
    }

    func send(_ n: NotificationEvent, hostname: String) throws {
        let from = fromAddress ?? "root@\(hostname)"
        let mail = MailMessage(from: from, author: author ?? "snapdump", to: mailto, notification: n, hostname: hostname)
        try Sendmail.deliver(mail, program: Self.program)
    }
}

/// Sends the mail itself to an SMTP server (plain, STARTTLS or TLS).
public struct SMTPTarget: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable { case insecure, starttls, tls }

    public var name: String
    public var server: String = ""
    public var port: Int?
    public var mode: Mode = .tls
    public var username: String?
    /// A file holding the password (root-only), so that it never sits in notifications.cfg.
    public var passwordFile: String?
    public var mailto: [String] = []
    public var fromAddress: String = ""
    public var author: String?
    public var comment: String?
    public var disabled = false

    public init(name: String) { self.name = name }

    /// Proxmox's defaults: 465 for TLS, 587 for STARTTLS, 25 without encryption.
    public var effectivePort: Int {
        port ?? (mode == .tls ? 465 : mode == .starttls ? 587 : 25)
    }

    func send(_ n: NotificationEvent, hostname: String) throws {
        var password: String?
        if let passwordFile {
            guard let data = FileManager.default.contents(atPath: passwordFile), let text = String(data: data, encoding: .utf8) else {
                throw NotifyError("cannot read password file '\(passwordFile)'")
            }
            password = text.trimmingCharacters(in: .newlines)
        }
        let mail = MailMessage(from: fromAddress, author: author ?? "snapdump", to: mailto, notification: n, hostname: hostname)
        try SMTPClient(server: server, port: effectivePort, mode: mode, username: username, password: password, hostname: hostname)
            .deliver(mail)
    }
}

/// POSTs (or PUTs/GETs) a rendered body to a URL.
public struct WebhookTarget: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable { case post, put, get }

    public var name: String
    public var url: String = ""
    public var method: Method = .post
    /// Header name and value (stored base64-encoded in the file, as Proxmox does).
    public var headers: [(name: String, value: String)] = []
    /// Body template (`{{ title }}`, `{{ message }}`, `{{ severity }}`, `{{ fields.vmid }}`, `{{ json message }}`…).
    public var body: String?
    public var comment: String?
    public var disabled = false

    public init(name: String) { self.name = name }

    public static func == (a: WebhookTarget, b: WebhookTarget) -> Bool {
        a.name == b.name && a.url == b.url && a.method == b.method && a.body == b.body && a.comment == b.comment
            && a.disabled == b.disabled && a.headers.map { [$0.name, $0.value] } == b.headers.map { [$0.name, $0.value] }
    }

    func send(_ n: NotificationEvent) throws {
        let url = try HTTPURL(url)
        let rendered = try body.map { try BodyTemplate($0).render(n) }
        var hdrs = headers
        if rendered != nil, !hdrs.contains(where: { $0.name.lowercased() == "content-type" }) {
            hdrs.append(("Content-Type", "application/json"))
        }
        try HTTPClient.send(method: method.rawValue.uppercased(), url: url, headers: hdrs, body: rendered.map { Array($0.utf8) } ?? [])
    }
}
