import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// The bases incremental repository backups keep as dirty bitmaps, where no
/// storage snapshot holds them (issue 11): persistent in a qcow2 image on
/// `dir` (`QCOW2Incremental`), or only in the running QEMU on a fleeced raw
/// `dir` or thick `lvm` disk (`FleecingIncremental`). One concept either way:
/// a bitmap named like a base snapshot on the disk's node. `snapshot list`
/// and `storage status` show them beside the base snapshots; `prune`,
/// `backup remove` and `vm unlock` drop those no backup records any more
/// (`UnrecordedBases`); a restarted QEMU loses a raw disk's, `vm destroy`
/// frees the image that holds a qcow2's.
///
/// A running guest's QEMU is asked, since it holds the bitmaps (an open qcow2
/// image's file has them stored only when QEMU closes it): for listing on the
/// status monitor, which no backup holds, with a short timeout; a stopped
/// guest's qcow2 images are read (`qemu-img info`); a raw disk has none then.
public enum BitmapBases {
    public struct Base: Sendable, Equatable {
        public var vmid: Int
        public var volume: VolumeID
        public var name: String
        /// The backup's time, from the name (QEMU keeps no creation time).
        public var created: Date
        /// Bytes written to the disk since the bitmap started; nil where only the image file was read.
        public var dirtyBytes: UInt64?
    }

    /// The bitmap bases of every guest's disks on storages `storageIDs` (nil: all). A guest whose
    /// QEMU does not answer within `timeout`, or whose image cannot be read, is a warning.
    public static func list(storageIDs: Set<String>?, storages: StorageRegistry, paths: SnapdumpPaths,
                            timeout: Duration = .seconds(3)) async -> (bases: [Base], warnings: [String]) {
        var bases: [Base] = [], warnings: [String] = []
        let vmids: [Int]
        do { vmids = try VMConfig.list(paths: paths) } catch { return ([], ["cannot list the guests for their dirty bitmaps: \(error)"]) }
        let lifecycle = VMLifecycle(paths: paths)
        for vmid in vmids {
            let disks: [GuestDrive]
            do {
                disks = try GuestDrives.resolve(try VMConfig.load(vmid: vmid, paths: paths), for: .backup, storages: storages)
                    .filter { storageIDs?.contains($0.volume.storage) ?? true }
            } catch {
                warnings.append("VM \(vmid): dirty bitmaps not listed: \(error)")
                continue
            }
            guard !disks.isEmpty else { continue }
            if lifecycle.runningPID(vmid) != nil {
                let monitor = paths.qmpStatusSocket(vmid)
                do {
                    let qmp = try await QMPClient.connect(path: monitor, timeout: timeout)
                    let nodes: JSONValue
                    do { nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: timeout) } catch {
                        await qmp.close()
                        throw error
                    }
                    await qmp.close()
                    for d in disks {
                        for b in bitmaps(of: d.path, in: nodes) where BaseSnapshot.isBase(b.name) {
                            bases.append(Base(vmid: vmid, volume: d.volume, name: b.name, created: BaseSnapshot.created(b.name), dirtyBytes: b.count))
                        }
                    }
                } catch {
                    warnings.append("VM \(vmid): its QEMU did not tell its dirty bitmaps on \(monitor): \(error)")
                }
                continue
            }
            for d in disks where d.format == .qcow2 {
                do {
                    for b in try QCOW2ImageBitmaps.list(image: d.path) where BaseSnapshot.isBase(b.name) {
                        bases.append(Base(vmid: vmid, volume: d.volume, name: b.name, created: BaseSnapshot.created(b.name), dirtyBytes: nil))
                    }
                } catch {
                    warnings.append("VM \(vmid): cannot read the dirty bitmaps of \(d.path): \(error)")
                }
            }
        }
        return (bases.sorted { ($0.volume.description, $0.name) < ($1.volume.description, $1.name) }, warnings)
    }

    /// One bitmap in QEMU with the node that holds it.
    struct NodeBitmap: Equatable {
        var node: String
        var name: String
        var count: UInt64?
    }

    /// The bitmaps QEMU holds for image `path` (`query-named-block-nodes` output): on the nodes that
    /// open that file, whatever the node is named now (a moved disk, or an overlay above it during a backup).
    static func bitmaps(of path: String, in nodes: JSONValue) -> [NodeBitmap] {
        var seen = Set<String>()
        var result: [NodeBitmap] = []
        for n in nodes.arrayValue ?? [] where n["file"]?.stringValue == path {
            guard let node = n["node-name"]?.stringValue else { continue }
            for b in n["dirty-bitmaps"]?.arrayValue ?? [] {
                guard let name = b["name"]?.stringValue, seen.insert(name).inserted else { continue }
                result.append(NodeBitmap(node: node, name: name, count: b["count"]?.intValue.map { UInt64(max(0, $0)) }))
            }
        }
        return result
    }

    /// Of a disk's bitmap bases `names`, those no backup needs. Kept: a base the newest backup in a
    /// repository recorded (`recorded`) and still present, and the newer ones of that repository (a killed
    /// run's, which the next backup merges into it). Every other one goes: its backup chain is gone.
    static func unrecorded(_ names: [String], recorded: Set<String>) -> [String] {
        let tag = BaseSnapshot.repositoryPart(of:)
        let present = names.filter(recorded.contains)
        return names.filter { n in
            !present.contains { r in tag(r) == tag(n) && BaseSnapshot.timeText(of: n) >= BaseSnapshot.timeText(of: r) }
        }
    }

    /// Removes the bitmap bases of `config`'s disks that `recorded` ("<volume>@<name>", the newest backup of
    /// each repository) does not keep (`unrecorded`): in the running QEMU, or in a stopped guest's qcow2 images.
    /// Only while no backup runs (the caller holds the global backup lock). Returns what was removed.
    static func removeUnrecorded(vmid: Int, config: VMConfig, recorded: Set<String>, storages: StorageRegistry,
                                 paths: SnapdumpPaths) async throws -> [String] {
        let disks = try GuestDrives.resolve(config, for: .backup, storages: storages)
        let lifecycle = VMLifecycle(paths: paths)
        var removed: [String] = []
        func keeps(_ d: GuestDrive) -> Set<String> {
            Set(recorded.compactMap { r in r.hasPrefix("\(d.volume)@") ? String(r.dropFirst("\(d.volume)@".count)) : nil })
        }
        guard lifecycle.runningPID(vmid) != nil else {
            for d in disks where d.format == .qcow2 {
                let names = try QCOW2ImageBitmaps.list(image: d.path).map(\.name).filter(BaseSnapshot.isBase)
                for name in unrecorded(names, recorded: keeps(d)) {
                    try QCOW2ImageBitmaps.remove(image: d.path, name: name)
                    removed.append("dirty bitmap '\(name)' of '\(d.volume)'")
                }
            }
            return removed
        }
        let qmp = try await lifecycle.connectQMP(vmid: vmid)
        do {
            let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10))
            for d in disks {
                let ours = bitmaps(of: d.path, in: nodes).filter { BaseSnapshot.isBase($0.name) }
                for name in unrecorded(ours.map(\.name), recorded: keeps(d)) {
                    guard let b = ours.first(where: { $0.name == name }) else { continue }
                    try await QEMUDirtyBitmaps.remove(node: b.node, name: name, qmp: qmp)
                    removed.append("dirty bitmap '\(name)' of '\(d.volume)' in VM \(vmid)'s QEMU")
                }
            }
        } catch {
            await qmp.close()
            throw error
        }
        await qmp.close()
        return removed
    }
}
