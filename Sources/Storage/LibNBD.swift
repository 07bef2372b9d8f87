import CNBD
import Foundation

/// libnbd, opened on first use (CNBD's shim): most runs never read through
/// NBD, and loading it with its dependencies was ~3 ms of every start.
enum LibNBD {
    private static let loaded: Result<sd_nbd_api, StorageError> = {
        var error: UnsafePointer<CChar>?
        guard let api = sd_nbd_load(&error) else {
            let why = error.map { String(cString: $0) } ?? "unknown error"
            return .failure(StorageError(.backend, "cannot load libnbd (package libnbd0): \(why)"))
        }
        return .success(api.pointee)
    }()

    /// The entry points, or why libnbd cannot be used (not installed).
    static func load() throws -> sd_nbd_api { try loaded.get() }
}

/// The entry points; only called once an NBD reader exists (its init loaded them).
var libnbd: sd_nbd_api { try! LibNBD.load() }
