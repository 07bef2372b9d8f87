import Guest
import Storage

/// One disk of the VM being backed up, resolved to its storage.
struct DiskPlan {
    var key: String
    var volume: VolumeID
    var plugin: any StoragePlugin
    var path: String
    var format: VolumeFormat
    var size: UInt64

    /// VMA device name, as Proxmox names it.
    var deviceName: String { "drive-\(key)" }

    /// The disks of `config` a backup includes (`DrivePurpose.backup`: all but CD-ROMs and `backup=0`).
    static func resolve(_ config: VMConfig, storages: StorageRegistry) throws -> [DiskPlan] {
        try plan(GuestDrives.resolve(config, for: .backup, storages: storages), storages: storages)
    }

    /// The plan of drives already resolved (`GuestDrives.resolve(_:for: .backup)`): no storage is asked for a path again.
    static func plan(_ drives: [GuestDrive], storages: StorageRegistry) throws -> [DiskPlan] {
        try drives.map { d in
            let plugin = try storages.plugin(for: d.volume)
            return DiskPlan(key: d.key, volume: d.volume, plugin: plugin, path: d.path, format: d.format,
                            size: try plugin.size(of: d.volume, at: d.path, format: d.format))
        }
    }

    var resolvedDisk: ResolvedDisk { ResolvedDisk(key: key, path: path, format: format.rawValue) }
}
