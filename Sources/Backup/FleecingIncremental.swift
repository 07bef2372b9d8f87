import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage

/// Incremental forever for a running guest backed up through fleecing (raw
/// images on `dir` without reflink, thick `lvm`: storages that cannot tell
/// what changed; issue 11). The base is a dirty bitmap in QEMU on each disk's
/// live node, named like a base snapshot (`snapdump_base_<time>_<repository>`),
/// not persistent (a raw node cannot store one): it lives as long as the QEMU
/// process.
///
/// - The jobs' transaction (`Fleecing`) starts this backup's bitmap and stops
///   the previous one, so the previous one holds exactly the writes between
///   the two points in time; the fleecing export offers it as
///   `qemu:dirty-bitmap:<name>` and the backup reads only the chunks it marks.
/// - After the manifest exists the old bitmap goes. After a failure the new
///   one is merged into the old one, which records again, in one transaction:
///   the next backup is still incremental from the recorded base.
/// - snapdump killed in between leaves the old bitmap stopped and the new one
///   recording; the next run merges the newer ones into the recorded one and
///   lets it record again (the same transaction), so no write is missed.
/// - QEMU restarted (stop/start, killed, migrated): the bitmap is gone and the
///   next backup reads everything, saying why; so does a disk whose size
///   changed or a recorded bitmap that stopped recording with nothing newer.
final class FleecingIncremental: @unchecked Sendable {
    // @unchecked: used by one backup task at a time.
    let newBase: String
    /// The repository storage: only its bitmaps are this backup's to keep or drop.
    let repository: String
    let disks: [DiskPlan]
    let log: TaskLog
    private(set) var previous: [String: IncrementalBase] = [:]
    /// Per disk key: the bitmap the previous backup recorded, when it still records everything since.
    private(set) var recorded: [String: String] = [:]
    private(set) var previousRuns: [String: Int] = [:]
    private(set) var tracked: [String: IncrementalForever.Read] = [:]

    private init(newBase: String, repository: String, disks: [DiskPlan], log: TaskLog) {
        self.newBase = newBase
        self.repository = repository
        self.disks = disks
        self.log = log
    }

    /// One bitmap on a node as QEMU reports it.
    struct Bitmap: Equatable {
        var name: String
        /// Enabled: records the writes reaching the node.
        var recording: Bool
    }

