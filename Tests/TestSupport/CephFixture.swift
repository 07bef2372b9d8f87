import Foundation
import SnapdumpSystem

/// The single-node Ceph cluster of scripts/fixtures/ceph.sh, from its env file.
/// Each test makes a pool of its own and removes it.
public struct CephFixture: Sendable {
    public var conf: String
    public var monhost: String
    public var keyring: String

    public init(conf: String, monhost: String, keyring: String) {
        self.conf = conf
        self.monhost = monhost
        self.keyring = keyring
    }

    /// The cluster, or `Integration.Missing` when the fixture is not up.
    public static func require() throws -> CephFixture {
        CephFixture(conf: try Integration.require("SNAPDUMP_TEST_CEPH_CONF"),
                    monhost: try Integration.require("SNAPDUMP_TEST_CEPH_MONHOST"),
                    keyring: try Integration.require("SNAPDUMP_TEST_CEPH_KEYRING"))
    }

    /// Runs `ceph …` or `rbd …` against the fixture cluster.
    @discardableResult
    public func cli(_ argv: [String]) throws -> String {
        try Command.run([argv[0], "--conf", conf] + argv.dropFirst())
    }

    /// A fresh pool for RBD images.
    public func createPool(_ pool: String) throws {
        try cli(["ceph", "osd", "pool", "create", pool, "8"])
        try cli(["rbd", "pool", "init", pool])
    }

    /// Removes the pool with every image and snapshot in it; never fails.
    public func removePool(_ pool: String) {
        _ = try? Command.capture(["ceph", "--conf", conf, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"])
    }

    /// `image@snapshot` of every snapshot in the pool.
    public func snapshots(_ pool: String) throws -> [String] {
        struct Entry: Decodable { var image: String; var snapshot: String? }
        let out = try cli(["rbd", "ls", "-l", "--format", "json", pool])
        return try JSONDecoder().decode([Entry].self, from: Data(out.utf8)).compactMap { e in e.snapshot.map { "\(e.image)@\($0)" } }
    }

    /// `snapdump storage add rbd` arguments for `pool` (monhost + keyring, as storage.cfg has them).
    public func storageAddArguments(_ id: String, pool: String) -> [String] {
        ["storage", "add", "rbd", id, "--pool", pool, "--monhost", monhost, "--username", "admin", "--keyring", keyring]
    }
}
