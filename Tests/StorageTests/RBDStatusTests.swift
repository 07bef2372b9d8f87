import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// `storage status` of an rbd storage is `ceph df`'s line for its pool, as pvesm
/// reports it: used = the pool's `stored`, available = its `max_avail`, total = both.
@Suite("rbd storage status")
struct RBDStatusTests {
    struct DF: Decodable {
        struct Pool: Decodable {
            struct Stats: Decodable { var stored: UInt64; var bytes_used: UInt64; var max_avail: UInt64 }
            var name: String
            var stats: Stats
        }
        var pools: [Pool]
    }

    func df(_ ceph: CephFixture, _ pool: String) throws -> DF.Pool.Stats? {
        let out = try ceph.cli(["ceph", "df", "--format", "json"])
        return try JSONDecoder().decode(DF.self, from: Data(out.utf8)).pools.first { $0.name == pool }?.stats
    }

    @Test func usageIsCephDfOfThePool() async throws {
        let ceph = try CephFixture.require()
        let storage = try ScratchStorage(ceph: ceph)
        defer { storage.destroy() }
        let p = storage.plugin, pool = try #require(storage.cephPool)
        let v = try p.allocate(vmid: 100, size: 32 << 20, format: .raw)
        let w = try p.openForWriting(v)
        var data = [UInt8](repeating: 0, count: 12 << 20)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        try data.withUnsafeBytes { try w.write($0, at: 0) }
        try w.sync()
        try w.close()

        // The OSD reports pool stats every few seconds: wait until `ceph df` has the 12 MiB.
        let deadline = ContinuousClock.now + .seconds(90)
        var stats = try df(ceph, pool)
        while (stats?.stored ?? 0) < 12 << 20 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            stats = try df(ceph, pool)
        }
        let before = try #require(stats, "pool \(pool) not in ceph df")
        #expect(before.stored >= 12 << 20, "ceph df never showed the data: \(before)")
        let status = try p.status()
        let after = try #require(try df(ceph, pool))
        #expect(status.active && status.type == .rbd)
        // The pool's own numbers; max_avail moves with every other pool's writes on the shared cluster.
        #expect(status.used == before.stored || status.used == after.stored, "used \(status.used), ceph df stored \(before.stored)/\(after.stored)")
        let lo = min(before.max_avail, after.max_avail), hi = max(before.max_avail, after.max_avail)
        #expect(status.available >= lo - lo / 20 && status.available <= hi + hi / 20,
                "available \(status.available), ceph df max_avail \(before.max_avail)…\(after.max_avail)")
        #expect(status.total == status.used + status.available)
        try p.free(v)
    }
}
