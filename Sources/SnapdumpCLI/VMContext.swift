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

    /// The drives QEMU starts with (`GuestDrives`), as paths; a missing volume is an error naming it.
    func resolvedDisks(_ config: VMConfig) throws -> [ResolvedDisk] {
        do {
            return try GuestDrives.resolve(config, for: .start, storages: storages).map(\.resolved)
        } catch let e as GuestError {
            throw GuestCLIError(e.message)
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
        // A bare number is GiB, as `qm create --scsi0 local:32`.
        guard !store.isEmpty, let bytes = VMDisk.parseSize(String(text[text.index(after: colon)...]), defaultUnit: "G"),
              bytes > 0 else { return nil }
        return (store, bytes)
    }
}
