import Foundation

/// Where snapdump keeps configuration and runtime state.
///
/// Configuration lives in `/etc/snapdump/`; `--config-dir DIR` or
/// `SNAPDUMP_CONFIG_DIR` override it. Runtime state (locks, QMP sockets,
/// pidfiles, console logs) lives in `/run/snapdump/`, or in `<config-dir>/run`
/// when the config dir is overridden, so tests and the demo never touch the
/// host's real state.
public struct SnapdumpPaths: Sendable, Equatable {
    public var configDir: String
    public var runDir: String

    public static let defaultConfigDir = "/etc/snapdump"
    public static let defaultRunDir = "/run/snapdump"

    public init(configDir: String, runDir: String) {
        self.configDir = configDir
        self.runDir = runDir
    }

    /// `explicit` (from `--config-dir`) wins over SNAPDUMP_CONFIG_DIR, which wins over /etc/snapdump.
    public static func resolve(configDir explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment) -> SnapdumpPaths {
        if let dir = explicit ?? environment["SNAPDUMP_CONFIG_DIR"], !dir.isEmpty {
            let abs = dir.hasPrefix("/") ? dir : FileManager.default.currentDirectoryPath + "/" + dir
            let std = (abs as NSString).standardizingPath
            return SnapdumpPaths(configDir: std, runDir: std + "/run")
        }
        return SnapdumpPaths(configDir: defaultConfigDir, runDir: defaultRunDir)
    }

    public var storageConfig: String { configDir + "/storage.cfg" }
    public var vzdumpConfig: String { configDir + "/vzdump.conf" }
    public var jobsConfig: String { configDir + "/jobs.cfg" }
    public var notificationsConfig: String { configDir + "/notifications.cfg" }
    public var vmConfigDir: String { configDir + "/qemu" }
    public func vmConfig(_ vmid: Int) -> String { "\(vmConfigDir)/\(vmid).conf" }

    public var qemuRunDir: String { runDir + "/qemu" }
    public func qmpSocket(_ vmid: Int) -> String { "\(qemuRunDir)/\(vmid).qmp" }
    /// A second QMP monitor for `vm status` only: QEMU serves one client per
    /// monitor, and a backup may hold the first one for its whole run (fleecing).
    public func qmpStatusSocket(_ vmid: Int) -> String { "\(qemuRunDir)/\(vmid).status.qmp" }
    public func guestAgentSocket(_ vmid: Int) -> String { "\(qemuRunDir)/\(vmid).qga" }
    public func pidFile(_ vmid: Int) -> String { "\(qemuRunDir)/\(vmid).pid" }
    public func consoleLog(_ vmid: Int) -> String { "\(qemuRunDir)/\(vmid).serial.log" }
    public var lockDir: String { runDir + "/lock" }
    public var backupLock: String { runDir + "/vzdump.lock" }
    /// Task logs of backups into a repository while they run (`qemu-<vmid>.log`, as vzdump's
    /// /var/log/vzdump for PBS); a finished backup keeps a copy in its snapshot.
    public var taskLogDir: String { configDir == Self.defaultConfigDir ? "/var/log/snapdump" : configDir + "/log" }
}