    static func list(node: String, qmp: QMPClient) async throws -> [Bitmap] {
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10))
        guard let n = (nodes.arrayValue ?? []).first(where: { $0["node-name"]?.stringValue == node }) else {
            throw QMPError.commandFailed(class: "DeviceNotFound", desc: "QEMU has no block node '\(node)'")
        }
        return (n["dirty-bitmaps"]?.arrayValue ?? []).compactMap { b in
            b["name"]?.stringValue.map { Bitmap(name: $0, recording: b["recording"]?.boolValue ?? false) }
        }
    }

    private static func action(_ type: String, _ data: [String: JSONValue]) -> JSONValue {
        .object(["type": .string(type), "data": .object(data)])
    }

    /// What a disk's bitmaps say about the recorded base `base`: usable as it is, usable once the
    /// newer ones (a killed run's) are merged into it, or not at all (why).
    enum Found: Equatable {
        case recording
        case mergeNewer([String])
        case unusable(String)
    }

    static func examine(base: String, ours: [Bitmap], node: String) -> Found {
        guard let b = ours.first(where: { $0.name == base }) else {
            return .unusable("dirty bitmap '\(base)' is gone: QEMU restarted since the last backup (a bitmap of a raw disk lives only"
                             + " as long as its QEMU process: stopped and started, killed or migrated)")
        }
        if b.recording { return .recording }
        // Stopped by a later run's transaction, which started a newer one: together they hold every write since.
        let newer = ours.filter { BaseSnapshot.timeText(of: $0.name) > BaseSnapshot.timeText(of: base) }
            .sorted { BaseSnapshot.timeText(of: $0.name) < BaseSnapshot.timeText(of: $1.name) }
        guard let last = newer.last, last.recording else {
            return .unusable("dirty bitmap '\(base)' of node \(node) stopped recording and no newer one of a later run records")
        }
        return .mergeNewer(newer.map(\.name))
    }

    /// Decides per disk before the fleecing starts: each recorded base checked in QEMU
    /// (merged with what a killed run left), every other bitmap of this repository removed.
    /// `nodes`: each disk's live format node.
    static func prepare(disks: [DiskPlan], store: RepositoryStore, snapshot: SnapshotName, full: Bool, fullEvery: Int,
                        qmp: QMPClient, nodes: [String: String], log: TaskLog) async -> FleecingIncremental {
        let f = FleecingIncremental(newBase: BaseSnapshot.name(backupTime: snapshot.time, repository: store.storage),
                                    repository: store.storage, disks: disks, log: log)
        for d in disks {
            guard let node = nodes[d.key] else {
                f.previous[d.key] = .full(reason: "QEMU has no block node for \(d.key)")
                continue
            }
            var decision = IncrementalBase.find(repository: store.repository, type: snapshot.type, id: snapshot.id,
                                                file: d.deviceName + ".img", volume: d.volume.description, baseExists: { _ in true })
            let recordedBase: String? = if case .incremental(_, _, let b) = decision { b } else { nil }
            let ours: [Bitmap]
            do { ours = try await list(node: node, qmp: qmp).filter { BaseSnapshot.belongs($0.name, to: store.storage) } } catch {
                f.previous[d.key] = .full(reason: "cannot list the dirty bitmaps of \(d.key) in QEMU: \(error)")
                continue
            }
            var keep: String?
            if case .incremental(let prev, let index, let base) = decision {
                switch examine(base: base, ours: ours, node: node) {
                case .recording:
                    keep = base
                case .mergeNewer(let newer):
                    let n = JSONValue.string(node)
                    do {
                        _ = try await qmp.execute("transaction", arguments: ["actions": .array(
                            [action("block-dirty-bitmap-merge", ["node": n, "target": .string(base), "bitmaps": .array(newer.map { .string($0) })]),
                             action("block-dirty-bitmap-enable", ["node": n, "name": .string(base)])]
                            + newer.map { action("block-dirty-bitmap-remove", ["node": n, "name": .string($0)]) })], timeout: .seconds(10))
                        log.info("merged dirty bitmap \(newer.map { "'\($0)'" }.joined(separator: ", ")) of \(d.key), left by a run that"
                                 + " was killed, into the recorded '\(base)'")
                        keep = base
                    } catch {
                        decision = .full(reason: "cannot merge the dirty bitmaps a killed run left into '\(base)' of \(d.key): \(error)")
                    }
                case .unusable(let why):
                    decision = .full(reason: why)
                }
                if keep != nil, index.size != d.size {
                    // The bitmap was resized with the disk, but what a shrink cut off it never recorded again.
                    decision = .full(reason: "the size of \(d.key) changed since the last backup (\(index.size) to \(d.size) bytes)")
                }
                if keep != nil {
                    f.recorded[d.key] = keep
                    let file = d.deviceName + ".img.fidx"
                    let runs = (try? store.repository.manifest(prev))?.unprotected.baseSnapshots?.first { $0.filename == file }?.incrementalRuns ?? 0
                    f.previousRuns[d.key] = runs
                    if case .incremental = decision {
                        if full {
                            decision = .full(reason: "--full given")
                        } else if fullEvery > 0 && runs + 1 >= fullEvery {
                            decision = .full(reason: "full-every \(fullEvery) reached")
                        }
                    }
                }
            }
            f.previous[d.key] = decision
            // Kept while this backup runs (it still records everything since the recorded backup), even when read in full.
            await remove(ours.map(\.name).filter { $0 != keep }, of: d.key, node: node, qmp: qmp, log: log) {
                $0 == recordedBase ? "removed dirty bitmap '\($0)' of \(d.key) (unusable: the disk is read in full)"
                                   : "removed dirty bitmap '\($0)' of \(d.key) that no finished backup recorded"
            }
        }
        return f
    }

    /// Removes bitmaps `names` of disk `key` from `node`, each logged as `removed` says; one QEMU
    /// refuses to remove is a warning (the next backup tries again).
    private static func remove(_ names: [String], of key: String, node: String, qmp: QMPClient, log: TaskLog,
                               removed: (String) -> String) async {
        for name in names {
            do {
                try await QEMUDirtyBitmaps.remove(node: node, name: name, qmp: qmp)
                log.info(removed(name))
            } catch {
                log.warn("cannot remove dirty bitmap '\(name)' of \(key) (the next backup tries again): \(error)")
            }
        }
    }

    /// The bitmaps the fleecing's transaction starts and stops, per disk key: each disk starts
    /// `newBase`; an incremental one stops its recorded base, which the export then offers.
    var fleecingBitmaps: [String: (start: String, export: String?)] {
        var result: [String: (start: String, export: String?)] = [:]
        for d in disks {
            if case .incremental(_, _, let base) = previous[d.key] { result[d.key] = (newBase, base) } else { result[d.key] = (newBase, nil) }
        }
        return result
    }

    /// After the fleecing started: asks each export which chunks the stopped base marks dirty.
    func readChanges(socket: String) async {
        for d in disks {
            guard case .incremental(_, let index, let base) = previous[d.key] ?? .full(reason: "no decision for \(d.deviceName)") else {
                tracked[d.key] = .full(reason: previous[d.key]?.reason ?? "no decision for \(d.deviceName)")
                continue
            }
            let key = d.key
            do {
                let changed = try await Blocking.run("dirty-bitmap") {
                    try DirtyBitmap.changedChunks(socket: socket, exportName: key, bitmap: base, baseSize: index.size,
                                                  chunkSize: FixedIndex.defaultChunkSize, name: key)
                }
                tracked[d.key] = .incremental(previous: index, changed: changed)
            } catch {
                tracked[d.key] = .full(reason: "cannot read dirty bitmap '\(base)' of \(d.key): \(error)")
            }
        }
    }

    /// After the fleecing is gone from QEMU: keeps only the bitmap the newest finished
    /// backup recorded. After a success that is this backup's; after a failure the
    /// recorded one, into which this backup's is merged first (and which records again).
    func finish(succeeded: Bool, qmp: QMPClient, nodes: [String: String]) async {
        for d in disks {
            guard let node = nodes[d.key] else { continue }
            let ours: [Bitmap]
            do { ours = try await Self.list(node: node, qmp: qmp).filter { BaseSnapshot.belongs($0.name, to: repository) } } catch {
                log.warn("cannot list the dirty bitmaps of \(d.key) (the next backup removes the old ones): \(error)")
                continue
            }
            var keep = succeeded ? newBase : recorded[d.key]
            if !succeeded, let old = keep, let kept = ours.first(where: { $0.name == old }), !kept.recording {
                let n = JSONValue.string(node)
                let sources = ours.filter { $0.name != old }.map(\.name)
                do {
                    _ = try await qmp.execute("transaction", arguments: ["actions": .array(
                        (sources.isEmpty ? [] : [Self.action("block-dirty-bitmap-merge", ["node": n, "target": .string(old),
                                                                                         "bitmaps": .array(sources.map { .string($0) })])])
                        + [Self.action("block-dirty-bitmap-enable", ["node": n, "name": .string(old)])]
                        + sources.map { Self.action("block-dirty-bitmap-remove", ["node": n, "name": .string($0)]) })], timeout: .seconds(10))
                    log.info("kept dirty bitmap '\(old)' of \(d.key) with every write since it (this backup failed)")
                    continue
                } catch {
                    // Both stay: the next run merges them (a killed run's case).
                    log.warn("cannot merge dirty bitmap '\(newBase)' into '\(old)' of \(d.key) (the next backup does): \(error)")
                    continue
                }
            }
            if !ours.contains(where: { $0.name == keep }) { keep = nil }
            await Self.remove(ours.map(\.name).filter { $0 != keep }, of: d.key, node: node, qmp: qmp, log: log) { [newBase] in
                $0 == newBase ? "removed dirty bitmap '\($0)' of \(d.key) (this backup failed)" : "removed old dirty bitmap '\($0)' of \(d.key)"
            }
        }
    }
}
