import Archive

/// vzdump's backup modes.
public enum BackupMode: String, CaseIterable, Sendable, Codable {
    case stop, suspend, snapshot
}

/// What snapshot mode does when a disk's storage cannot snapshot.
public enum SnapshotFallback: String, CaseIterable, Sendable {
    /// Proxmox's behaviour: warn, then back up in suspend mode.
    case suspend
    /// Fail before touching the guest.
    case refuse
}

/// Options of one `snapdump backup` run, with Proxmox's names and defaults.
public struct BackupOptions: Sendable {
    public var vmids: [Int] = []
    public var all = false
    public var exclude: [Int] = []
    public var mode: BackupMode = .snapshot
    /// Where archives go; `local` unless the command line, job or vzdump.conf says otherwise.
    public var target: BackupTarget = .local
    /// The target's storage id, nil for a dump directory.
    public var storage: String? { target.storageID }
    /// The target's directory when it is a `dumpdir`.
    public var dumpdir: String? { target.dumpdir }
    public var compression: Compression = .none
    /// `zstd` threads; 0 = half the cores (Proxmox's default is 1).
    public var zstdThreads = 1
    public var zstdLevel = 3
    /// Minutes to wait for a clean shutdown in stop mode.
    public var stopwait = 10
    /// KiB/s read limit, 0 = unlimited.
    public var bwlimit = 0
    public var tmpdir: String?
    public var snapshotFallback: SnapshotFallback = .suspend
    public var quiet = false
    /// Copy-before-write scratch space (`fleecing`); off by default.
    public var fleecing = FleecingSettings()
    /// Into a repository: read every disk whole instead of only what the storage says changed (`--full`).
    public var full = false
    /// Into a repository: read a disk whole on every Nth backup of it, counted from the manifests (0 = never).
    public var fullEvery = 0

    public init() {}

    /// `--compress` values: 0, 1 (= lzo), gzip, lzo, zstd.
    public static func parseCompress(_ value: String, zstdThreads: Int, level: Int = 3) throws -> Compression {
        switch value {
        case "0": return .none
        case "gzip": return .gzip
        case "zstd": return .zstd(level: Int32(clamping: level), workers: Int32(clamping: zstdThreads))
        case "1", "lzo": throw BackupError("compress '\(value)': \(Compression.lzoUnsupported); use zstd or gzip")
        default: throw BackupError("invalid value '\(value)' for compress: 0, 1, gzip, lzo or zstd")
        }
    }

    /// Threads for zstd: 0 means half the cores, at least one.
    public static func zstdWorkers(_ requested: Int, cores: Int) -> Int {
        requested > 0 ? requested : max(1, cores / 2)
    }
}
