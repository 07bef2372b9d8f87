import Foundation
@testable import Storage
import Testing

/// librbd and librados are opened on first use, not linked: every entry point
/// the RBD storage calls resolves from the installed libraries (no cluster
/// needed), and a connection through them reaches librados' own error.
@Suite("librbd opened on demand")
struct LibRBDTests {
    @Test func everyEntryPointResolves() throws {
        let api = try LibRBD.load()
        #expect(api.rbd_read != nil && api.rbd_diff_iterate2 != nil && api.rados_create2 != nil && api.rados_shutdown != nil)
        // dlopen's own view: both libraries are now in the process.
        #expect(dlopen("librbd.so.1", RTLD_NOW | RTLD_NOLOAD) != nil && dlopen("librados.so.2", RTLD_NOW | RTLD_NOLOAD) != nil)
    }

    @Test func aClosedMonitorPortIsLibradosError() throws {
        let config = RBDClientConfig(monhost: "127.0.0.1:1", username: "admin", keyring: nil)
        #expect(throws: (any Error).self) { _ = try RBDConnection(config, pool: "p", timeout: 1) }
    }
}
