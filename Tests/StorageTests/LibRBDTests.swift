import Foundation
@testable import Storage
import Testing
import TestSupport

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

    /// The point of opening them on demand: a command that never talks to
    /// Ceph does not load them (nor libceph-common, boost …) at start.
    @Test func snapdumpStartsWithoutThem() throws {
        let r = try SnapdumpBinary.run(["--version"], environment: ["LD_DEBUG": "files"])
        #expect(r.status == 0, "\(r)")
        // The dynamic loader names each library it opens ("file=libc.so.6 …").
        #expect(r.stderr.contains("file=libc.so.6"), "LD_DEBUG printed nothing: \(r)")
        #expect(!r.stderr.contains("librbd") && !r.stderr.contains("librados"))
    }

    @Test func aClosedMonitorPortIsLibradosError() throws {
        let config = RBDClientConfig(monhost: "127.0.0.1:1", username: "admin", keyring: nil)
        #expect(throws: (any Error).self) { _ = try RBDConnection(config, pool: "p", timeout: 1) }
    }
}
