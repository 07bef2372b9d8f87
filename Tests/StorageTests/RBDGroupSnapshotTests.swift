import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// The rbd group snapshot beyond the conformance suite: how it shows on each
/// image, how it is read, and that groups never outlive their snapshots
/// (deleted, leftovers of a killed run, `free` of an image in a group, an
/// image in someone else's group).
@Suite("rbd group snapshots", .serialized)
struct RBDGroupSnapshotTests {
    func fill(_ p: any StoragePlugin, _ v: VolumeID, _ byte: UInt8) throws {
        let w = try p.openForWriting(v)
        let data = [UInt8](repeating: byte, count: 1 << 20)
        try data.withUnsafeBytes { try w.write($0, at: 0) }
        try w.sync()
        try w.close()
    }

    func firstByte(_ p: any StoragePlugin, _ v: VolumeID, snapshot: String?) throws -> UInt8 {
        let s = try p.openBlockSource(v, snapshot: snapshot)
        defer { try? s.close() }
        var b = [UInt8](repeating: 0, count: 4096)
        _ = try b.withUnsafeMutableBytes { try s.read(at: 0, into: $0) }
        #expect(Set(b).count == 1, "\(v)@\(snapshot ?? "-"): not one byte value")
        return b[0]
    }

    func rbd(_ ceph: CephFixture, _ args: [String]) throws -> String { try ceph.cli(["rbd"] + args) }

    func groups(_ ceph: CephFixture, _ pool: String) throws -> [String] {
        try rbd(ceph, ["group", "ls", pool]).split(separator: "\n").map(String.init)
    }

    @Test func groupSnapshotIsReadPerImageAndGoesWithItsLastSnapshot() throws {
        let ceph = try CephFixture.require()
        let storage = try ScratchStorage(ceph: ceph)
        defer { storage.destroy() }
        let p = storage.plugin, pool = try #require(storage.cephPool)
        let v0 = try p.allocate(vmid: 100, size: 8 << 20, format: .raw)
        let v1 = try p.allocate(vmid: 100, size: 8 << 20, format: .raw)
        try fill(p, v0, 0xA0)
        try fill(p, v1, 0xA1)
        try p.createSnapshot([v0, v1], name: "g1")
        try fill(p, v0, 0xB0)
        try fill(p, v1, 0xB1)

        #expect(try groups(ceph, pool) == ["vm-100"])
        #expect(try rbd(ceph, ["group", "snap", "ls", "\(pool)/vm-100"]).contains("g1"))
        // On each image, in the group namespace under librbd's own name.
        let all = try rbd(ceph, ["snap", "ls", "--all", "\(pool)/vm-100-disk-0"])
        #expect(all.contains(".group.") && all.contains("group"), "\(all)")
        // Listed under the group snapshot's name, read at it, the heads moved on.
        let listed = try p.listSnapshots().filter { $0.name == "g1" }.map(\.volume)
        #expect(Set(listed) == [v0, v1])
        #expect(try firstByte(p, v0, snapshot: "g1") == 0xA0)
        #expect(try firstByte(p, v1, snapshot: "g1") == 0xA1)
        #expect(try firstByte(p, v0, snapshot: nil) == 0xB0)
        expectStorageError(.alreadyExists) { try p.createSnapshot([v0, v1], name: "g1") }
        let busy = expectStorageError(.busy) { try p.free(v1) }
        #expect(busy.contains("g1"), "\(busy)")
        // No diff from a group snapshot in librbd 16: the caller reads everything.
        guard case .unknown(let why) = try p.changedChunks(v0, base: "g1", snapshot: "g1", chunkSize: 4 << 20) else {
            Issue.record("a group snapshot as base must give .unknown"); return
        }
        #expect(why.contains("group"), "\(why)")

        // Deleting it through one image removes the group snapshot, and the group with it.
        try p.deleteSnapshot([v0], name: "g1")
        #expect(try p.listSnapshots().isEmpty)
        #expect(try groups(ceph, pool).isEmpty)
        expectStorageError(.notFound) { _ = try p.openBlockSource(v1, snapshot: "g1") }
        try p.free(v0)
        try p.free(v1)
        #expect(storage.leftovers().isEmpty, "\(storage.leftovers())")
    }

    /// A base snapshot of several images: marks (user snapshots of its name) taken while preparing,
    /// before the group snapshot. Reads go to the group snapshot, not the mark; the diff from the mark
    /// to the next base lists a write made between mark and group snapshot as well (the superset);
    /// listed once per image; a prepared base never taken leaves no mark; delete removes both.
    @Test func baseOfSeveralImagesIsMarkedBeforeItsGroupSnapshot() throws {
        let ceph = try CephFixture.require()
        let storage = try ScratchStorage(ceph: ceph)
        defer { storage.destroy() }
        let p = storage.plugin, pool = try #require(storage.cephPool)
        let v0 = try p.allocate(vmid: 100, size: 16 << 20, format: .raw)
        let v1 = try p.allocate(vmid: 100, size: 16 << 20, format: .raw)
        try fill(p, v0, 0xA0)
        try fill(p, v1, 0xA1)
        func marks(_ v: VolumeID) throws -> [String] {
            try rbd(ceph, ["snap", "ls", "\(pool)/\(v.volname)"]).split(separator: "\n").dropFirst()
                .compactMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.map(String.init) }
        }

        // Prepared, never taken: marks and group go with the release.
        let never = BaseSnapshot.name(backupTime: 1_700_000_000, repository: "r1")
        let unused = try p.prepareSnapshot([v0, v1], name: never)
        #expect(try marks(v0) == [never] && marks(v1) == [never])
        unused.release()
        #expect(try marks(v0).isEmpty && marks(v1).isEmpty && groups(ceph, pool).isEmpty)

