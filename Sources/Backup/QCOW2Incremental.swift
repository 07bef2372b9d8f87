import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage

/// Incremental forever for qcow2 images on a `dir` storage (issue 11): the
/// base is not a storage snapshot but a persistent dirty bitmap in the image,
/// named like a base snapshot (`snapdump_base_<time>`), started at the
/// backup's point in time and recorded in its manifest. The next backup reads
/// only the chunks that bitmap marks dirty, then the old bitmap goes.
///
/// - Snapshot mode (running guest): QEMU stores every persistent bitmap of an
///   image (with fsyncs) when the overlay's `blockdev-snapshot` reopens the
///   image read-only — tens of milliseconds inside the freeze window. So the
///   window holds none: before it, the old base is turned into a bitmap that
///   only lives in QEMU (`snapdump-old-<base>`: added, merged from the base,
///   the base removed, in one transaction); in the overlays' transaction a
///   second one, `snapdump-new-<base>`, starts recording; writes the guest
///   makes into the overlay reach the image with `block-commit`, which
///   dirties it. The old one is read over QEMU's NBD server while the image is
///   frozen under its overlay. After the merge the new one becomes the
///   persistent base (added, merged, the temporary removed, in one
///   transaction); after a failure the old base is made persistent again from
///   both. snapdump killed in between: the held old base still records, the
///   next run uses it. QEMU killed in between loses them: the next backup
///   reads everything.
/// - Stop mode or a stopped guest: the bitmaps are in the image file, listed
///   and the old one's dirty ranges read from it (`QCOW2Bitmaps`: no process;
///   `qemu-img info`/`qemu-nbd -B` only for an image it leaves to QEMU) while
///   qemu-nbd opens the image for the read. Its lock keeps `qemu-img bitmap`
///   out until the read is done: then `--add` starts the new one (the guest is
///   still down, nothing was written since the point in time) and, after the
///   manifest, `--remove` drops the old one and any a killed run left. QEMU
///   keeps recording into them when it opens the image again.
/// - A bitmap that is missing, inconsistent (`in-use`: QEMU was killed before
///   storing it) or not the one the previous backup recorded means a full read,
///   with the reason in the log.
/// - The old bitmap goes only after the new manifest exists and the overlays are
///   merged (QEMU cannot remove a bitmap of a read-only node); after a failure
///   the new one goes and the old stays, so the next backup is still incremental.
final class QCOW2Incremental: @unchecked Sendable {
    // @unchecked: used by one backup task at a time.
    let newBase: String
    /// The repository storage: only its bitmaps are this backup's to keep or drop.
    let repository: String
    private(set) var previous: [String: IncrementalBase]
    /// Per disk key: the base the previous backup recorded (kept after a failure, even when `--full` reads everything).
    private(set) var recorded: [String: String] = [:]
    /// Per disk key: backups since the disk was last read whole (`full-every`).
    private(set) var previousRuns: [String: Int] = [:]
    /// What the read found per disk key (the changed chunks, or why everything).
    private(set) var tracked: [String: IncrementalForever.Read] = [:]
    let disks: [DiskPlan]
    let log: TaskLog

    private init(newBase: String, repository: String, previous: [String: IncrementalBase], disks: [DiskPlan], log: TaskLog) {
        self.newBase = newBase
        self.repository = repository
        self.previous = previous
        self.disks = disks
        self.log = log
    }

    /// Every disk a qcow2 image on a `dir` storage: the bitmaps can track all of them.
    static func applies(to disks: [DiskPlan]) -> Bool {
        !disks.isEmpty && disks.allSatisfy { $0.format == .qcow2 && $0.plugin.definition.type == .dir }
    }

    /// Where the bitmaps are reached: QEMU's node of each disk (guest running) or the image file (no QEMU has it open).
    enum Access {
        case qemu(QMPClient, nodes: [String: String])
        case image
    }

