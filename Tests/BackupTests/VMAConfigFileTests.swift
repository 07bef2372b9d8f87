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
    let rbd = StorageDefinition(type: .rbd, id: "ceph", pool: "rbd")
    let lvmthin = StorageDefinition(type: .lvmthin, id: "thin", vgname: "vg0", thinpool: "data")

    func plan(_ disks: [DiskPlan]) -> SnapshotPlan? { try? SnapshotPlan.make(for: disks, running: true).get() }

    @Test func rawOnDirCannotSnapshotAndNamesTheDisk() {
        guard case .failure(let why) = SnapshotPlan.make(for: [disk("scsi0", rawDir, .raw)], running: true) else {
            Issue.record("expected unsupported"); return
        }
        #expect(why.message == "mode failure - some volumes do not support snapshots (scsi0 on local: raw files on dir storage)")
    }

    @Test func oneAtomicStorageNeedsNoPause() throws {
        // btrfs: one subvolume snapshot; rbd: one group snapshot of the guest's images.
        for def in [btrfs, rbd] {
            let p = try #require(plan([disk("scsi0", def, .raw), disk("scsi1", def, .raw)]))
            #expect(p.storageGroups.count == 1 && p.storageGroups[0].volumes.count == 2 && p.overlayDisks.isEmpty && !p.needsPause, "\(def.type)")
        }
    }

    @Test func severalVolumesOfAPerVolumeStorageOrSeveralStoragesNeedAPause() throws {
        #expect(try #require(plan([disk("scsi0", reflinkDir, .raw), disk("scsi1", reflinkDir, .raw)])).needsPause)
        #expect(try #require(plan([disk("scsi0", lvmthin, .raw), disk("scsi1", lvmthin, .raw)])).needsPause)
        let two = try #require(plan([disk("scsi0", btrfs, .raw), disk("scsi1", zfs, .raw)]))
        #expect(two.needsPause && two.storageGroups.count == 2)
    }

    /// One image's snapshot is atomic by itself: a guest with a single rbd, lvmthin or reflink disk is not paused.
    @Test func oneVolumeOfAPerVolumeStorageNeedsNoPause() throws {
        for def in [rbd, lvmthin, reflinkDir] {
            let p = try #require(plan([disk("scsi0", def, .raw)]))
            #expect(p.storageGroups.count == 1 && !p.needsPause, "\(def.type)")
        }
        // Volumes on two per-volume storages, one each: two snapshot calls, so a pause.
        #expect(try #require(plan([disk("scsi0", rbd, .raw), disk("scsi1", lvmthin, .raw)])).needsPause)
    }

    @Test func runningQcow2OnDirUsesQEMUOverlays() throws {
        let p = try #require(plan([disk("scsi0", rawDir, .qcow2)]))
        #expect(p.storageGroups.isEmpty && p.overlayDisks.map(\.key) == ["scsi0"] && !p.needsPause)
        #expect(p.disks.map(\.technique) == [.qemuOverlay])
    }

    @Test func overlaysAndStorageSnapshotsTogetherNeedAPause() throws {
        let p = try #require(plan([disk("scsi0", rawDir, .qcow2), disk("scsi1", btrfs, .raw)]))
        #expect(p.needsPause && p.disks.map(\.technique) == [.qemuOverlay, .storageSnapshot])
        #expect(p.fleecingReason == nil && p.fleecingDisks.isEmpty)
    }

    @Test func withFleecingADiskThatCannotSnapshotFleecesEveryDiskWithoutAPause() throws {
        let disks = [disk("scsi0", rawDir, .raw), disk("scsi1", btrfs, .raw), disk("scsi2", rawDir, .qcow2)]
        let p = try SnapshotPlan.make(for: disks, running: true, fleecing: true).get()
        #expect(p.disks.map(\.technique) == [.fleecing, .fleecing, .fleecing] && !p.needsPause)
        #expect(p.fleecingDisks.map(\.key) == ["scsi0", "scsi1", "scsi2"] && p.storageGroups.isEmpty && p.overlayDisks.isEmpty)
        #expect(p.fleecingReason == "some volumes do not support snapshots (scsi0 on local: raw files on dir storage)")
    }

    @Test func fleecingIsNotUsedWhereStoragesCanSnapshotOrTheGuestIsNotRunning() throws {
        let p = try SnapshotPlan.make(for: [disk("scsi0", btrfs, .raw)], running: true, fleecing: true).get()
        #expect(p.disks.map(\.technique) == [.storageSnapshot] && p.fleecingReason == nil)
        guard case .failure = SnapshotPlan.make(for: [disk("scsi0", rawDir, .raw)], running: false, fleecing: true) else {
            Issue.record("fleecing planned for a guest that does not run"); return
        }
    }
}

