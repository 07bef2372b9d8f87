import Foundation
import Guest
import SnapdumpSystem
import Storage

/// What a killed run (SIGKILL, power loss) can leave behind, found and removed
/// by the next backup of the same guest — and said so in its log. The global
/// backup lock is held while this runs, so nothing found here is in use by
/// another backup.
enum Leftovers {
    /// Every snapshot, read clone and overlay snapdump makes carries this prefix.
    static let snapshotPrefix = "snapdump-"

    static func remove(vmid: Int, disks: [DiskPlan], dumpdir: String, running: Bool,
                       lifecycle: VMLifecycle, log: TaskLog) async throws {
        // Storage snapshots and what was made to read them.
        var byStorage: [String: (plugin: any StoragePlugin, volumes: [VolumeID])] = [:]
        for d in disks { byStorage[d.plugin.id, default: (d.plugin, [])].volumes.append(d.volume) }
        for (_, g) in byStorage.sorted(by: { $0.key < $1.key }) {
            for what in try g.plugin.removeLeftovers(of: g.volumes, snapshotPrefix: snapshotPrefix) {
                log.warn("removed \(what) on storage '\(g.plugin.id)', left by an earlier run that was killed")
            }
        }
        // qcow2 overlays: merge them back — after the snapshot they hold the guest's newest writes.
        for d in disks where d.format == .qcow2 {
            let dir = (d.path as NSString).deletingLastPathComponent
            let base = (d.path as NSString).lastPathComponent
            for name in try FileSystem.list(dir) where name.hasPrefix(base + "." + snapshotPrefix) && name.hasSuffix(".overlay.qcow2") {
                let overlay = dir + "/" + name
                if running {
                    let tag = String(name.dropFirst(base.count + 1).dropLast(".overlay.qcow2".count))
                    let o = QCOW2Overlay(vmid: vmid, disks: [d], tag: tag, log: log)
                    let qmp = try await lifecycle.connectQMP(vmid: vmid)
                    do { try await o.commit(qmp: qmp) } catch { await qmp.close(); throw error }
                    await qmp.close()
                } else {
                    try Command.run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay])
                    try FileSystem.remove(overlay)
                }
                log.warn("merged leftover overlay \(overlay) of an earlier, killed run back into \(d.path)")
            }
        }
        // Unfinished archives of this guest.
        for name in (try? FileSystem.list(dumpdir)) ?? [] where name.hasPrefix("vzdump-qemu-\(vmid)-") && name.hasSuffix(".dat") {
            try FileSystem.remove(dumpdir + "/" + name)
            log.warn("removed unfinished archive \(dumpdir)/\(name) of an earlier, killed run")
        }
    }
}