    /// Decides per disk and removes `snapdump_base_` bitmaps no finished backup
    /// recorded (a killed run's new one) and inconsistent ones.
    static func prepare(disks: [DiskPlan], store: RepositoryStore, snapshot: SnapshotName, full: Bool = false, fullEvery: Int = 0,
                        access: Access, log: TaskLog) async -> QCOW2Incremental {
        var previous: [String: IncrementalBase] = [:]
        var recorded: [String: String] = [:]
        var previousRuns: [String: Int] = [:]
        var heldKeys = Set<String>()
        for d in disks {
            let found = IncrementalBase.find(repository: store.repository, type: snapshot.type, id: snapshot.id,
                                             file: d.deviceName + ".img", volume: d.volume.description, baseExists: { _ in true })
            var decision = found
            let bitmaps: [QEMUDirtyBitmaps.Bitmap]
            do { bitmaps = try await list(d, access) } catch {
                previous[d.key] = .full(reason: "cannot list the dirty bitmaps of \(d.path): \(error)")
                continue
            }
            var held: String?
            if case .incremental(_, _, let base) = found {
                let ours = bitmaps.filter { BaseSnapshot.isBase($0.name) }.map(\.name)
                if case .qemu = access, let h = bitmaps.first(where: { $0.name == oldPrefix + base }), !h.inconsistent,
                   !bitmaps.contains(where: { $0.name == base }) {
                    // A run killed while QEMU kept running left the base held in QEMU: it still records, use it as it is.
                    held = h.name
                } else if let b = bitmaps.first(where: { $0.name == base }) {
                    if b.inconsistent {
                        decision = .full(reason: "dirty bitmap '\(base)' of \(d.path) is inconsistent (in-use: QEMU ended without storing it, killed?)")
                    }
                } else {
                    decision = .full(reason: "dirty bitmap '\(base)' the previous backup started is not in \(d.path) (QEMU ended without"
                                     + " storing it, killed? or the image was replaced)"
                                     + (ours.isEmpty ? "" : "; it has \(ours.joined(separator: ", "))"))
                }
            }
            let keep: String? = if case .incremental(_, _, let base) = decision { base } else { nil }
            if case .incremental(let prev, _, let base) = decision {
                recorded[d.key] = base
                let file = d.deviceName + ".img.fidx"
                let runs = (try? store.repository.manifest(prev))?.unprotected.baseSnapshots?.first { $0.filename == file }?.incrementalRuns ?? 0
                previousRuns[d.key] = runs
                if full {
                    decision = .full(reason: "--full given")
                } else if fullEvery > 0 && runs + 1 >= fullEvery {
                    decision = .full(reason: "full-every \(fullEvery) reached")
                }
            }
            previous[d.key] = decision
            if held != nil { heldKeys.insert(d.key) }
            // On the image file, qemu-nbd may be opening it now: `finish` removes them, after the read.
            guard case .qemu = access else { continue }
            for b in bitmaps where isOurs(b.name, repository: store.storage) && b.name != keep && b.name != held {
                do {
                    try await remove(d, b.name, access)
                    log.info("removed dirty bitmap '\(b.name)' of \(d.path)" + (b.inconsistent ? " (inconsistent)" : " that no finished backup recorded"))
                } catch {
                    log.warn("cannot remove dirty bitmap '\(b.name)' of \(d.path): \(error)")
                }
            }
        }
        let q = QCOW2Incremental(newBase: BaseSnapshot.name(backupTime: snapshot.time, repository: store.storage), repository: store.storage,
                                 previous: previous, disks: disks, log: log)
        q.recorded = recorded
        q.previousRuns = previousRuns
        if case .qemu(let qmp, let nodes) = access { await q.holdOldBasesInQEMU(qmp: qmp, nodes: nodes, alreadyHeld: heldKeys) }
        return q
    }

    /// A base of `repository`, or a temporary bitmap of one (a run killed while QEMU kept running).
    /// Other repositories' bases are theirs: a guest backed up into two keeps one base for each.
    static func isOurs(_ name: String, repository: String) -> Bool {
        var base = Substring(name)
        if base.hasPrefix(oldPrefix) { base = base.dropFirst(oldPrefix.count) } else if base.hasPrefix(newPrefix) { base = base.dropFirst(newPrefix.count) }
        return BaseSnapshot.belongs(String(base), to: repository)
    }

