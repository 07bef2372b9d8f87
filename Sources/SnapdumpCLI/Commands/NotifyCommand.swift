import ArgumentParser
import Notify
import SnapdumpConfig

/// `snapdump notify …`: Proxmox VE's notification targets and matchers (notifications.cfg).
struct NotifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify",
        abstract: "Manage notification targets and matchers (notifications.cfg), as Proxmox VE's notification system.",
        subcommands: [NotifyTargetCommand.self, NotifyMatcherCommand.self]
    )
}

struct NotifyTargetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "target", abstract: "Notification targets: sendmail, smtp, webhook.",
        subcommands: [NotifyTargetAdd.self, NotifyTargetList.self, NotifyTargetRemove.self, NotifyTargetTest.self]
    )
}

struct NotifyMatcherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matcher", abstract: "Matchers: which notifications go to which targets.",
        subcommands: [NotifyMatcherAdd.self, NotifyMatcherList.self, NotifyMatcherRemove.self]
    )
}

extension GlobalOptions {
    func notifications() throws -> NotificationConfig {
        try NotificationConfig.load(paths.notificationsConfig)
    }
}

/// A new section checked by the same rules as the file, reported without a file:line.
enum NotifySection {
    static func check<T>(_ what: String, _ build: () throws -> T) throws -> T {
        do { return try build() } catch let e as NotifyError { throw NotifyError("\(what): \(e.message)") }
    }
}
