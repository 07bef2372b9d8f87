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

    /// The disks of `config` that are backed up: all but CD-ROMs and `backup=0`.
    static func resolve(_ config: VMConfig, storages: StorageRegistry) throws -> [DiskPlan] {
        var plans: [DiskPlan] = []
        for d in config.disks {
            if d.options["media"] == "cdrom" || d.volid == "none" || d.options["backup"] == "0" { continue }
            let vol = try VolumeID(parsing: d.volid)
            let plugin = try storages.plugin(for: vol)
            let (path, format) = try plugin.path(of: vol)
            let size = try plugin.size(of: vol)
            plans.append(DiskPlan(key: d.key, volume: vol, plugin: plugin, path: path, format: format, size: size))
        }
        return plans
    }

    var resolvedDisk: ResolvedDisk { ResolvedDisk(key: key, path: path, format: format.rawValue) }
}