    static let oldPrefix = "snapdump-old-", newPrefix = "snapdump-new-"

    /// The bitmap that records from the window on, in QEMU only until the merge (then it becomes `newBase`).
    var recording: String { Self.newPrefix + newBase }

    /// Set once the bases are held in QEMU only (snapshot mode): `finish` must make one persistent again.
    private(set) var live = false

    private static func node(_ d: DiskPlan, _ nodes: [String: String]) -> String { nodes[d.key] ?? QEMUCommandLine.nodeName(for: d.key) }

    private static func action(_ type: String, _ data: [String: JSONValue]) -> JSONValue {
        .object(["type": .string(type), "data": .object(data)])
    }

    /// Before the window: each old base becomes `snapdump-old-<base>`, a bitmap QEMU does not store,
    /// so the window's read-only reopen has nothing to write. A disk where this fails is read in full.
    private func holdOldBasesInQEMU(qmp: QMPClient, nodes: [String: String], alreadyHeld: Set<String>) async {
        live = true
        for d in disks where !alreadyHeld.contains(d.key) {
            guard case .incremental(_, _, let base) = previous[d.key] else { continue }
            let n = JSONValue.string(Self.node(d, nodes)), old = JSONValue.string(Self.oldPrefix + base)
            do {
                _ = try await qmp.execute("transaction", arguments: ["actions": .array([
                    Self.action("block-dirty-bitmap-add", ["node": n, "name": old, "persistent": .bool(false)]),
                    Self.action("block-dirty-bitmap-merge", ["node": n, "target": old, "bitmaps": .array([.string(base)])]),
                    Self.action("block-dirty-bitmap-remove", ["node": n, "name": .string(base)]),
                ])])
            } catch {
                previous[d.key] = .full(reason: "cannot hold dirty bitmap '\(base)' of \(d.path) in QEMU for the backup: \(error)")
            }
        }
    }

    private static func list(_ d: DiskPlan, _ access: Access) async throws -> [QEMUDirtyBitmaps.Bitmap] {
        switch access {
        case .qemu(let qmp, let nodes):
            return try await QEMUDirtyBitmaps.list(node: nodes[d.key] ?? QEMUCommandLine.nodeName(for: d.key), qmp: qmp)
        case .image:
            let path = d.path
            return try await Blocking.run("qcow2-bitmaps") {
                try QCOW2ImageBitmaps.list(image: path).map { .init(name: $0.name, inconsistent: $0.inconsistent) }
            }
        }
    }

    private static func remove(_ d: DiskPlan, _ name: String, _ access: Access) async throws {
        switch access {
        case .qemu(let qmp, let nodes):
            try await QEMUDirtyBitmaps.remove(node: nodes[d.key] ?? QEMUCommandLine.nodeName(for: d.key), name: name, qmp: qmp)
        case .image:
            let path = d.path
            try await Blocking.run("qemu-img-bitmap") { try QCOW2ImageBitmaps.remove(image: path, name: name) }
        }
    }

    /// Stop mode, once the read is done and before the guest starts again: starts the new bitmap in
    /// each image (no process has it open). One of that name (a run killed in this same second) is
    /// replaced. A disk whose bitmap cannot be added is read in full next time (its bitmap is missing then).
    func startOffline() async {
        for d in disks {
            let path = d.path, name = newBase
            do {
                try await Blocking.run("qemu-img-bitmap") {
                    if try QCOW2ImageBitmaps.list(image: path).contains(where: { $0.name == name }) {
                        try QCOW2ImageBitmaps.remove(image: path, name: name)
                    }
                    try QCOW2ImageBitmaps.add(image: path, name: name)
                }
            } catch {
                log.warn("cannot start dirty bitmap '\(name)' in \(path) (the next backup of \(d.deviceName) reads everything): \(error)")
            }
        }
    }

