import SnapdumpConfig

/// Storage types snapdump knows, named as in Proxmox's storage.cfg.
public enum StorageType: String, CaseIterable, Sendable {
    case dir, btrfs, zfspool
}

/// What a storage may hold (Proxmox `content`).
public enum ContentType: String, CaseIterable, Sendable {
    case images, backup
}

/// Disk image formats.
public enum VolumeFormat: String, CaseIterable, Sendable {
    case raw, qcow2
}

/// One storage from storage.cfg.
public struct StorageDefinition: Sendable, Equatable {
    public var type: StorageType
    public var id: String
    public var path: String?
    public var pool: String?
    public var content: Set<ContentType>
    /// `dir` only: snapshots by FICLONE of raw files (XFS or btrfs underneath).
    public var reflink: Bool
    /// Default format for new volumes (`dir`: raw unless set).
    public var format: VolumeFormat?
    public var pruneBackups: String?
    public var disabled: Bool

    public init(type: StorageType, id: String, path: String? = nil, pool: String? = nil,
                content: Set<ContentType> = [.images], reflink: Bool = false, format: VolumeFormat? = nil,
                pruneBackups: String? = nil, disabled: Bool = false) {
        self.type = type
        self.id = id
        self.path = path
        self.pool = pool
        self.content = content
        self.reflink = reflink
        self.format = format
        self.pruneBackups = pruneBackups
        self.disabled = disabled
    }

    /// Keys each type accepts in storage.cfg; anything else is an error.
    public static let schema: SectionConfig.Schema = [
        "dir": ["path", "content", "reflink", "format", "prune-backups", "disable", "shared", "nodes", "mkdir", "is_mountpoint"],
        "btrfs": ["path", "content", "format", "prune-backups", "disable", "nodes", "is_mountpoint"],
        "zfspool": ["pool", "content", "sparse", "blocksize", "mountpoint", "disable", "nodes"],
    ]

    /// Builds a definition from a parsed section, checking values; errors name file:line.
    public init(section s: SectionConfig.Section, file: String) throws {
        guard let type = StorageType(rawValue: s.type) else {
            throw ConfigError(file: file, line: s.line, "unknown storage type '\(s.type)'")
        }
        func bool(_ key: String) throws -> Bool {
            switch s[key] {
            case nil, "0": return false
            case "1": return true
            case let v?: throw ConfigError(file: file, line: s.line, "storage '\(s.id)': \(key) must be 0 or 1, got '\(v)'")
            }
        }
        var content: Set<ContentType> = []
        for c in (s["content"] ?? "images").split(separator: ",") {
            guard let ct = ContentType(rawValue: String(c)) else {
                throw ConfigError(file: file, line: s.line, "storage '\(s.id)': unknown content type '\(c)' (known: images, backup)")
            }
            content.insert(ct)
        }
        var format: VolumeFormat?
        if let f = s["format"] {
            guard let vf = VolumeFormat(rawValue: f) else {
                throw ConfigError(file: file, line: s.line, "storage '\(s.id)': unknown format '\(f)'")
            }
            format = vf
        }
        self.init(type: type, id: s.id, path: s["path"], pool: s["pool"], content: content,
                  reflink: try bool("reflink"), format: format, pruneBackups: s["prune-backups"],
                  disabled: try bool("disable"))
        switch type {
        case .dir, .btrfs:
            guard let p = path, p.hasPrefix("/") else {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': \(type.rawValue) needs an absolute 'path'")
            }
        case .zfspool:
            guard pool != nil else { throw ConfigError(file: file, line: s.line, "storage '\(id)': zfspool needs 'pool'") }
            if content.contains(.backup) {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': zfspool cannot hold content 'backup'")
            }
        }
        if reflink && type != .dir {
            throw ConfigError(file: file, line: s.line, "storage '\(id)': 'reflink' applies to dir storages only")
        }
    }

    public var section: SectionConfig.Section {
        var s = SectionConfig.Section(type: type.rawValue, id: id)
        s["path"] = path
        s["pool"] = pool
        s["content"] = ContentType.allCases.filter { content.contains($0) }.map(\.rawValue).joined(separator: ",")
        if reflink { s["reflink"] = "1" }
        s["format"] = format?.rawValue
        s["prune-backups"] = pruneBackups
        if disabled { s["disable"] = "1" }
        return s
    }
}
