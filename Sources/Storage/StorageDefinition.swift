import SnapdumpConfig

/// Storage types snapdump knows, named as in Proxmox's storage.cfg.
public enum StorageType: String, CaseIterable, Sendable {
    case dir, btrfs, zfspool, rbd, lvm, lvmthin
    /// snapdump's deduplicating repository (PBS datastore layout) in a local
    /// directory: content `backup` only, like Proxmox's `pbs` storages.
    case repo
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
    /// `dir`: create the path when it is missing (Proxmox's `create-base-path`,
    /// formerly `mkdir`; default 1).
    public var createBasePath: Bool
    /// `dir`: the path (`yes`/`1`) or another directory that must be a mount
    /// point for the storage to be active (Proxmox's `is_mountpoint`), so a
    /// backup never lands on the root filesystem when a disk is not mounted.
    public var isMountpoint: String?
    /// Default format for new volumes (`dir`: raw unless set).
    public var format: VolumeFormat?
    public var pruneBackups: String?
    public var disabled: Bool
    /// `rbd`: monitors (`10.0.0.1 10.0.0.2:6789`, `;`/`,`/space separated); nil: the local ceph.conf's.
    public var monhost: String?
    /// `rbd`: the cephx user without `client.` (default `admin`).
    public var username: String?
    /// `rbd`: the keyring file of that user (Proxmox keeps it in /etc/pve/priv/ceph/<storeid>.keyring).
    public var keyring: String?
    /// `lvm`, `lvmthin`: the volume group.
    public var vgname: String?
    /// `lvmthin`: the thin pool LV in `vgname`.
    public var thinpool: String?
    /// `lvm`: zero an LV before removing it.
    public var saferemove: Bool

    /// `repo` only: the key file encrypting new backups (PVE keeps a `pbs`
    /// storage's key beside storage.cfg; here the path is in the section).
    public var encryptionKey: String?

    public init(type: StorageType, id: String, path: String? = nil, pool: String? = nil,
                content: Set<ContentType> = [.images], reflink: Bool = false, format: VolumeFormat? = nil,
                pruneBackups: String? = nil, disabled: Bool = false,
                monhost: String? = nil, username: String? = nil, keyring: String? = nil,
                vgname: String? = nil, thinpool: String? = nil, saferemove: Bool = false,
                encryptionKey: String? = nil, createBasePath: Bool = true, isMountpoint: String? = nil) {
        self.type = type
        self.id = id
        self.path = path
        self.pool = pool
        self.content = content
        self.reflink = reflink
        self.format = format
        self.pruneBackups = pruneBackups
        self.disabled = disabled
        self.monhost = monhost
        self.username = username
        self.keyring = keyring
        self.vgname = vgname
        self.thinpool = thinpool
        self.saferemove = saferemove
        self.encryptionKey = encryptionKey
        self.createBasePath = createBasePath
        self.isMountpoint = isMountpoint
    }

    /// The directory that must be a mount point, if any: `is_mountpoint yes`
    /// means the storage's path itself.
    public var requiredMountPoint: String? {
        guard let m = isMountpoint else { return nil }
        switch ConfigValue.bool(m) {
        case true?: return path
        case false?: return nil
        case nil: return m
        }
    }

    /// Keys each type accepts in storage.cfg; anything else is an error.
    public static let schema: SectionConfig.Schema = [
        "dir": ["path", "content", "reflink", "format", "prune-backups", "disable", "shared", "nodes", "mkdir",
                "create-base-path", "create-subdirs", "is_mountpoint"],
        "btrfs": ["path", "content", "format", "prune-backups", "disable", "nodes", "is_mountpoint"],
        "zfspool": ["pool", "content", "sparse", "blocksize", "mountpoint", "disable", "nodes"],
        "rbd": ["pool", "monhost", "username", "keyring", "krbd", "content", "disable", "nodes"],
        "lvm": ["vgname", "base", "saferemove", "saferemove_throughput", "content", "disable", "nodes", "shared", "tagged_only"],
        "lvmthin": ["vgname", "thinpool", "content", "disable", "nodes"],
        "repo": ["path", "content", "encryption-key", "prune-backups", "disable", "nodes"],
    ]