    /// After the point in time: asks each image which chunks its recorded bitmap marks dirty.
    /// `access` `.qemu` needs the image nodes frozen under their overlays; `socket` is QEMU's NBD server's.
    func readChanges(access: Access, socket: String) async {
        for d in disks {
            guard case .incremental(_, let index, let base) = previous[d.key] ?? .full(reason: "no decision for \(d.deviceName)") else {
                tracked[d.key] = .full(reason: previous[d.key]?.reason ?? "no decision for \(d.deviceName)")
                continue
            }
            do {
                let changed: ChangedChunks
                switch access {
                case .qemu(let qmp, let nodes):
                    changed = try await QEMUDirtyBitmaps.changedChunks(node: Self.node(d, nodes), bitmap: live ? Self.oldPrefix + base : base,
                                                                       baseSize: index.size, chunkSize: FixedIndex.defaultChunkSize,
                                                                       socket: socket, qmp: qmp)
                case .image:
                    let path = d.path
                    changed = try await Blocking.run("dirty-bitmap") {
                        try DirtyBitmap.changedChunks(image: path, bitmap: base, baseSize: index.size, chunkSize: FixedIndex.defaultChunkSize)
                    }
                }
                tracked[d.key] = .incremental(previous: index, changed: changed)
            } catch {
                tracked[d.key] = .full(reason: "cannot read dirty bitmap '\(base)' of \(d.path): \(error)")
            }
        }
    }

    /// Every disk read in full, for `reason` (the bitmaps could not be asked).
    func readAll(reason: String) {
        for d in disks { tracked[d.key] = .full(reason: reason) }
    }

    /// After the backup (and the overlays' merge): keeps only the bitmap the
    /// newest finished backup recorded — this one's after a success, the old one after a failure.
    func finish(succeeded: Bool, access: Access) async {
        for d in disks {
            let keep = succeeded ? newBase : recorded[d.key]
            var bitmaps: [QEMUDirtyBitmaps.Bitmap]
            do { bitmaps = try await Self.list(d, access) } catch {
                log.warn("cannot list the dirty bitmaps of \(d.path) (the next backup removes the old ones): \(error)")
                continue
            }
            if live, case .qemu(let qmp, let nodes) = access, let keep {
                // The base to keep made persistent from the bitmaps held in QEMU: after a success the new
                // recording; after a failure the old base and everything since (the next backup stays incremental).
                let sources = (succeeded ? [recording] : [Self.oldPrefix + keep, recording]).filter { s in bitmaps.contains { $0.name == s } }
                let n = JSONValue.string(Self.node(d, nodes))
                if !sources.isEmpty && !bitmaps.contains(where: { $0.name == keep }) {
                    do {
                        _ = try await qmp.execute("transaction", arguments: ["actions": .array(
                            [Self.action("block-dirty-bitmap-add", ["node": n, "name": .string(keep), "persistent": .bool(true)]),
                             Self.action("block-dirty-bitmap-merge", ["node": n, "target": .string(keep), "bitmaps": .array(sources.map { .string($0) })])]
                            + sources.map { Self.action("block-dirty-bitmap-remove", ["node": n, "name": .string($0)]) })])
                        bitmaps = try await Self.list(d, access)
                    } catch {
                        log.warn("cannot make dirty bitmap '\(keep)' of \(d.path) persistent (the next backup reads everything): \(error)")
                    }
                }
            }
            for b in bitmaps where Self.isOurs(b.name, repository: repository) && b.name != keep {
                do {
                    try await Self.remove(d, b.name, access)
                    log.info(b.name == newBase || b.name == recording ? "removed dirty bitmap '\(b.name)' of \(d.path) (this backup failed)"
                             : b.name == recorded[d.key] ? "removed old dirty bitmap '\(b.name)' of \(d.path)"
                             : "removed dirty bitmap '\(b.name)' of \(d.path)" + (b.inconsistent ? " (inconsistent)" : " that no finished backup recorded"))
                } catch {
                    log.warn("cannot remove dirty bitmap '\(b.name)' of \(d.path) (the next backup tries again): \(error)")
                }
            }
        }
    }
}