@Suite struct ModeDecisionTests {
    let btrfs = StorageDefinition(type: .btrfs, id: "bt", path: "/c")
    let rawDir = StorageDefinition(type: .dir, id: "local", path: "/a")

    func disk(_ def: StorageDefinition) -> DiskPlan {
        DiskPlan(key: "scsi0", volume: VolumeID(storage: def.id, volname: "100/vm-100-disk-0.raw"),
                 plugin: StorageRegistry.plugin(for: def), path: "/x", format: .raw, size: 1 << 20)
    }

    @Test func aStoppedGuestIsReadAsItIsInEveryMode() throws {
        for mode in BackupMode.allCases {
            let d = try ModeDecision.make(requested: mode, state: .stopped, disks: [disk(rawDir)], fallback: .refuse)
            guard case .stop(shutdown: false) = d.method else { Issue.record("\(mode): \(d.method)"); continue }
            #expect(d.mode == .stop && d.fallbackReason == nil)
        }
    }

    @Test func runningGuestGetsTheRequestedMode() throws {
        let stop = try ModeDecision.make(requested: .stop, state: .running, disks: [disk(rawDir)], fallback: .suspend)
        guard case .stop(shutdown: true) = stop.method else { Issue.record("\(stop.method)"); return }
        let suspend = try ModeDecision.make(requested: .suspend, state: .running, disks: [disk(rawDir)], fallback: .suspend)
        guard case .suspend(pause: true) = suspend.method else { Issue.record("\(suspend.method)"); return }
        let snap = try ModeDecision.make(requested: .snapshot, state: .running, disks: [disk(btrfs)], fallback: .refuse)
        guard case .snapshot(let plan) = snap.method else { Issue.record("\(snap.method)"); return }
        #expect(plan.storageGroups.count == 1 && snap.fallbackReason == nil)
    }

    @Test func snapshotWithoutSnapshotsFallsBackOrRefuses() throws {
        let d = try ModeDecision.make(requested: .snapshot, state: .running, disks: [disk(rawDir)], fallback: .suspend)
        guard case .suspend(pause: true) = d.method else { Issue.record("\(d.method)"); return }
        #expect(d.fallbackReason?.contains("scsi0 on local") == true)
        #expect(throws: BackupError.self) {
            try ModeDecision.make(requested: .snapshot, state: .running, disks: [disk(rawDir)], fallback: .refuse)
        }
    }

    @Test func fleecingReplacesTheFallbackAndOnlyInSnapshotMode() throws {
        for fallback in SnapshotFallback.allCases {
            let d = try ModeDecision.make(requested: .snapshot, state: .running, disks: [disk(rawDir)], fallback: fallback, fleecing: true)
            guard case .snapshot(let plan) = d.method else { Issue.record("\(fallback): \(d.method)"); continue }
            #expect(d.mode == .snapshot && d.fallbackReason == nil && plan.fleecingDisks.map(\.key) == ["scsi0"] && !plan.needsPause)
        }
        let suspend = try ModeDecision.make(requested: .suspend, state: .running, disks: [disk(rawDir)], fallback: .suspend, fleecing: true)
        guard case .suspend(pause: true) = suspend.method else { Issue.record("\(suspend.method)"); return }
        let stopped = try ModeDecision.make(requested: .snapshot, state: .stopped, disks: [disk(rawDir)], fallback: .suspend, fleecing: true)
        guard case .stop(shutdown: false) = stopped.method else { Issue.record("\(stopped.method)"); return }
    }
}

@Suite struct DowntimeClockTests {
    @Test func windowStepsAddUpInTheOrderFirstSeen() async throws {
        let c = DowntimeClock()
        c.begin("frozen for snapshot")
        await c.measure("fs-freeze") {}
        await c.measure("snapshot") { try? await Task.sleep(for: .milliseconds(20)) }
        await c.measure("snapshot") { try? await Task.sleep(for: .milliseconds(20)) }
        await c.measure("fs-thaw") {}
        c.end()
        #expect(c.parts.map(\.name) == ["fs-freeze", "snapshot", "fs-thaw"])
        #expect(try #require(c.partsByName?["snapshot"]) >= 40)
        let line = try #require(c.summaryLine)
        #expect(line.hasPrefix("guest downtime: ") && line.contains(" ms (fs-freeze ") && line.contains(", fs-thaw "), "\(line)")
        c.reset()
        #expect(c.partsByName == nil && c.summaryLine == nil)
    }

    @Test func withoutStepsTheKindIsLogged() {
        let c = DowntimeClock()
        c.begin("paused")
        c.end()
        #expect(c.summaryLine?.hasSuffix(" ms (paused)") == true)
    }
}
