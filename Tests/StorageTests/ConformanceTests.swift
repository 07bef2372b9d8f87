import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// One storage configuration the conformance suite runs on.
struct PluginCase: Sendable, CustomTestStringConvertible {
    enum Snapshots: Sendable { case unsupported, perVolume, atomic }
    enum Writer: Sendable {
        /// A thread overwrites random blocks through the volume path during and after the snapshot.
        case concurrent
        /// The image cannot be written while it is snapshotted (qcow2 offline): the writes follow the snapshot.
        case afterSnapshot
    }

    var name: String
    var fixture: String
    var type: StorageType
    var reflink = false
    var format: VolumeFormat = .raw
    var snapshots: Snapshots
    var writer: Writer = .concurrent
    /// Whether the storage reports holes (SEEK_HOLE, NBD block status); zfs-fuse and LVs do not.
    var reportsHoles = true
    /// Volume sizes are multiples of this (4 KiB; LVM: the 4 MiB extent).
    var sizeGranularity: UInt64 = 4096
    var seed: UInt64

    var testDescription: String { name }

    static let all: [PluginCase] = [
        PluginCase(name: "dir raw on a plain directory", fixture: "SNAPDUMP_TEST_DIR", type: .dir,
                   snapshots: .unsupported, seed: 1),
        PluginCase(name: "dir qcow2 (qemu-img snapshot, read over NBD)", fixture: "SNAPDUMP_TEST_DIR", type: .dir,
                   format: .qcow2, snapshots: .perVolume, writer: .afterSnapshot, seed: 2),
        PluginCase(name: "dir reflink 1 on XFS", fixture: "SNAPDUMP_TEST_XFS", type: .dir, reflink: true,
                   snapshots: .perVolume, seed: 3),
        PluginCase(name: "dir reflink 1 on btrfs", fixture: "SNAPDUMP_TEST_BTRFS", type: .dir, reflink: true,
                   snapshots: .perVolume, seed: 4),
        PluginCase(name: "btrfs (subvolume per VM)", fixture: "SNAPDUMP_TEST_BTRFS", type: .btrfs,
                   snapshots: .atomic, seed: 5),
        PluginCase(name: "zfspool on zfs-fuse (raw files in datasets)", fixture: "SNAPDUMP_TEST_ZPOOL", type: .zfspool,
                   snapshots: .atomic, reportsHoles: false, seed: 6),
        PluginCase(name: "rbd on a single-node Ceph (librbd; a group snapshot for several images)", fixture: "SNAPDUMP_TEST_CEPH_CONF", type: .rbd,
                   snapshots: .atomic, seed: 7),
        // Only inside the storage VM (device-mapper): see LVMInVMTests.
        PluginCase(name: "lvm (thick LVs)", fixture: "SNAPDUMP_TEST_LVM_VG", type: .lvm,
                   snapshots: .unsupported, reportsHoles: false, sizeGranularity: 4 << 20, seed: 8),
        PluginCase(name: "lvmthin (thin LVs, thin snapshots)", fixture: "SNAPDUMP_TEST_LVM_VG", type: .lvmthin,
                   snapshots: .perVolume, reportsHoles: false, sizeGranularity: 4 << 20, seed: 9),
    ]

    func makeStorage() throws -> ScratchStorage {
        switch type {
        case .zfspool:
            return try ScratchStorage(type: .zfspool, zpool: try Fixture.need(fixture), format: format)
        case .dir, .btrfs:
            return try ScratchStorage(type: type, fixtureDir: try Fixture.directory(fixture), reflink: reflink, format: format)
        case .rbd:
            _ = try Fixture.need(fixture)
            return try ScratchStorage(ceph: try CephFixture.require())
        case .lvm, .lvmthin:
            // No device-mapper on the host: these cases run inside the storage VM,
            // and LVMInVMTests fails (under SNAPDUMP_INTEGRATION=1) unless they pass there.
            guard let vg = Integration.fixture(fixture) else {
                print("skipped here: \(name) runs inside the storage VM (LVMInVMTests)")
                try Test.cancel("\(name) runs inside the storage VM (LVMInVMTests)")
            }
            return try ScratchStorage(lvm: type, vg: vg)
        case .repo:
            preconditionFailure("a repo storage holds no images: not a conformance case")
        }
    }

