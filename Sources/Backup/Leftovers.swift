import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// What a killed run (SIGKILL, power loss) can leave behind, found and removed
/// by the next backup of the same guest — and said so in its log. The global
/// backup lock is held while this runs, so nothing found here is in use by
/// another backup.
public enum Leftovers {
    /// Every snapshot, read clone and overlay snapdump makes carries this prefix.
    static let snapshotPrefix = "snapdump-"

    /// `vm unlock` after a killed backup: the storage snapshots it left of the guest's
    /// raw disks (`snapdump-…`, an rbd group snapshot and its group too), removed as the next
    /// backup would remove them. qcow2 disks are left to that backup: their overlays are
    /// merged through QEMU. The caller holds the global backup lock.
    public static func removeStorageSnapshots(config: VMConfig, storages: StorageRegistry) throws -> [String] {
        var byStorage: [String: (plugin: any StoragePlugin, volumes: [VolumeID])] = [:]
        for d in try DiskPlan.resolve(config, storages: storages) where d.format == .raw {
            byStorage[d.plugin.id, default: (d.plugin, [])].volumes.append(d.volume)
        }
        var removed: [String] = []
        for (_, g) in byStorage.sorted(by: { $0.key < $1.key }) where g.plugin.snapshotCapability(for: .raw).canSnapshot {
            removed += try g.plugin.removeLeftovers(of: g.volumes, snapshotPrefix: snapshotPrefix).removed.map { "\($0) on storage '\(g.plugin.id)'" }
        }
        return removed
    }

    /// Written when stop mode starts shutting the guest down, removed once it runs again: a run
    /// killed in between leaves it, and the next run restarts the guest.
    static func restartMarker(vmid: Int, paths: SnapdumpPaths) -> String {
        "\(paths.qemuRunDir)/\(vmid).restart-after-backup"
    }

    /// A `backup` lock on the config is stale (the global backup lock is held, so no other backup
    /// runs): removes it and returns the config reloaded, and whether it was there.
    static func clearStaleLock(_ config: VMConfig, paths: SnapdumpPaths, lifecycle: VMLifecycle,
                               log: TaskLog) async throws -> (config: VMConfig, wasLocked: Bool) {
        guard config.lock == "backup" else { return (config, false) }
        log.warn("VM \(config.vmid) has a stale 'backup' lock left by an earlier run that was killed - removing it")
        try await lifecycle.unlock(vmid: config.vmid)
        return (try VMConfig.load(vmid: config.vmid, paths: paths), true)
    }

    /// Gives the guest back what a killed run owed it, then removes what that run left on the
    /// storages and in the dump directory. After a stale lock (`staleLock`): a running guest's
    /// fleecing is removed from QEMU, a guest stopped for a stop-mode backup is started with
    /// `startDrives`, a paused one resumed, frozen filesystems thawed. Fleecing images of the
    /// guest on `fleecingStorage` are deleted. Returns the guest's status afterwards, and the
    /// snapshots the storages showed left of each disk (where their listing shows them).
    static func recover(config: VMConfig, staleLock: Bool, disks: [DiskPlan], startDrives: [ResolvedDisk],
                        fleecingStorage: (any StoragePlugin)? = nil, dumpdir: String?, paths: SnapdumpPaths,
                        lifecycle: VMLifecycle, log: TaskLog) async throws -> (status: VMStatus, snapshots: [VolumeID: [String]]) {
        let vmid = config.vmid
        var status = try await lifecycle.status(vmid: vmid)
        if staleLock && status.state != .stopped {
            // Fleecing inside QEMU first (export, job, nodes): until its job is gone the guest writes
            // through it, and a guest an I/O error paused is resumed only once it is gone. Only after
            // a stale lock: the lock is taken before fleecing starts and removed after it ends, and QMP
            // serves one client at a time.
            let qmp = try await lifecycle.connectQMP(vmid: vmid)
            let removed: [String]
            do { removed = try await Fleecing.removeLeftovers(qmp: qmp, vmid: vmid) } catch { await qmp.close(); throw error }
            await qmp.close()
            for what in removed { log.warn("removed \(what), left by an earlier run that was killed") }
            if !removed.isEmpty { status = try await lifecycle.status(vmid: vmid) }
        }
        let marker = restartMarker(vmid: vmid, paths: paths)
        if staleLock && status.state == .stopped && FileSystem.exists(marker) {
            log.warn("VM \(vmid) was stopped for a stop-mode backup by the killed run that left the lock - starting it again")
            _ = try await lifecycle.start(vmid: vmid, disks: startDrives)
            status = try await lifecycle.status(vmid: vmid)
        }
        try? FileSystem.remove(marker)
        if staleLock && status.state == .paused {
            log.warn("VM \(vmid) is paused, most likely by the killed run that left the lock - resuming it")
            try await lifecycle.resume(vmid: vmid)
            status = try await lifecycle.status(vmid: vmid)
        }
        if staleLock && status.state == .running && config.agentEnabled {
            // Killed between fs-freeze and fs-thaw: nothing thaws the guest by itself, and every
            // later fs-freeze would fail ("the agent is in frozen state").
            let agent = lifecycle.guestAgent(vmid: vmid)
            if (try? await agent.fsfreezeStatus(timeout: .seconds(3))) == .frozen {
                log.warn("VM \(vmid) has frozen filesystems, most likely left by the killed run - thawing them")
                do { _ = try await agent.fsfreezeThaw(timeout: .seconds(30)) } catch { await agent.close(); throw error }
            }
            await agent.close()
        }
        if let fleecingStorage {
            for path in try FleecingBackup.removeLeftoverImages(vmid: vmid, plugin: fleecingStorage) {
                log.warn("removed fleecing image \(path), left by an earlier run that was killed")
            }
        }
        let snapshots = try await remove(vmid: vmid, disks: disks, dumpdir: dumpdir, running: status.state != .stopped,
                                         lifecycle: lifecycle, log: log)
        return (status, snapshots)
    }

