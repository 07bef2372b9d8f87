import Storage

/// The one place that decides which drives of a config QEMU starts with and
/// which a backup includes (Proxmox: every drive with a medium is started;
/// vzdump skips CD-ROMs and `backup=0`). `vm start`, a backup's restart of the
/// guest it stopped, `restore --start` and the backup's disk list all ask here,
/// so a backup can never restart a guest with fewer disks than it had.
public enum DrivePurpose: Sendable {
    /// QEMU opens it: every drive except an empty CD-ROM drive.
    case start
    /// A backup reads it: a disk (not a CD-ROM) without `backup=0`.
    case backup
}

extension VMDisk {
    public func isIncluded(in purpose: DrivePurpose) -> Bool {
        let empty = isCDROM && (volid == "none" || volid == "cdrom")
        switch purpose {
        case .start: return !empty
        case .backup: return !isCDROM && volid != "none" && options["backup"].flatMap(VMConfig.parseBool) != false
        }
    }
}

extension VMConfig {
    /// The drives for `purpose`, in config order.
    public func drives(for purpose: DrivePurpose) -> [VMDisk] {
        disks.filter { $0.isIncluded(in: purpose) }
    }
}

/// A drive resolved through its storage: the volume, where it is, and its format.
public struct GuestDrive: Sendable {
    public var disk: VMDisk
    public var volume: VolumeID
    public var path: String
    public var format: VolumeFormat

    public var key: String { disk.key }
    public var resolved: ResolvedDisk { ResolvedDisk(key: disk.key, path: path, format: format.rawValue) }
}

public enum GuestDrives {
    /// The drives of `config` for `purpose`, resolved; an unresolvable one is an error naming it.
    public static func resolve(_ config: VMConfig, for purpose: DrivePurpose = .start,
                               storages: StorageRegistry) throws -> [GuestDrive] {
        try config.drives(for: purpose).map { d in
            do {
                let vol = try VolumeID(parsing: d.volid)
                let (path, format) = try storages.path(of: vol)
                return GuestDrive(disk: d, volume: vol, path: path, format: format)
            } catch {
                throw GuestError(vmid: config.vmid, .invalidConfig, "VM \(config.vmid): disk \(d.key) (\(d.volid)): \(error)")
            }
        }
    }
}
