import Guest
import Storage
import Testing
@testable import Backup

@Suite struct VMAConfigFileTests {
    @Test func mapLinesRoundTrip() {
        let text = "memory: 256\nname: demo\nscsi0: local:100/vm-100-disk-0.raw,size=1G\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n#qmdump#map:virtio1:drive-virtio1:tank:raw:\n"
        let (config, maps) = VMAConfigFile.parse(text)
        #expect(config == "memory: 256\nname: demo\nscsi0: local:100/vm-100-disk-0.raw,size=1G\n")
        #expect(maps == [.init(key: "scsi0", device: "drive-scsi0", storage: "local", format: "raw"),
                         .init(key: "virtio1", device: "drive-virtio1", storage: "tank", format: "raw")])
    }

    @Test func renderDropsLockAndUnusedAndAddsMaps() throws {
        var c = try VMConfig.parse("name: demo\nmemory: 256\nlock: backup\nunused0: local:100/vm-100-disk-9.raw\nscsi0: local:100/vm-100-disk-0.raw,size=1G\n", vmid: 100, file: "t")
        c.lock = "backup"
        let disk = DiskPlan(key: "scsi0", volume: VolumeID(storage: "local", volname: "100/vm-100-disk-0.raw"),
                            plugin: DirectoryPlugin(StorageDefinition(type: .dir, id: "local", path: "/x")),
                            path: "/x", format: .raw, size: 1 << 30)
        let out = VMAConfigFile.render(c, disks: [disk])
        #expect(!out.contains("lock:"))
        #expect(!out.contains("unused0"))
        #expect(out.contains("scsi0: local:100/vm-100-disk-0.raw,size=1G"))
        #expect(out.hasSuffix("#qmdump#map:scsi0:drive-scsi0:local:raw:\n"))
    }
}

@Suite struct SnapshotPlanTests {
    func disk(_ key: String, _ def: StorageDefinition, _ format: VolumeFormat) -> DiskPlan {
        DiskPlan(key: key, volume: VolumeID(storage: def.id, volname: "100/vm-100-\(key).\(format.rawValue)"),
                 plugin: StorageRegistry.plugin(for: def), path: "/x", format: format, size: 1 << 20)
    }

    let rawDir = StorageDefinition(type: .dir, id: "local", path: "/a")
    let reflinkDir = StorageDefinition(type: .dir, id: "xfs", path: "/b", reflink: true)
    let btrfs = StorageDefinition(type: .btrfs, id: "bt", path: "/c")
    let zfs = StorageDefinition(type: .zfspool, id: "tank", pool: "tank")

    @Test func rawOnDirCannotSnapshotAndNamesTheDisk() {
        guard case .unsupported(let why) = SnapshotPlan.make(for: [disk("scsi0", rawDir, .raw)], running: true) else {
            Issue.record("expected unsupported"); return
        }
        #expect(why == "mode failure - some volumes do not support snapshots (scsi0 on local: raw files on dir storage)")
    }

    @Test func oneAtomicStorageNeedsNoPause() {
        guard case let .storage(groups, overlay, pause) = SnapshotPlan.make(for: [disk("scsi0", btrfs, .raw), disk("scsi1", btrfs, .raw)], running: true) else {
            Issue.record("expected storage plan"); return
        }
        #expect(groups.count == 1 && groups[0].volumes.count == 2 && overlay.isEmpty && !pause)
    }

    @Test func reflinkOrSeveralStoragesNeedAPause() {
        if case let .storage(_, _, pause) = SnapshotPlan.make(for: [disk("scsi0", reflinkDir, .raw)], running: true) { #expect(pause) }
        else { Issue.record("expected storage plan") }
        if case let .storage(groups, _, pause) = SnapshotPlan.make(for: [disk("scsi0", btrfs, .raw), disk("scsi1", zfs, .raw)], running: true) {
            #expect(pause && groups.count == 2)
        } else { Issue.record("expected storage plan") }
    }

    @Test func runningQcow2OnDirUsesQEMUOverlays() {
        guard case let .storage(groups, overlay, pause) = SnapshotPlan.make(for: [disk("scsi0", rawDir, .qcow2)], running: true) else {
            Issue.record("expected storage plan"); return
        }
        #expect(groups.isEmpty && overlay.map(\.key) == ["scsi0"] && !pause)
    }
}
