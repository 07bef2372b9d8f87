import ArgumentParser
import Backup
import SnapdumpConfig
import Storage
import Repository

struct StorageAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a storage: dir, btrfs, zfspool, rbd, lvm, lvmthin or repo.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage type: dir, btrfs, zfspool, rbd, lvm, lvmthin, repo.") var type: String
    @Argument(help: "Storage id.") var storeid: String
    @Option(help: "Directory (dir, btrfs, repo).") var path: String?
    @Option(help: "ZFS pool or dataset (zfspool); Ceph pool (rbd, default rbd).") var pool: String?
    @Option(help: "rbd: Ceph monitors, e.g. '10.0.0.1 10.0.0.2:6789' (default: from ceph.conf).") var monhost: String?
    @Option(help: "rbd: cephx user without 'client.' (default admin).") var username: String?
    @Option(help: "rbd: keyring file of that user.") var keyring: String?
    @Option(help: "lvm, lvmthin: volume group.") var vgname: String?
    @Option(help: "lvmthin: thin pool LV.") var thinpool: String?
    @Option(help: "lvm: 1 to zero LVs before removing them.") var saferemove: Int?
    @Option(help: "Content types: images,backup.") var content: String?
    @Option(help: "dir only: 1 to snapshot raw files by reflink (XFS or btrfs underneath).") var reflink: String?
    @Option(help: "Default image format: raw or qcow2.") var format: String?
    @Option(name: .customLong("encryption-key"), help: "repo only: key file (snapdump repo key create) encrypting new backups.")
    var encryptionKey: String?
    @Option(name: .customLong("create-base-path"), help: "dir only: 0 to refuse a missing path instead of creating it (default 1).")
    var createBasePath: String?
    @Option(name: .customLong("is_mountpoint"), help: "dir only: yes, or a directory, that must be a mount point for the storage to be active.")
    var isMountpoint: String?
    @Option(name: .customLong("prune-backups"), help: "Retention, e.g. keep-last=3,keep-daily=7.") var pruneBackups: String?

    func run() throws {
        guard let t = StorageType(rawValue: type) else {
            throw StorageError(.invalidArgument, "unknown storage type '\(type)' (known: \(StorageType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        var contentSet: Set<ContentType> = t == .repo ? [.backup] : [.images]
        if let content {
            contentSet = []
            for c in content.split(separator: ",") {
                guard let ct = ContentType(rawValue: String(c)) else { throw StorageError(.invalidArgument, "unknown content type '\(c)' (known: images, backup)") }
                contentSet.insert(ct)
            }
        }
        var useReflink = false
        if let reflink {
            guard let b = ConfigValue.bool(reflink) else { throw StorageError(.invalidArgument, "--reflink must be 0 or 1") }
            useReflink = b
        }
        for (option, value) in [("path", path), ("pool", pool), ("content", content), ("prune-backups", pruneBackups),
                                ("monhost", monhost), ("username", username), ("keyring", keyring), ("vgname", vgname),
                                ("thinpool", thinpool), ("is_mountpoint", isMountpoint)] {
            if let value, let problem = ConfigValue.problem(value) { throw StorageError(.invalidArgument, "--\(option): \(problem)") }
        }
        if let pruneBackups {
            // The same table entry as `backup --prune-backups` and vzdump.conf.
            do { _ = try VzdumpValues.storagePruneBackups(pruneBackups, storage: storeid) } catch {
                throw StorageError(.invalidArgument, "--prune-backups: \(error.message)")
            }
        }
        var createBase = true
        if let createBasePath {
            guard let b = ConfigValue.bool(createBasePath) else { throw StorageError(.invalidArgument, "--create-base-path must be 0 or 1") }
            createBase = b
        }
        if (createBasePath != nil || isMountpoint != nil) && t != .dir {
            throw StorageError(.invalidArgument, "--create-base-path and --is_mountpoint apply to dir storages only")
        }
        var fmt: VolumeFormat?
        if let format {
            guard let f = VolumeFormat(rawValue: format) else { throw StorageError(.invalidArgument, "unknown format '\(format)' (raw, qcow2)") }
            fmt = f
        }
        var path = self.path
        if let p = path, !p.hasPrefix("/") { path = FileManagerCWD.absolute(p) }
        let def = StorageDefinition(type: t, id: storeid, path: path, pool: pool, content: contentSet,
                                    reflink: useReflink, format: fmt, pruneBackups: pruneBackups,
                                    monhost: monhost, username: username, keyring: keyring.map { $0.hasPrefix("/") ? $0 : FileManagerCWD.absolute($0) },
                                    vgname: vgname, thinpool: thinpool, saferemove: saferemove == 1,
                                    encryptionKey: encryptionKey.map(absolutePath),
                                    createBasePath: createBase, isMountpoint: isMountpoint)
        if encryptionKey != nil && t != .repo {
            throw StorageError(.invalidArgument, "--encryption-key applies to repo storages only")
        }
        // Validate through the same rules as loading the file, so what we write we can read.
        // The section is not from a file: report the message alone, without a file:line.
        do {
            _ = try StorageDefinition(section: def.section, file: "storage '\(storeid)'")
        } catch let e as ConfigError {
            throw StorageError(.invalidArgument, e.message)
        }
        // A key file that does not open fails now, not at the first backup.
        if let k = def.encryptionKey { _ = try KeyFile.crypt(from: k) }
        var cfg = try global.storages().config
        try cfg.add(def)
        try StorageRegistry.plugin(for: def).activate()
        try cfg.save()
    }
}

import Foundation
enum FileManagerCWD {
    static func absolute(_ p: String) -> String {
        (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(p)
    }
}
