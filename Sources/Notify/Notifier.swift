import Foundation

/// Routes a notification through the matchers to their targets, each target
/// at most once. A target that fails does not stop the others; the caller
/// gets every outcome to log (a notification never fails a backup).
public struct Notifier: Sendable {
    public struct Outcome: Sendable {
        public var target: String
        public var error: String?
    }

    public var config: NotificationConfig
    public var hostname: String

    public init(config: NotificationConfig, hostname: String = Notifier.hostname) {
        self.config = config
        self.hostname = hostname
    }

    public static var hostname: String {
        ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
    }

    /// The targets a notification goes to, in configuration order.
    public func targets(for n: NotificationEvent) -> [Target] {
        var names = Set<String>()
        for m in config.matchers where !m.disabled && m.matches(n) { names.formUnion(m.targets) }
        return config.targets.filter { names.contains($0.name) && !$0.disabled }
    }

    public func send(_ n: NotificationEvent) -> [Outcome] {
        targets(for: n).map { t in
            do {
                try t.send(n, hostname: hostname)
                return Outcome(target: t.name)
            } catch {
                return Outcome(target: t.name, error: "\(error)")
            }
        }
    }
}