    /// The volume id Proxmox would give disk `n` of `vmid`.
    func volid(_ storage: String, vmid: Int, disk n: Int) -> String {
        [.zfspool, .rbd, .lvm, .lvmthin].contains(type) ? "\(storage):vm-\(vmid)-disk-\(n)" : "\(storage):\(vmid)/vm-\(vmid)-disk-\(n).\(format.rawValue)"
    }

    func capabilityMatches(_ c: SnapshotCapability) -> Bool {
        switch (snapshots, c) {
        case (.unsupported, .unsupported), (.perVolume, .perVolume), (.atomic, .atomic): return true
        default: return false
        }
    }
}

/// Opens a volume (or snapshot) reader, runs `body`, closes it on every path.
func withSource<T>(_ plugin: any StoragePlugin, _ volume: VolumeID, snapshot: String?,
                   _ body: (any BlockSource) throws -> T) throws -> T {
    let source = try plugin.openBlockSource(volume, snapshot: snapshot)
    do {
        let r = try body(source)
        try source.close()
        return r
    } catch {
        try? source.close()
        throw error
    }
}

/// Expects `body` to throw a StorageError with `code`; returns its message.
@discardableResult
func expectStorageError(_ code: StorageError.Code, sourceLocation: SourceLocation = #_sourceLocation,
                        _ body: () throws -> Void) -> String {
    do {
        try body()
        Issue.record("expected StorageError \(code), but the call succeeded", sourceLocation: sourceLocation)
    } catch let e as StorageError {
        #expect(e.code == code, "StorageError \(e.code): \(e.message)", sourceLocation: sourceLocation)
        return e.message
    } catch {
        Issue.record("expected StorageError \(code), got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return ""
}

@Suite("Storage plugin conformance")
struct ConformanceTests {
    @Test("allocate, write, snapshot under a writer, read back, delete, free, nothing left", arguments: PluginCase.all)
    func conformance(_ c: PluginCase) throws {
        let storage = try c.makeStorage()
        defer { storage.destroy() }
        let scratch = try Integration.scratchDirectory("conformance")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let p = storage.plugin

        // Activation and status.
        try p.activate()
        let status = try p.status()
        #expect(status.active)
        #expect(status.total > 0 && status.available > 0)
        #expect(c.capabilityMatches(p.snapshotCapability(for: c.format)), "capability \(p.snapshotCapability(for: c.format))")

        // Allocation: volume id form, next free index, size rounding, zeroed content.
        let vmid = 100
        let v0 = try p.allocate(vmid: vmid, size: TestVolume.size, format: c.format)
        #expect(v0.description == c.volid(storage.id, vmid: vmid, disk: 0))
        let v1 = try p.allocate(vmid: vmid, size: 1 << 20, format: c.format)
        #expect(v1.description == c.volid(storage.id, vmid: vmid, disk: 1))
        let v2 = try p.allocate(vmid: vmid, size: 1 << 20, format: c.format)
        #expect(v2.description == c.volid(storage.id, vmid: vmid, disk: 2))
        try p.free(v1)
        let v1again = try p.allocate(vmid: vmid, size: (1 << 20) + 1, format: c.format)
        #expect(v1again == v1, "the lowest free index is reused")
        let listed = try p.list(vmid: vmid)
        #expect(listed.map(\.volume) == [v0, v1, v2])
        let g = c.sizeGranularity
        #expect(listed.first { $0.volume == v1 }?.size == ((1 << 20) + 1 + g - 1) / g * g, "sizes round up to \(g) bytes")
        #expect(listed.allSatisfy { $0.format == c.format && $0.vmid == vmid })
        #expect(try p.list(vmid: 101).isEmpty)
        let fresh = try withSource(p, v1, snapshot: nil) { try TestVolume.decode($0, tag: 9) }
        #expect(fresh.allSatisfy { $0 == .zero }, "a new volume reads as zeros")
        try p.free(v1)
        try p.free(v2)
        expectStorageError(.notFound) { try p.free(v2) }
        expectStorageError(.invalidArgument) { try p.free(VolumeID(storage: "other", volname: v0.volname)) }

        // The known pattern, written through the volume path.
        let (path, format) = try p.path(of: v0)
        #expect(format == c.format)
        let initial = TestVolume.initialState()
        try write(initial, to: v0, on: p, format: c.format, tag: 1, scratch: scratch)
        let written = try withSource(p, v0, snapshot: nil) { try TestVolume.decode($0, tag: 1) }
        #expect(TestVolume.mismatches(written, initial).isEmpty, "\(TestVolume.mismatches(written, initial))")

        if c.snapshots == .unsupported {
            try checkSnapshotRefused(c, storage, v0)
        } else {
            let lastGeneration = try snapshotUnderWriter(c, storage, v0, initial: initial, scratch: scratch)
            try multiVolumeSnapshot(c, storage, v0, generationsSoFar: lastGeneration, scratch: scratch)
        }

        // Free everything; nothing may be left behind.
        try p.free(v0)
        #expect(try p.list(vmid: nil).isEmpty)
        expectStorageError(.notFound) { _ = try p.path(of: v0) }
        #expect(try p.listSnapshots().isEmpty)
        let left = storage.leftovers()
        #expect(left.isEmpty, "left behind: \(left)")
        // A marker the storage VM's caller looks for (LVMInVMTests).
        print("[\(c.name)] conformance: every step ran")
    }

    /// A killed run's snapshots (`snapdump-…`) go; a base and the user's own stay, and the listing
    /// `removeLeftovers` returns with them is what `snapshotNames` lists afterwards (a backup takes
    /// its bases from it instead of listing again).
    @Test("leftover snapshots removed, the rest listed as snapshotNames lists them",
          arguments: PluginCase.all.filter { $0.snapshots != .unsupported })
    func leftoversAndTheListingLeft(_ c: PluginCase) throws {
        let storage = try c.makeStorage()
        defer { storage.destroy() }
        let p = storage.plugin
        let size = max(c.sizeGranularity, 1 << 20)
        let v0 = try p.allocate(vmid: 100, size: size, format: c.format)
        let v1 = try p.allocate(vmid: 100, size: size, format: c.format)
        defer { for v in [v0, v1] { try? p.free(v) } }
        let base = "snapdump_base_20261201T000000Z_r1", mine = "before-upgrade"
        for name in ["snapdump-1764547200", base, mine] {
            if c.snapshots == .atomic { try p.createSnapshot([v0, v1], name: name) } else {
                for v in [v0, v1] { try p.createSnapshot([v], name: name) }
            }
        }
        let result = try p.removeLeftovers(of: [v0, v1], snapshotPrefix: "snapdump-")
        #expect(result.removed.count >= 1 && result.removed.allSatisfy { $0.contains("snapdump-1764547200") || $0.contains("group") },
                "\(result.removed)")
        for v in [v0, v1] {
            let now = try p.snapshotNames(of: v).sorted()
            #expect(now == [base, mine].sorted(), "\(v): \(now)")
            if let listed = result.snapshots {
                #expect(listed[v]?.sorted() == now, "\(v): listed \(listed[v] ?? []), snapshotNames \(now)")
            }
        }
        #expect(result.snapshots != nil, "every plugin's removeLeftovers lists what it left")
        for name in [base, mine] {
            if c.snapshots == .atomic { try p.deleteSnapshot([v0, v1], name: name) } else {
                for v in [v0, v1] { try p.deleteSnapshot([v], name: name) }
            }
        }
        print("[\(c.name)] leftovers: every step ran")
    }

    func write(_ states: [BlockPattern.State], to volume: VolumeID, on p: any StoragePlugin, format: VolumeFormat, tag: UInt64, scratch: String) throws {
        switch format {
        case .raw:
            let w = try p.openForWriting(volume)
            defer { try? w.close() }
            try TestVolume.writeRaw(to: w, states: states, tag: tag)
        case .qcow2: try TestVolume.writeQcow2(path: try p.path(of: volume).path, states: states, tag: tag, scratch: scratch)
        }
    }

    /// A writer target for `volume`: its path, or librbd where the path is not a file.
    func target(_ p: any StoragePlugin, _ volume: VolumeID, path: String, tag: UInt64) -> ConcurrentWriter.Target {
        ConcurrentWriter.Target(path: path, tag: tag, blocks: 0..<TestVolume.liveBlocks,
                                open: FileSystem.exists(path) ? nil : { try p.openForWriting(volume) })
    }

    /// dir raw: a clear refusal naming storage and format, and nothing changed.
    func checkSnapshotRefused(_ c: PluginCase, _ storage: ScratchStorage, _ v0: VolumeID) throws {
        let p = storage.plugin
        let before = try storage.capture()
        let message = expectStorageError(.snapshotUnsupported) { try p.createSnapshot([v0], name: "conf-1") }
        #expect(message.contains("'\(storage.id)'") && message.contains("raw"), "message: \(message)")
        let after = try storage.capture()
        #expect(before == after, "changed: \(before.differences(to: after))")
        #expect(try p.listSnapshots().isEmpty)
        expectStorageError(.notFound) { _ = try p.openBlockSource(v0, snapshot: "conf-1") }
        expectStorageError(.notFound) { try p.deleteSnapshot([v0], name: "conf-1") }
    }

    /// The main check: a snapshot taken while (or, offline, before) a writer overwrites
    /// the volume reads back exactly as the volume was at the snapshot.
    /// Returns the last writer generation on the volume.
    func snapshotUnderWriter(_ c: PluginCase, _ storage: ScratchStorage, _ v0: VolumeID,
                             initial: [BlockPattern.State], scratch: String) throws -> UInt64 {
        let p = storage.plugin
        let (path, _) = try p.path(of: v0)
        let snapshot: [BlockPattern.State]
        let expectedSnapshot: [BlockPattern.State]
        let expectedNow: [BlockPattern.State]
        var lastGeneration: UInt64 = 0

        switch c.writer {
        case .concurrent:
            let writer = try ConcurrentWriter(targets: [target(p, v0, path: path, tag: 1)], seed: c.seed)
            writer.start()
            var running = true
            defer { if running { try? writer.stop() } }
            try writer.waitForWrites(300)
            // As a backup takes it: prepared (checks, flush, connection) while the writer runs on,
            // then taken; what the writer completed between the two must be in the snapshot.
            let prepared = try p.prepareSnapshot([v0], name: "conf-1")
            defer { prepared.release() }
            try writer.waitForWrites(100)
            let completedBefore = writer.completed
            let t0 = Date()
            try prepared.take()
            let took = Date().timeIntervalSince(t0)
            let startedAfter = writer.started
            try writer.waitForWrites(300)
            running = false
            try writer.stop()

            snapshot = try withSource(p, v0, snapshot: "conf-1") { try TestVolume.decode($0, tag: 1) }
            let check = try writer.verifySnapshot([snapshot], initial: [initial], completedBefore: completedBefore, startedAfter: startedAfter)
            print("[\(c.name)] snapshot took \(Int(took * 1000)) ms; \(writer.direct ? "O_DIRECT" : "buffered") writer: "
                + "\(startedAfter - completedBefore) writes overlapped it, it holds the first \(check.prefix) of \(writer.last)")
            expectedSnapshot = writer.state(afterPrefix: check.prefix, initial: [initial])[0]
            expectedNow = writer.state(afterPrefix: writer.last, initial: [initial])[0]
            lastGeneration = writer.last

        case .afterSnapshot:
            try p.createSnapshot([v0], name: "conf-1")
            expectedNow = try overwriteOffline(path: path, states: initial, count: 300, seed: c.seed)
            snapshot = try withSource(p, v0, snapshot: "conf-1") { try TestVolume.decode($0, tag: 1) }
            expectedSnapshot = initial
            #expect(TestVolume.mismatches(snapshot, initial).isEmpty, "snapshot changed: \(TestVolume.mismatches(snapshot, initial))")
        }

        // The volume itself moved on; the snapshot did not.
        let now = try withSource(p, v0, snapshot: nil) { try TestVolume.decode($0, tag: 1) }
        #expect(TestVolume.mismatches(now, expectedNow).isEmpty, "volume: \(TestVolume.mismatches(now, expectedNow))")
        #expect(now != snapshot, "the writes after the snapshot must show in the volume")
        // Reading the snapshot again gives the same bytes (its content never changes).
        let again = try withSource(p, v0, snapshot: "conf-1") { try TestVolume.decode($0, tag: 1) }
        #expect(again == expectedSnapshot)

        // Allocation maps: well formed, no data inside a zero range, the never-written tail a hole.
        try withSource(p, v0, snapshot: "conf-1") { try checkAllocation($0, states: expectedSnapshot, reportsHoles: c.reportsHoles) }
        try withSource(p, v0, snapshot: nil) { try checkAllocation($0, states: expectedNow, reportsHoles: c.reportsHoles) }

        // Export of the snapshot to a sparse file is byte-exact.
        let out = scratch + "/export.raw"
        let result = try withSource(p, v0, snapshot: "conf-1") { try VolumeExporter.export($0, toFile: out) }
        #expect(result.bytes == TestVolume.size)
        #expect(try FileSystem.list(scratch).filter { $0.hasPrefix("export.raw.tmp.") }.isEmpty, "temp file left")
        let exported = try FileBlockSource(path: out, name: "export")
        #expect(try TestVolume.decode(exported, tag: 1) == expectedSnapshot)
        #expect(try File.openForReading(out).allocatedBytes() <= TestVolume.size - UInt64(TestVolume.tailRange.count), "export is sparse")
        try exported.close()
        try FileSystem.remove(out)

        // qcow2 snapshots are read through a qemu-nbd we start: it must be gone after close.
        if c.format == .qcow2 {
            let source = try p.openBlockSource(v0, snapshot: "conf-1")
            let servers = Processes.matching(path).filter { $0.arguments.first?.hasSuffix("qemu-nbd") == true }
            #expect(servers.count == 1, "one qemu-nbd for the snapshot: \(servers.map(\.commandLine))")
            let sockets = servers.flatMap(\.arguments).filter { $0.hasPrefix("--socket=") }.map { String($0.dropFirst(9)) }
            try source.close()
            for s in servers { #expect(!Processes.isAlive(s.pid), "qemu-nbd \(s.pid) still runs after close") }
            for s in sockets { #expect(!FileSystem.exists(s), "socket \(s) left behind") }
        }

        // Listing, duplicates, missing snapshots, freeing a snapshotted volume.
        let snaps = try p.listSnapshots()
        let mine = snaps.filter { $0.volume == v0 && $0.name == "conf-1" }
        #expect(mine.count == 1, "listSnapshots: \(snaps.map { "\($0.volume)@\($0.name)" })")
        if let s = mine.first { #expect(abs(s.created.timeIntervalSinceNow) < 3600, "created \(s.created)") }
        let treeBefore = try storage.capture()
        expectStorageError(.alreadyExists) { try p.createSnapshot([v0], name: "conf-1") }
        expectStorageError(.busy) { try p.free(v0) }
        for bad in ["a/b", "a@b", "-x", "a b", "", ".hidden"] {
            expectStorageError(.invalidArgument) { try p.createSnapshot([v0], name: bad) }
        }
        expectStorageError(.notFound) { _ = try p.openBlockSource(v0, snapshot: "nosuch") }
        expectStorageError(.notFound) { try p.deleteSnapshot([v0], name: "nosuch") }
        let treeAfter = try storage.capture()
        #expect(treeBefore == treeAfter, "failed calls changed: \(treeBefore.differences(to: treeAfter))")

        try p.deleteSnapshot([v0], name: "conf-1")
        expectStorageError(.notFound) { try p.deleteSnapshot([v0], name: "conf-1") }
        expectStorageError(.notFound) { _ = try p.openBlockSource(v0, snapshot: "conf-1") }
        #expect(try p.listSnapshots().filter { $0.volume == v0 }.isEmpty)
        return lastGeneration
    }

    /// Several volumes in one call. Where the plugin says `.atomic`, a writer keeps
    /// writing to all of them and the snapshots together must hold one prefix of its
    /// writes. Per-volume plugins are snapshotted as the engine does it, with the
    /// guest paused: no writes during the call, then all snapshots exact.
    func multiVolumeSnapshot(_ c: PluginCase, _ storage: ScratchStorage, _ v0: VolumeID, generationsSoFar: UInt64, scratch: String) throws {
        let p = storage.plugin
        // Two disks of one VM: one subvolume (btrfs), one dataset (zfs-fuse) or two zvols.
        let volumes = [v0, try p.allocate(vmid: 100, size: TestVolume.size, format: c.format)]
        var initial: [[BlockPattern.State]] = []
        for (i, v) in volumes.enumerated() {
            let st = TestVolume.initialState()
            if i > 0 { try write(st, to: v, on: p, format: c.format, tag: UInt64(i + 1), scratch: scratch) }
            initial.append(i == 0 ? try withSource(p, v, snapshot: nil) { try TestVolume.decode($0, tag: 1) } : st)
        }
        let tags = volumes.indices.map { UInt64($0 + 1) }
        let paths = try volumes.map { try p.path(of: $0).path }

        var expected: [[BlockPattern.State]]
        switch (c.snapshots, c.writer) {
        case (.atomic, .concurrent):
            let writer = try ConcurrentWriter(
                targets: volumes.indices.map { target(p, volumes[$0], path: paths[$0], tag: tags[$0]) },
                seed: c.seed &+ 100, base: generationsSoFar)
            writer.start()
            var running = true
            defer { if running { try? writer.stop() } }
            try writer.waitForWrites(300)
            let completedBefore = writer.completed
            try p.createSnapshot(volumes, name: "conf-2")
            let startedAfter = writer.started
            try writer.waitForWrites(300)
            running = false
            try writer.stop()
            // All snapshot readers open at the same time, as a backup of a multi-disk VM has them.
            let sources = try volumes.map { try p.openBlockSource($0, snapshot: "conf-2") }
            defer { for s in sources { try? s.close() } }
            let found = try zip(sources, tags).map { try TestVolume.decode($0, tag: $1) }
            let check = try writer.verifySnapshot(found, initial: initial, completedBefore: completedBefore, startedAfter: startedAfter)
            print("[\(c.name)] \(volumes.count) volumes atomically: \(startedAfter - completedBefore) writes overlapped, snapshot holds the first \(check.prefix)")
            for s in sources { try s.close() }
            expected = writer.state(afterPrefix: check.prefix, initial: initial)
        default:
            // Guest paused: nothing writes during the call.
            try p.createSnapshot(volumes, name: "conf-2")
            for (i, path) in paths.enumerated() {
                if c.format == .qcow2 {
                    _ = try overwriteOffline(path: path, states: initial[i], count: 50, seed: c.seed &+ UInt64(i))
                } else {
                    let w = try ConcurrentWriter(targets: [target(p, volumes[i], path: path, tag: tags[i])], seed: c.seed &+ UInt64(i))
                    w.start()
                    try w.waitForWrites(50)
                    try w.stop()
                }
            }
            expected = initial
            for (i, v) in volumes.enumerated() {
                let found = try withSource(p, v, snapshot: "conf-2") { try TestVolume.decode($0, tag: tags[i]) }
                #expect(TestVolume.mismatches(found, expected[i]).isEmpty, "\(v)@conf-2: \(TestVolume.mismatches(found, expected[i]))")
            }
        }

        // Volumes of two VMs: btrfs (a subvolume per VM), zfs-fuse (one dataset per
        // `zfs snapshot`) and rbd (a group per VM) cannot make that one atomic operation, so they must refuse it
        // and create nothing. Kernel ZFS snapshots several zvols in one command.
        if c.type == .btrfs || c.type == .zfspool || c.type == .rbd {
            let other = try p.allocate(vmid: 101, size: 1 << 20, format: c.format)
            let kernelZFS = c.type == .zfspool && FileSystem.isDirectory("/sys/module/zfs")
            if kernelZFS {
                try p.createSnapshot([v0, other], name: "conf-3")
                try p.deleteSnapshot([v0, other], name: "conf-3")
            } else {
                let before = try storage.capture()
                let msg = expectStorageError(.invalidArgument) { try p.createSnapshot([v0, other], name: "conf-3") }
                #expect(msg.contains("100") && msg.contains("101") && msg.contains(storage.id), "message: \(msg)")
                #expect(try storage.capture() == before)
                #expect(try p.listSnapshots().filter { $0.name == "conf-3" }.isEmpty)
            }
            try p.free(other)
        }

        // Snapshot listing covers every volume; deleting once removes them all.
        let names = Set(try p.listSnapshots().filter { $0.name == "conf-2" }.map(\.volume))
        #expect(names == Set(volumes), "conf-2 on \(names.sorted())")
        try p.deleteSnapshot(volumes, name: "conf-2")
        #expect(try p.listSnapshots().isEmpty)
        for v in volumes.dropFirst() { try p.free(v) }
    }

    /// qcow2 offline writer: one qemu-io process overwrites `count` random blocks with
    /// fill patterns. Returns the expected volume content afterwards.
    func overwriteOffline(path: String, states: [BlockPattern.State], count: Int, seed: UInt64) throws -> [BlockPattern.State] {
        var rng = SplitMix64(seed: seed)
        var expected = states
        var argv = ["qemu-io", "-f", "qcow2"]
        for i in 0..<count {
            let block = Int(rng.next() % UInt64(TestVolume.liveBlocks))
            let byte = UInt8(1 + i % 250)
            expected[block] = .fill(byte)
            argv += ["-c", "write -q -P \(byte) \(block * BlockPattern.blockSize) \(BlockPattern.blockSize)"]
        }
        argv.append(path)
        try Command.run(argv)
        return expected
    }

    /// The allocation map covers the source exactly, in order; every block that holds
    /// data lies in a data range; where the storage reports holes, the never-written
    /// tail is reported as zeros.
    func checkAllocation(_ source: any BlockSource, states: [BlockPattern.State], reportsHoles: Bool) throws {
        let map = try source.allocationMap()
        var pos: UInt64 = 0
        for r in map {
            #expect(r.offset == pos && r.length > 0, "range \(r) after \(pos) in \(source.name)")
            pos = r.offset + r.length
        }
        #expect(pos == source.size, "map of \(source.name) ends at \(pos), size \(source.size)")
        let bs = UInt64(BlockPattern.blockSize)
        for r in map where r.kind == .zero {
            for b in Int(r.offset / bs)..<Int((r.offset + r.length + bs - 1) / bs) where states[b] != .zero {
                Issue.record("\(source.name): block \(b) holds \(states[b]) but lies in zero range \(r)")
                return
            }
        }
        if reportsHoles {
            let tail = TestVolume.tailRange
            let covered = map.filter { $0.kind == .zero }.reduce(UInt64(0)) { sum, r in
                let lo = max(r.offset, tail.lowerBound), hi = min(r.offset + r.length, tail.upperBound)
                return sum + (hi > lo ? hi - lo : 0)
            }
            #expect(covered == UInt64(tail.count), "\(source.name): \(covered) of \(tail.count) tail bytes reported as zeros; map \(map)")
        }
    }
}
