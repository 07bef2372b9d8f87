import Guest
import Storage

/// What qmrestore does to the configs around a restore, so that a restored VM
/// never attaches, and a `--force` restore never frees, anything that is not
/// the target VM's own (DESIGN.md invariant: restore never frees what the
/// target VM does not own).
///
/// - The archived config (qemu-server's `restore_update_config_line`): a drive
///   the archive restores points at its new volume; a drive with `backup=0`
///   is commented out (`#scsi1: …`, kept in the description as Proxmox does);
///   a host path or another VM's volume is dropped with a warning; `unusedN`
///   lines are dropped (vzdump never writes them).
/// - The replaced config (`restore_cleanup_oldconf`): of the old VM's volumes,
///   only those owned by the VMID *and* replaced by a restored drive are freed;
///   its other own volumes become `unusedN`; host paths and other VMs' volumes
///   are left alone.
enum RestoredConfig {
    /// The owner VMID of a volume, or nil when it has none or its name is ambiguous
    /// (`101/vm-102-disk-0.raw` names two VMs: it belongs to neither).
    static func owner(of volid: String) -> Int? {
        guard !volid.hasPrefix("/"), let vol = try? VolumeID(parsing: volid), let vmid = vol.vmid else { return nil }
        if let slash = vol.volname.firstIndex(of: "/") {
            guard Int(vol.volname[..<slash]) == vmid else { return nil }
        }
        return vmid
    }

    /// Rewrites the archived config for VMID `vmid`: `restored` maps drive keys to
    /// their new volumes. Returns the config and one warning per drive dropped.
    static func rewrite(_ archived: VMConfig, vmid: Int, restored: [String: VolumeID]) -> (config: VMConfig, warnings: [String]) {
        var config = archived
        config.vmid = vmid
        config.lock = nil
        var warnings: [String] = []
        var commented: [String] = []
        for d in archived.disks {
            if let vol = restored[d.key] {
                var disk = d
                disk.volid = vol.description
                // The format may change on restore (zfspool is raw only); the volume says which it is.
                disk.options["format"] = nil
                config.setDisk(disk)
            } else if d.options["backup"].flatMap(VMConfig.parseBool) == false {
                config.removeDisk(d.key)
                commented.append("\(d.key): \(d.value)")
            } else if d.isCDROM && (d.volid == "none" || d.volid == "cdrom") {
                continue
            } else if d.volid.hasPrefix("/") {
                config.removeDisk(d.key)
                warnings.append("dropping drive \(d.key) (\(d.volid)): a restore never attaches a host path")
            } else if let owner = owner(of: d.volid), owner != vmid {
                config.removeDisk(d.key)
                warnings.append("dropping drive \(d.key) (\(d.volid)): the volume belongs to VM \(owner), not to VM \(vmid)")
            } else if owner(of: d.volid) == nil && !d.isCDROM {
                config.removeDisk(d.key)
                warnings.append("dropping drive \(d.key) (\(d.volid)): not in the archive and not a volume of VM \(vmid)")
            }
        }
        for (n, volid) in archived.unused.sorted(by: { $0.key < $1.key }) {
            warnings.append("dropping unused\(n) (\(volid)): not in the archive")
        }
        config.unused = [:]
        if !commented.isEmpty {
            // `#` lines are the description in qm.conf: a commented drive lands there, as in Proxmox.
            config.description = ([config.description].compactMap { $0 } + commented).joined(separator: "\n")
        }
        return (config, warnings)
    }

    /// What replacing `old` with `new` (both of VMID `new.vmid`) frees and keeps:
    /// `free` are old volumes of this VMID whose drive the archive restored;
    /// `keep` are its other own volumes (drives and `unusedN`), to be listed as
    /// `unusedN` of the new config. Volumes the new config uses are in neither.
    static func replacement(old: VMConfig, new: VMConfig, restoredKeys: Set<String>) -> (free: [VolumeID], keep: [String]) {
        let vmid = new.vmid
        let used = Set(new.disks.map(\.volid) + new.unused.values)
        var free: [VolumeID] = [], keep: [String] = []
        func own(_ volid: String) -> VolumeID? {
            guard !used.contains(volid), owner(of: volid) == vmid else { return nil }
            return try? VolumeID(parsing: volid)
        }
        for d in old.disks where !d.isCDROM {
            guard let vol = own(d.volid) else { continue }
            if restoredKeys.contains(d.key) {
                if !free.contains(vol) { free.append(vol) }
            } else if !keep.contains(d.volid) {
                keep.append(d.volid)
            }
        }
        for (_, volid) in old.unused.sorted(by: { $0.key < $1.key }) {
            if let vol = own(volid), !free.contains(vol), !keep.contains(volid) { keep.append(volid) }
        }
        return (free, keep)
    }
}