        // A write between the mark and the group snapshot: in what is read, and in the next diff.
        let b1 = BaseSnapshot.name(backupTime: 1_700_000_100, repository: "r1")
        let prepared = try p.prepareSnapshot([v0, v1], name: b1)
        try fill(p, v0, 0xB0)
        try prepared.take()
        prepared.release()
        #expect(try marks(v0) == [b1] && marks(v1) == [b1])
        #expect(try rbd(ceph, ["group", "snap", "ls", "\(pool)/vm-100"]).contains(b1))
        #expect(try firstByte(p, v0, snapshot: b1) == 0xB0, "read the mark, not the group snapshot")
        #expect(try firstByte(p, v1, snapshot: b1) == 0xA1)
        #expect(try p.listSnapshots().filter { $0.name == b1 }.map(\.volume).sorted() == [v0, v1], "one entry per image")

        let b2 = BaseSnapshot.name(backupTime: 1_700_000_200, repository: "r1")
        try p.createSnapshot([v0, v1], name: b2)
        for (v, changed) in [(v0, true), (v1, false)] {
            guard case .changed(let c) = try p.changedChunks(v, base: b1, snapshot: b2, chunkSize: 4 << 20) else {
                Issue.record("\(v): a marked group snapshot as base must be diffed from"); continue
            }
            #expect(c.method == "rbd diff" && c.indices == (changed ? IndexSet(integer: 0) : IndexSet()), "\(v): \(c.indices)")
        }
        // A group snapshot without marks (a base from before them): read whole, saying why.
        try p.createSnapshot([v0, v1], name: "plain")
        guard case .unknown(let why) = try p.changedChunks(v0, base: "plain", snapshot: b2, chunkSize: 4 << 20) else {
            Issue.record("an unmarked group snapshot as base must give .unknown"); return
        }
        #expect(why.contains("group") && why.contains("librbd 16"), "\(why)")

        // Deleted through one image: the group snapshot (of both) and that image's mark; the other's mark stays.
        try p.deleteSnapshot([v0], name: b1)
        #expect(try marks(v0) == [b2] && marks(v1) == [b1, b2])
        #expect(try p.listSnapshots().filter { $0.name == b1 }.map(\.volume) == [v1])
        try p.deleteSnapshot([v1], name: b1)
        try p.deleteSnapshot([v0, v1], name: b2)
        try p.deleteSnapshot([v0, v1], name: "plain")
        #expect(try p.listSnapshots().isEmpty && groups(ceph, pool).isEmpty && marks(v0).isEmpty && marks(v1).isEmpty)
        try p.free(v0)
        try p.free(v1)
        #expect(storage.leftovers().isEmpty, "\(storage.leftovers())")
    }

    @Test func leftoversOfAKilledRunAndFreeOfAnImageInAGroup() throws {
        let ceph = try CephFixture.require()
        let storage = try ScratchStorage(ceph: ceph)
        defer { storage.destroy() }
        let p = storage.plugin, pool = try #require(storage.cephPool)
        let v0 = try p.allocate(vmid: 100, size: 4 << 20, format: .raw)
        let v1 = try p.allocate(vmid: 100, size: 4 << 20, format: .raw)

        // Prepared, never taken: the group goes with the release.
        let prepared = try p.prepareSnapshot([v0, v1], name: "snapdump-x")
        #expect(try groups(ceph, pool) == ["vm-100"])
        prepared.release()
        #expect(try groups(ceph, pool).isEmpty)

        // Killed after the group snapshot: leftover recovery removes it and the group.
        try p.createSnapshot([v0, v1], name: "snapdump-y")
        let removed = try p.removeLeftovers(of: [v0, v1], snapshotPrefix: "snapdump-").removed
        #expect(removed.count == 1 && removed[0].contains("snapdump-y"), "\(removed)")
        #expect(try groups(ceph, pool).isEmpty && p.listSnapshots().isEmpty)

        // Killed between making the group and its snapshot: a group without snapshots.
        try rbd(ceph, ["group", "create", "\(pool)/vm-100"])
        try rbd(ceph, ["group", "image", "add", "\(pool)/vm-100", "\(pool)/vm-100-disk-0"])
        let again = try p.removeLeftovers(of: [v0, v1], snapshotPrefix: "snapdump-").removed
        #expect(again == ["rbd group '\(pool)/vm-100' (no snapshots)"], "\(again)")
        #expect(try groups(ceph, pool).isEmpty)

        // An image in a group cannot be removed by librbd: free takes it out first.
        try rbd(ceph, ["group", "create", "\(pool)/vm-100"])
        try rbd(ceph, ["group", "image", "add", "\(pool)/vm-100", "\(pool)/vm-100-disk-1"])
        try p.free(v1)
        #expect(try groups(ceph, pool).isEmpty)

        // An image in another group: refused before anything is made.
        let v2 = try p.allocate(vmid: 100, size: 4 << 20, format: .raw)
        try rbd(ceph, ["group", "create", "\(pool)/theirs"])
        try rbd(ceph, ["group", "image", "add", "\(pool)/theirs", "\(pool)/\(v2.volname)"])
        let msg = expectStorageError(.busy) { try p.createSnapshot([v0, v2], name: "snapdump-z") }
        #expect(msg.contains("theirs") && msg.contains(v2.volname), "\(msg)")
        #expect(try groups(ceph, pool) == ["theirs"] && p.listSnapshots().isEmpty)
        try rbd(ceph, ["group", "rm", "\(pool)/theirs"])
        try p.free(v0)
        try p.free(v2)
        #expect(storage.leftovers().isEmpty, "\(storage.leftovers())")
    }
}
