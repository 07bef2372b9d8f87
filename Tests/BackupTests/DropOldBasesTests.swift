import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport
@testable import Backup

/// After the manifest, the old bases go by the listing `prepare` left (no second
/// listing: a `zfs list` round trip on zfs-fuse); a base removed by hand in
/// between makes it list after all, not fail.
@Suite("Old bases dropped after the manifest", .serialized)
struct DropOldBasesTests {
    func rig() throws -> (GuestHarness, DiskPlan) {
        let btrfs = try Integration.require("SNAPDUMP_TEST_BTRFS")
        let h = try GuestHarness(label: "drop-bases")
        try h.addStorage("btrfs", "bt", under: btrfs)
        try h.must(["vm", "create", "620", "--memory", "64", "--scsi0", "bt:4M"])
        let volume = try VolumeID(parsing: "bt:620/vm-620-disk-0.raw")
        let plugin = try StorageRegistry(paths: h.paths).plugin(for: volume)
        let (path, format) = try plugin.path(of: volume)
        return (h, DiskPlan(key: "scsi0", volume: volume, plugin: plugin, path: path, format: format, size: try plugin.size(of: volume)))
    }

    func bases(_ d: DiskPlan) throws -> [String] { try d.plugin.snapshotNames(of: d.volume).filter(BaseSnapshot.isBase).sorted() }

    @Test(arguments: [false, true])
    func oldBaseGoesNewStays(removedByHand: Bool) throws {
        let (h, d) = try rig()
        defer { h.tearDown() }
        let gone = BaseSnapshot.name(backupTime: 1_700_000_000, repository: "r1")
        let old = BaseSnapshot.name(backupTime: 1_700_000_100, repository: "r1")
        let other = BaseSnapshot.name(backupTime: 1_700_000_150, repository: "r2")
        let new = BaseSnapshot.name(backupTime: 1_700_000_200, repository: "r1")
        for name in [gone, old, other, new] { try d.plugin.createSnapshot([d.volume], name: name) }
        // What `prepare` listed (before the new base); then `gone` is removed by hand, or not.
        let listed = [gone, old, other]
        if removedByHand { try d.plugin.deleteSnapshot([d.volume], name: gone) }
        let inc = IncrementalForever(newBase: new, repository: "r1", previous: [:], previousRuns: [:], remaining: [d.volume: listed])
        let log = TaskLog(echo: false)
        inc.dropOldBases([d], log: log)
        #expect(try bases(d) == [other, new].sorted(), "the other repository's base and the new one stay")
        #expect(!log.lines.contains { $0.contains("WARN") || $0.contains("cannot remove") }, "\(log.lines)")
        #expect(log.lines.filter { $0.contains("removed old base snapshot") }.count == (removedByHand ? 1 : 2), "\(log.lines)")
        for name in [other, new] { try d.plugin.deleteSnapshot([d.volume], name: name) }
    }
}
