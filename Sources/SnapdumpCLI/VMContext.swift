import Foundation
import Guest
import SnapdumpConfig
import Storage

/// What the `vm` commands share: configs, storages and the lifecycle.
struct VMContext {
    let paths: SnapdumpPaths
    let storages: StorageRegistry
    let lifecycle: VMLifecycle

    init(_ global: GlobalOptions) throws {
        paths = global.paths
        storages = try global.storages()
        lifecycle = VMLifecycle(paths: paths)
    }

    func config(_ vmid: Int) throws -> VMConfig {
        guard VMConfig.exists(vmid: vmid, paths: paths) else {
            throw GuestCLIError("VM \(vmid) does not exist (no \(paths.vmConfig(vmid)))")
        }
        return try VMConfig.load(vmid: vmid, paths: paths)
    }

    /// The config's disks as paths QEMU can open; a missing volume is an error naming it.
    func resolvedDisks(_ config: VMConfig) throws -> [ResolvedDisk] {
        try config.disks.compactMap { d in
            if d.volid == "none" || d.options["media"] == "cdrom" { return nil }
            let vol = try VolumeID(parsing: d.volid)
            do {
                let (path, format) = try storages.path(of: vol)
                return ResolvedDisk(key: d.key, path: path, format: format.rawValue)
            } catch {
                throw GuestCLIError("VM \(config.vmid): disk \(d.key): \(error)")
            }
        }
    }
}

struct GuestCLIError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// `STOREID:SIZE` as `qm create --scsi0 local:32` takes it: SIZE in GiB
/// (fractions allowed), or with a suffix M or G.
enum NewDiskSpec {
    static func parse(_ text: String) -> (storage: String, bytes: UInt64)? {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let store = String(text[..<colon])
        var size = String(text[text.index(after: colon)...]).uppercased()
        var unit: Double = 1_073_741_824
        if size.hasSuffix("M") { unit = 1_048_576; size.removeLast() } else if size.hasSuffix("G") { size.removeLast() }
        guard !store.isEmpty, let n = Double(size), n > 0 else { return nil }
        return (store, UInt64((n * unit).rounded(.up)))
    }
}