    private static func remove(vmid: Int, disks: [DiskPlan], dumpdir: String?, running: Bool,
                       lifecycle: VMLifecycle, log: TaskLog) async throws -> [VolumeID: [String]] {
        // Storage snapshots and what was made to read them.
        var byStorage: [String: (plugin: any StoragePlugin, volumes: [VolumeID])] = [:]
        for d in disks { byStorage[d.plugin.id, default: (d.plugin, [])].volumes.append(d.volume) }
        var snapshots: [VolumeID: [String]] = [:]
        for (_, g) in byStorage.sorted(by: { $0.key < $1.key }) {
            let result = try g.plugin.removeLeftovers(of: g.volumes, snapshotPrefix: snapshotPrefix)
            for what in result.removed {
                log.warn("removed \(what) on storage '\(g.plugin.id)', left by an earlier run that was killed")
            }
            snapshots.merge(result.snapshots ?? [:]) { a, _ in a }
        }
        // qcow2 overlays: merge them back — after the snapshot they hold the guest's newest writes.
        // A qemu-nbd the killed run left reading an image would hold the lock block-commit needs.
        if disks.contains(where: { $0.format == .qcow2 }) { QemuNBDServer.stopLeftovers() }
        for d in disks where d.format == .qcow2 {
            let dir = (d.path as NSString).deletingLastPathComponent
            let base = (d.path as NSString).lastPathComponent
            for name in try FileSystem.list(dir) where name.hasPrefix(base + "." + snapshotPrefix) && name.hasSuffix(QCOW2Overlay.fileSuffix) {
                let overlay = dir + "/" + name
                if running {
                    let tag = String(name.dropFirst(base.count + 1).dropLast(QCOW2Overlay.fileSuffix.count))
                    let o = QCOW2Overlay(vmid: vmid, disks: [(d.key, d.path)], tag: tag, log: log.overlayLog)
                    let qmp = try await lifecycle.connectQMP(vmid: vmid)
                    do { try await o.commit(qmp: qmp) } catch { await qmp.close(); throw error }
                    await qmp.close()
                } else {
                    try Command.run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay])
                    try FileSystem.remove(overlay)
                }
                log.warn("merged overlay \(overlay) back into \(d.path), left by an earlier run that was killed")
            }
        }
        // Unfinished archives of this guest (a repository's unfinished snapshots: BackupWriter removes them).
        guard let dumpdir else { return snapshots }
        for name in (try? FileSystem.list(dumpdir)) ?? [] where name.hasPrefix("vzdump-qemu-\(vmid)-") && name.hasSuffix(".dat") {
            try FileSystem.remove(dumpdir + "/" + name)
            log.warn("removed unfinished archive \(dumpdir)/\(name), left by an earlier run that was killed")
        }
        return snapshots
    }
}