    /// Builds a definition from a parsed section, checking values; errors name file:line.
    public init(section s: SectionConfig.Section, file: String) throws {
        guard let type = StorageType(rawValue: s.type) else {
            throw ConfigError(file: file, line: s.line, "unknown storage type '\(s.type)'")
        }
        func bool(_ key: String, default d: Bool = false) throws -> Bool {
            guard let v = s[key] else { return d }
            guard let b = ConfigValue.bool(v) else {
                throw ConfigError(file: file, line: s.line, "storage '\(s.id)': \(key) must be 0 or 1, got '\(v)'")
            }
            return b
        }
        var content: Set<ContentType> = []
        for c in (s["content"] ?? (s.type == StorageType.repo.rawValue ? "backup" : "images")).split(separator: ",") {
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
                  disabled: try bool("disable"), monhost: s["monhost"], username: s["username"], keyring: s["keyring"],
                  vgname: s["vgname"], thinpool: s["thinpool"], saferemove: try bool("saferemove"),
                  encryptionKey: s["encryption-key"],
                  // `mkdir` is the older name; Proxmox lets create-base-path win when both are set.
                  createBasePath: try bool(s["create-base-path"] != nil ? "create-base-path" : "mkdir", default: true),
                  isMountpoint: s["is_mountpoint"])
        if let m = isMountpoint, ConfigValue.bool(m) == nil, !m.hasPrefix("/") {
            throw ConfigError(file: file, line: s.line, "storage '\(id)': is_mountpoint must be yes, no or an absolute path, got '\(m)'")
        }
        switch type {
        case .dir, .btrfs:
            guard let p = path, p.hasPrefix("/") else {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': \(type.rawValue) needs an absolute 'path'")
            }
        case .repo:
            guard let p = path, p.hasPrefix("/") else {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': repo needs an absolute 'path'")
            }
            guard content == [.backup] else {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': a repo holds content 'backup' only")
            }
            if let k = encryptionKey, !k.hasPrefix("/") {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': encryption-key must be an absolute path")
            }
        case .zfspool:
            guard pool != nil else { throw ConfigError(file: file, line: s.line, "storage '\(id)': zfspool needs 'pool'") }
            if content.contains(.backup) {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': zfspool cannot hold content 'backup'")
            }
        case .lvm, .lvmthin:
            guard let vg = vgname, !vg.isEmpty else {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': \(type.rawValue) needs 'vgname'")
            }
            if type == .lvmthin && (thinpool ?? "").isEmpty {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': lvmthin needs 'thinpool'")
            }
            if content.contains(.backup) {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': \(type.rawValue) cannot hold content 'backup'")
            }
            if s["base"] != nil {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': 'base' (a VG on an iSCSI LUN) is not supported")
            }
        case .rbd:
            if pool == nil { pool = "rbd" }
            if content.contains(.backup) {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': rbd cannot hold content 'backup'")
            }
            if try bool("krbd") {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': krbd 1 maps images with the kernel rbd module, which snapdump does not use; guests attach through QEMU's librbd driver (krbd 0)")
            }
            if let k = keyring, !k.hasPrefix("/") {
                throw ConfigError(file: file, line: s.line, "storage '\(id)': keyring must be an absolute path, got '\(k)'")
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
        s["monhost"] = monhost
        s["username"] = username
        s["keyring"] = keyring
        s["vgname"] = vgname
        s["thinpool"] = thinpool
        if saferemove { s["saferemove"] = "1" }
        s["encryption-key"] = encryptionKey
        if !createBasePath { s["create-base-path"] = "0" }
        s["is_mountpoint"] = isMountpoint
        return s
    }
}
