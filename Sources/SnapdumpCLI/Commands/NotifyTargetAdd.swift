import ArgumentParser
import Foundation
import Notify
import SnapdumpConfig

struct NotifyTargetAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a notification target: sendmail, smtp or webhook.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Target type: sendmail, smtp, webhook.") var type: String
    @Argument(help: "Target name.") var name: String
    @Option(help: "Recipient (sendmail, smtp); repeat for several.") var mailto: [String] = []
    @Option(name: .customLong("from-address"), help: "Sender address (smtp: required).") var fromAddress: String?
    @Option(help: "Sender's display name (default snapdump).") var author: String?
    @Option(help: "smtp: server host name.") var server: String?
    @Option(help: "smtp: port (default 465 for tls, 587 for starttls, 25 for insecure).") var port: String?
    @Option(help: "smtp: tls, starttls or insecure (default tls).") var mode: String?
    @Option(help: "smtp: user name for AUTH.") var username: String?
    @Option(name: .customLong("password-file"), help: "smtp: file holding the password (keep it root-only).") var passwordFile: String?
    @Option(help: "webhook: http:// or https:// URL.") var url: String?
    @Option(help: "webhook: post, put or get (default post).") var method: String?
    @Option(help: "webhook: header 'Name: value'; repeat for several.") var header: [String] = []
    @Option(help: "webhook: body template ({{ title }}, {{ message }}, {{ severity }}, {{ fields.vmid }}, {{ json message }}, …).") var body: String?
    @Option(help: "Comment.") var comment: String?

    func run() throws {
        guard ["sendmail", "smtp", "webhook"].contains(type) else {
            throw NotifyError("unknown target type '\(type)' (sendmail, smtp, webhook)")
        }
        guard SectionConfig.isValidID(name) else { throw NotifyError("invalid target name '\(name)'") }
        var s = SectionConfig.Section(type: type, id: name)
        func add(_ key: String, _ value: String?) { if let value { s.properties.append((key, value)) } }
        for m in mailto { add("mailto", m) }
        add("from-address", fromAddress); add("author", author)
        add("server", server); add("port", port); add("mode", mode); add("username", username)
        add("password-file", passwordFile.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 })
        add("url", url); add("method", method)
        for h in header {
            guard let colon = h.firstIndex(of: ":") else { throw NotifyError("invalid --header '\(h)': expected 'Name: value'") }
            let value = h[h.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            add("header", "name=\(h[..<colon]),value=\(Data(value.utf8).base64EncodedString())")
        }
        add("body", body.map { Data($0.utf8).base64EncodedString() })
        add("comment", comment)
        let target = try NotifySection.check("\(type) target '\(name)'") { try NotificationConfig.target(s) }
        var cfg = try global.notifications()
        guard cfg.target(named: name) == nil, !cfg.matchers.contains(where: { $0.name == name }) else {
            throw NotifyError("notification target '\(name)' already exists")
        }
        cfg.targets.append(target)
        try cfg.save()
    }
}
