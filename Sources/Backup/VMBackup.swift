import Archive
import Foundation
import Guest
import Repository
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// Where one guest's backup goes: a VMA archive in a dump directory, or a
/// snapshot in a repository. Decided by the job (`BackupDestination`) and
/// named before the guest is touched.
enum GuestTarget {
    case archive(dumpdir: String, storage: String?, name: ArchiveName)
    /// `logFile` is written during the backup and stored in the snapshot as `client.log.blob` after it.
    case repository(RepositoryStore, snapshot: SnapshotName, logFile: String)
    /// `--stdout`: the archive goes to the stream; `dumpdir` only names where a killed
    /// file-mode run may have left a `.dat` (nothing is written there).
    case stream(File, dumpdir: String, name: ArchiveName)

    /// The archive's path, or the snapshot's volume id (`repo1:backup/vm/100/…`): the hook's TARGET.
    var location: String {
        switch self {
        case .archive(let dir, _, let name): return "\(dir)/\(name.fileName)"
        case .repository(let store, let s, _): return store.volume(s).description
        // vzdump names the target '-' when it writes to standard output.
        case .stream: return "-"
        }
    }

    var logFile: String {
        switch self {
        case .archive(let dir, _, let name): return "\(dir)/\(name.logName)"
        case .repository(_, _, let f): return f
        case .stream(_, let dir, let name): return "\(dir)/\(name.logName)"
        }
    }

    var dumpdir: String? {
        switch self {
        case .archive(let dir, _, _), .stream(_, let dir, _): return dir
        case .repository: return nil
        }
    }
}

/// Backs up one guest in stop, suspend or snapshot mode into a VMA archive
/// or a repository snapshot.
///
/// Invariants (DESIGN.md): a guest this code paused, froze or stopped is
/// resumed, thawed or restarted on every path out; every snapshot it creates
/// is deleted on every path out; the archive gets its final name only when
/// complete and fsynced, and a failure leaves no `.dat`/`.vma*` behind (a
/// repository snapshot exists only once its manifest is written, after a
/// syncfs; a failure removes its directory); the mode actually used is
/// logged, stored in the archive and returned.
final class VMBackup: @unchecked Sendable {
    // @unchecked: one backup runs in one task; blocking steps are handed to a
    // thread with Blocking.run while that task awaits them, so state is never
    // touched from two places at once.
    let vmid: Int
    let options: BackupOptions
    let paths: SnapdumpPaths
    let storages: StorageRegistry
    let lifecycle: VMLifecycle
    let target: GuestTarget
    let log: TaskLog
    let interrupt: Interrupt
    let startTime: Date
    let settings: BackupSettings
    let hook: HookScript?
    /// `--stdout`: the archive goes to this stream instead of a file in
    /// `dumpdir`; no prune, notes or protection (there is no archive file).
    var stream: File? {
        if case .stream(let f, _, _) = target { return f }
        return nil
    }

    init(vmid: Int, options: BackupOptions, paths: SnapdumpPaths, storages: StorageRegistry,
         lifecycle: VMLifecycle, target: GuestTarget, log: TaskLog, interrupt: Interrupt, startTime: Date,
         settings: BackupSettings = BackupSettings(), hook: HookScript? = nil) {
        self.settings = settings
        self.hook = hook
        self.target = target
        self.startTime = startTime
        self.vmid = vmid
        self.options = options
        self.paths = paths
        self.storages = storages
        self.lifecycle = lifecycle
        self.log = log
        self.interrupt = interrupt
    }

    /// What the guest is owed before we return: resume, restart (the freeze window pays its own).
    private lazy var debts = GuestDebts(vmid: vmid, log: log)
    private var snapshots: [(plugin: any StoragePlugin, volumes: [VolumeID], name: String)] = []
    private var sources: [any BlockSource] = []
    private var overlays: [QCOW2Overlay] = []
    private var fleecing: FleecingBackup?
    private var hookGuest: HookScript.Guest?
    /// Set when this backup keeps its storage snapshot as the next backup's base (incremental forever).
    private var incremental: IncrementalForever?
    /// Set when the disks are qcow2 images whose base is a dirty bitmap (incremental forever without storage snapshots).
    private var qcow2: QCOW2Incremental?
    /// Set when a running guest is fleeced into a repository: the base is a dirty bitmap in QEMU.
    private var fleeceBitmaps: FleecingIncremental?

    /// Runs a guest phase of the hook script (no-op without `--script`).
    /// A hook can take long: a SIGINT/SIGTERM that came meanwhile stops the
    /// backup right after it (a safe point), not only at the next chunk read.
    private func runHook(_ phase: HookScript.Phase) async throws {
        guard let hook, let g = hookGuest else { return }
        try await hook.run(phase, guest: g, log: log)
        if phase != .backupAbort { try interrupt.check() }
    }

    func run() async -> BackupSummary {
        var summary = BackupSummary(vmid: vmid, ok: false, requestedMode: options.mode)
        let started = Date()
        log.info("Starting Backup of VM \(vmid) (qemu)")
        log.info("Backup started at \(TaskLog.timestamp())")
        var locked = false
        do {
            let (config, staleLock) = try await Leftovers.clearStaleLock(try VMConfig.load(vmid: vmid, paths: paths), paths: paths,
                                                                        lifecycle: lifecycle, log: log)
            if let lock = config.lock {
                throw BackupError("VM \(vmid) is locked (\(lock)); if nothing is using it, clear it with 'snapdump vm unlock \(vmid)'")
            }
            switch target {
            case .archive(let dumpdir, let storage, _):
                try BackupLifecycle.checkBeforeBackup(vmid: vmid, dumpdir: dumpdir, storage: storage, settings: settings)
            case .repository(let store, _, _):
                try store.checkBackupLimit(vmid: vmid, policy: settings.pruneBackups, remove: settings.remove, protected: settings.protected)
            case .stream:
                break
            }
            let storages = self.storages
            // One decision (GuestDrives) for what the backup reads and what the guest is (re)started with,
            // each drive resolved once (on zfs-fuse every path is a round trip to its daemon): the backup's
            // drives are among the start drives (no CD-ROM, no backup=0).
            let (disks, startDrives) = try await Blocking.run("resolve-disks") { [config] in
                let start = try GuestDrives.resolve(config, for: .start, storages: storages)
                let backup = config.drives(for: .backup).compactMap { d in start.first { $0.key == d.key } }
                return (try DiskPlan.plan(backup, storages: storages), start.map(\.resolved))
            }
            summary.storages = Array(Set(disks.map(\.volume.storage))).sorted()
            let (status, snapshotsLeft) = try await Leftovers.recover(config: config, staleLock: staleLock, disks: disks, startDrives: startDrives,
                                                     fleecingStorage: options.fleecing.storage.flatMap { try? storages.plugin($0) },
                                                     dumpdir: target.dumpdir, paths: paths, lifecycle: lifecycle, log: log)
            log.info("status = \(status.state.rawValue)")
            if let name = config.name { log.info("VM Name: \(name)") }
            for d in config.disks where !d.isIncluded(in: .backup) && !d.isCDROM {
                log.info("exclude disk '\(d.key)' '\(d.volid)' (backup=no)")
            }
            for d in disks {
                log.info("include disk '\(d.key)' '\(d.volume)' \(Formatting.bytes(d.size))")
            }
            summary.diskBytes = disks.reduce(0) { $0 + $1.size }

            // Decide the mode before touching the guest.
            let decision = try ModeDecision.make(requested: options.mode, state: status.state, disks: disks,
                                                 fallback: options.snapshotFallback, fleecing: options.fleecing.enabled)
            if let why = decision.fallbackReason {
                log.warn(why)
                log.info("trying 'suspend' mode instead")
                summary.fallbackReason = why
            }
            if case .snapshot(let plan) = decision.method, let why = plan.fleecingReason {
                // The fleecing storage is checked now, before the guest is touched.
                fleecing = try FleecingBackup(vmid: vmid, disks: plan.fleecingDisks, settings: options.fleecing, storages: storages,
                                              socket: "\(paths.qemuRunDir)/\(vmid).fleecing.nbd", log: log)
                log.info("\(why) - using fleecing instead")
                summary.method = "fleecing"
            }
            let mode = decision.mode
            summary.mode = mode
            log.info("backup mode: \(mode.rawValue)")
            if fleecing != nil { log.info("snapshot method: fleecing (QEMU copy-before-write; the guest is not paused)") }
            if options.bwlimit > 0 { log.info("bandwidth limit: \(options.bwlimit) KiB/s") }

            try await lifecycle.lock(vmid: vmid, "backup")
            locked = true

            let start = startTime
            let archivePath = target.location
            hookGuest = HookScript.Guest(mode: mode, vmid: vmid, hostname: config.name ?? "VM \(vmid)", target: archivePath,
                                         logfile: target.logFile)
            try await runHook(.backupStart)
            switch target {
            case .archive, .stream: log.info("creating vzdump archive '\(archivePath)'")
            case .repository: log.info("creating repository backup '\(archivePath)'")
            }

            let downtime = DowntimeClock()
            let guest = GuestControl(vmid: vmid, lifecycle: lifecycle, log: log, interrupt: interrupt, debts: debts, downtime: downtime,
                                     hook: { [unowned self] in try await self.runHook($0) }, hasHook: hook != nil)
            switch decision.method {
            case .stop(let shutdown):
                if shutdown {
                    try await StopQuiesce(guest: guest, stopwait: .seconds(options.stopwait * 60), startDrives: startDrives,
                                          restartMarker: Leftovers.restartMarker(vmid: vmid, paths: paths)).run()
                }
                if let base = newBase(disks) {
                    // The guest is down: a storage snapshot now is the same data, and it is kept as the next base.
                    // The snapshot need not wait for the previous backup's manifest and index to be read and
                    // checked: both at once (on zfs-fuse the snapshot waits for a transaction group) — unless
                    // a base of that very name is left (a run killed in this same second), which prepare drops first.
                    async let prepared = prepareIncremental(disks, listed: snapshotsLeft)
                    if snapshotsLeft.values.contains(where: { $0.contains(base) }) { _ = try await prepared }
                    try await takeStorageSnapshots(disks, name: base)
                    incremental = try await prepared
                    try await resolveIncremental(disks)
                    try await openSources(disks, snapshot: base)
                } else if case .repository = target, QCOW2Incremental.applies(to: disks) {
                    // The guest is down: the bitmaps are in the image files, parsed while qemu-nbd opens each
                    // image (read-only). The new bitmap is added once the reads are done (`startOffline`): the
                    // guest stays down until settle(), so nothing is written in between.
                    async let opened = openedSources(disks)
                    let q = await qcow2Incremental(disks, running: false)
                    await q?.readChanges(access: .image, socket: "")
                    if let q { adoptTracking(q) }
                    sources += try await opened
                } else {
                    try await openSources(disks)
                }
            case .suspend(let pause):
                if pause { try await SuspendQuiesce(guest: guest).run() }
                try await openSources(disks)
            case .snapshot(let plan):
                var snapName = "\(Leftovers.snapshotPrefix)\(Int(start.timeIntervalSince1970))"
                if plan.disks.allSatisfy({ $0.technique == .storageSnapshot }), let base = try await incrementalBase(disks, listed: snapshotsLeft) {
                    snapName = base
                }
                var bitmap: String?
                if status.state == .running, plan.disks.allSatisfy({ $0.technique == .qemuOverlay }),
                   let q = await qcow2Incremental(disks, running: true) {
                    bitmap = q.recording
                }
                if let fleecing, status.state == .running, let f = await fleecingIncremental(fleecing.disks) {
                    fleecing.bitmaps = f.fleecingBitmaps
                }
                let window = FreezeWindow(guest: guest, config: config, state: status.state, plan: plan, name: snapName, fleecing: fleecing,
                                          bitmap: bitmap)
                do { try await window.run() } catch { adopt(window); throw error }
                adopt(window)
                if let f = fleeceBitmaps, let fleecing {
                    // The export offers each recorded bitmap, stopped at this backup's point in time.
                    await f.readChanges(socket: fleecing.socket)
                    incremental = IncrementalForever(newBase: f.newBase, repository: f.repository, previous: f.previous,
                                                     previousRuns: f.previousRuns, tracked: f.tracked)
                    log.info("dirty bitmap '\(f.newBase)' started on \(fleecing.disks.map(\.key).joined(separator: ", ")) with the fleecing")
                }
                if let q = qcow2, bitmap != nil {
                    // Before the merge: the images are frozen under their overlays, their old bitmaps too.
                    let nodes = Dictionary(overlays.flatMap(\.disks).map { ($0.key, $0.node) }, uniquingKeysWith: { a, _ in a })
                    do {
                        let qmp = try await lifecycle.connectQMP(vmid: vmid)
                        await q.readChanges(access: .qemu(qmp, nodes: nodes), socket: "\(paths.qemuRunDir)/\(vmid).bitmap.nbd")
                        await qmp.close()
                    } catch {
                        q.readAll(reason: "cannot ask QEMU for the dirty bitmaps: \(error)")
                    }
                    adoptTracking(q)
                }
                try await resolveIncremental(disks)
                try await openSnapshotSources(disks, name: snapName)
            }

            // The archive phase: in snapshot mode the guest runs meanwhile.
            // Reading, hashing and writing block: they run on their own threads, not the cooperative pool.
            let result: ArchiveResult
            do {
                result = try await Blocking.run("archive") { [config, target, mode] in
                    switch target {
                    case .archive(let dumpdir, _, let name), .stream(_, let dumpdir, let name):
                        return try self.writeArchive(config: config, disks: disks, dumpdir: dumpdir, path: archivePath, archiveName: name,
                                                     mode: mode, downtime: downtime, started: start)
                    case .repository(let store, let snapshot, _):
                        return try self.upload(config: config, disks: disks, store: store, snapshot: snapshot,
                                               mode: mode, downtime: downtime, started: start)
                    }
                }
            } catch {
                // The readers failed because the fleecing was aborted: say why.
                if let why = await fleecing?.failure { throw BackupError(why) }
                throw error
            }
            if let inc = incremental {
                // The manifest exists: the new snapshot is the recorded base, settle() must not remove it.
                snapshots.removeAll { $0.name == inc.newBase }
                let log = self.log
                // A qcow2 bitmap base goes after the overlays' merge (finishQCOW2), a fleecing one after the fleecing (finishFleecingBitmaps).
                if qcow2 == nil && fleeceBitmaps == nil { try await Blocking.run("drop-old-base") { inc.dropOldBases(disks, log: log) } }
            }
            summary.archive = archivePath
            summary.archiveBytes = result.fileBytes
            summary.readBytes = result.readBytes
            summary.chunks = result.chunks
            summary.disks = result.disks
            if let q = qcow2, !q.live {
                // Stop mode: the reads are done and the guest is still down (settle() restarts it): the new
                // bitmap starts now, in each image qemu-nbd no longer holds. Not added, the next backup says why.
                do { try closeSources() } catch { log.warn("cannot close the disks' readers: \(error)") }
                await q.startOffline()
            }
            try await settle()
            await finishQCOW2(succeeded: true)
            await finishFleecingBitmaps(succeeded: true)
            if let ms = downtime.milliseconds {
                summary.downtimeMs = ms
                summary.downtimeKind = downtime.kind
                summary.downtimeParts = downtime.partsByName
            } else if let kind = downtime.kind {
                // No downtime, and why (`none (atomic snapshot)`): a reader need not guess from a missing field.
                summary.downtimeKind = kind
            }
            switch target {
            case .archive(_, let storage, _):
                try BackupLifecycle.afterCommit(archivePath: archivePath, vmid: vmid, guestName: config.name,
                                                storage: storage, settings: settings, log: log)
            case .repository(let store, let snapshot, _):
                try BackupLifecycle.afterCommit(snapshot: snapshot, in: store, guestName: config.name, settings: settings, log: log)
            case .stream:
                break
            }
            try await runHook(.backupEnd)
            summary.ok = true
        } catch {
            let message = "\(error)"
            log.error("Backup of VM \(vmid) failed - \(message)")
            summary.error = message
            if let archive = summary.archive, stream == nil {
                // Failed after the commit (restart, hook, signal): the archive is whole and retention may have
                // counted it already; deleting it could lose the newest backup.
                log.info("archive '\(archive)' is complete and is kept; only what came after it failed")
            }
            do { try await settle() } catch { log.error("cleanup failed: \(error)") }
            // The manifest exists once the archive is named: its bitmap is then the recorded base.
            await finishQCOW2(succeeded: summary.archive != nil)
            await finishFleecingBitmaps(succeeded: summary.archive != nil)
            try? await runHook(.backupAbort)
        }
        if locked {
            do { try await lifecycle.unlock(vmid: vmid) } catch { log.error("cannot remove lock of VM \(vmid): \(error)") }
        }
        summary.seconds = Date().timeIntervalSince(started)
        if summary.ok {
            log.info("Finished Backup of VM \(vmid) (\(Formatting.duration(summary.seconds)))")
        } else {
            log.error("Failed Backup of VM \(vmid) (\(Formatting.duration(summary.seconds)))")
        }
        log.info("Backup finished at \(TaskLog.timestamp())")
        return summary
    }

    /// Opens the disks' block sources, each on a thread of its own (opening may start qemu-nbd, clone a
    /// dataset or wait for a device node); on a failure those already open are closed. Touches no state
    /// of this backup, so it may run beside other work. `changes`: per disk key, what its storage reported
    /// since the base (`IncrementalForever.resolve`), for a disk read incrementally from `snapshot`.
    private func openedSources(_ disks: [DiskPlan], snapshot: String? = nil,
                               changes: [String: ChangedChunks] = [:]) async throws -> [any BlockSource] {
        var opened: [any BlockSource] = []
        do {
            for d in disks {
                let c = changes[d.key]
                opened.append(try await Blocking.run("open-source") {
                    if let snapshot, let c { return try d.plugin.openBlockSource(d.volume, snapshot: snapshot, changes: c) }
                    return try d.plugin.openBlockSource(d.volume, snapshot: snapshot)
                })
            }
        } catch {
            for s in opened { try? s.close() }
            throw error
        }
        return opened
    }

    private func openSources(_ disks: [DiskPlan], snapshot: String? = nil) async throws {
        var changes: [String: ChangedChunks] = [:]
        for d in disks { changes[d.key] = incremental?.tracked[d.key]?.changed }
        sources += try await openedSources(disks, snapshot: snapshot, changes: changes)
    }

    private func closeSources() throws {
        var firstError: (any Error)?
        for s in sources { do { try s.close() } catch { firstError = firstError ?? error } }
        sources = []
        if let firstError { throw firstError }
    }

    /// Incremental forever: what changed since each disk's base, asked before the new snapshot is opened.
    private func resolveIncremental(_ disks: [DiskPlan]) async throws {
        guard let inc = incremental else { return }
        incremental = try await Blocking.run("change-tracking") {
            var resolved = inc
            resolved.resolve(disks)
            return resolved
        }
    }

    /// Into a repository, from storages that track changes: decides per disk
    /// whether the previous backup's base can be used and names the snapshot
    /// this backup keeps as the next base (`IncrementalForever`); nil otherwise.
    /// `listed`: the disks' snapshots as leftover removal saw them (not listed again).
    private func incrementalBase(_ disks: [DiskPlan], listed: [VolumeID: [String]]) async throws -> String? {
        guard newBase(disks) != nil else { return nil }
        let inc = try await prepareIncremental(disks, listed: listed)
        incremental = inc
        return inc.newBase
    }

    /// The snapshot this backup keeps as the next base, into a repository from storages that
    /// track changes (`IncrementalForever.tracks`); nil otherwise. Decided without asking anyone.
    private func newBase(_ disks: [DiskPlan]) -> String? {
        guard case .repository(let store, let snapshot, _) = target, !disks.isEmpty, disks.allSatisfy(IncrementalForever.tracks) else {
            return nil
        }
        return BaseSnapshot.name(backupTime: snapshot.time, repository: store.storage)
    }

    /// `IncrementalForever.prepare` for `newBase(disks)` on a thread of its own; touches no state of
    /// this backup, so it may run beside the snapshot.
    private func prepareIncremental(_ disks: [DiskPlan], listed: [VolumeID: [String]]) async throws -> IncrementalForever {
        guard case .repository(let store, let snapshot, _) = target else { preconditionFailure("prepareIncremental: not into a repository") }
        let log = self.log, full = options.full, fullEvery = options.fullEvery
        let repositories = storages.config.storages.filter { $0.type == .repo }.map(\.id)
        return try await Blocking.run("incremental-base") {
            IncrementalForever.prepare(disks: disks, store: store, snapshot: snapshot, full: full, fullEvery: fullEvery,
                                       repositories: repositories, listed: listed, log: log)
        }
    }

    /// Into a repository, every disk a qcow2 image on a `dir` storage: decides per disk
    /// whether the previous backup's dirty bitmap can be used (`QCOW2Incremental`), with
    /// QEMU (`running`) or on the image files; nil otherwise.
    private func qcow2Incremental(_ disks: [DiskPlan], running: Bool) async -> QCOW2Incremental? {
        guard case .repository(let store, let snapshot, _) = target, QCOW2Incremental.applies(to: disks) else { return nil }
        let q: QCOW2Incremental
        if running {
            let qmp: QMPClient
            do { qmp = try await lifecycle.connectQMP(vmid: vmid) } catch {
                log.warn("cannot ask QEMU for the dirty bitmaps of VM \(vmid) (every disk is read): \(error)")
                return nil
            }
            var nodes: [String: String] = [:]
            for d in disks { nodes[d.key] = (try? await DriveNodes.formatNode(key: d.key, qmp: qmp)) ?? nil }
            q = await QCOW2Incremental.prepare(disks: disks, store: store, snapshot: snapshot, full: options.full, fullEvery: options.fullEvery,
                                               access: .qemu(qmp, nodes: nodes), log: log)
            await qmp.close()
        } else {
            q = await QCOW2Incremental.prepare(disks: disks, store: store, snapshot: snapshot, full: options.full, fullEvery: options.fullEvery,
                                               access: .image, log: log)
        }
        qcow2 = q
        return q
    }

    /// Into a repository, a running guest fleeced: decides per disk whether the previous
    /// backup's dirty bitmap in QEMU can be used (`FleecingIncremental`); nil otherwise.
    private func fleecingIncremental(_ disks: [DiskPlan]) async -> FleecingIncremental? {
        guard case .repository(let store, let snapshot, _) = target, !disks.isEmpty else { return nil }
        let qmp: QMPClient
        do { qmp = try await lifecycle.connectQMP(vmid: vmid) } catch {
            log.warn("cannot ask QEMU for the dirty bitmaps of VM \(vmid) (every disk is read, none tracked): \(error)")
            return nil
        }
        var nodes: [String: String] = [:]
        for d in disks { nodes[d.key] = (try? await DriveNodes.formatNode(key: d.key, qmp: qmp)) ?? nil }
        let f = await FleecingIncremental.prepare(disks: disks, store: store, snapshot: snapshot, full: options.full, fullEvery: options.fullEvery,
                                                  qmp: qmp, nodes: nodes, log: log)
        await qmp.close()
        fleeceBitmaps = f
        return f
    }

    /// Once per backup, after settle() removed the fleecing from QEMU: the bitmaps no backup needs go.
    private func finishFleecingBitmaps(succeeded: Bool) async {
        guard let f = fleeceBitmaps else { return }
        fleeceBitmaps = nil
        do {
            let qmp = try await lifecycle.connectQMP(vmid: vmid)
            var nodes: [String: String] = [:]
            for d in f.disks { nodes[d.key] = (try? await DriveNodes.formatNode(key: d.key, qmp: qmp)) ?? nil }
            await f.finish(succeeded: succeeded, qmp: qmp, nodes: nodes)
            await qmp.close()
        } catch {
            log.warn("cannot settle the dirty bitmaps of VM \(vmid) (the next backup does): \(error)")
        }
    }

    /// The engine reads what the bitmaps found, and records the new bitmap as each disk's base.
    private func adoptTracking(_ q: QCOW2Incremental) {
        incremental = IncrementalForever(newBase: q.newBase, repository: q.repository, previous: q.previous, previousRuns: q.previousRuns,
                                         tracked: q.tracked)
    }

    /// Once per backup, after settle(): the qcow2 bitmaps no backup needs go, through QEMU if the guest runs now.
    private func finishQCOW2(succeeded: Bool) async {
        guard let q = qcow2 else { return }
        qcow2 = nil
        let running = ((try? await lifecycle.status(vmid: vmid))?.state ?? .stopped) == .running
        guard running else { return await q.finish(succeeded: succeeded, access: .image) }
        do {
            let qmp = try await lifecycle.connectQMP(vmid: vmid)
            var nodes: [String: String] = [:]
            for d in q.disks { nodes[d.key] = (try? await DriveNodes.formatNode(key: d.key, qmp: qmp)) ?? nil }
            await q.finish(succeeded: succeeded, access: .qemu(qmp, nodes: nodes))
            await qmp.close()
        } catch {
            log.warn("cannot remove the old dirty bitmaps of VM \(vmid) (the next backup does): \(error)")
        }
    }

    /// Stop mode with incremental forever: snapshots of the stopped guest's disks, one call per storage,
    /// recorded at once so settle() removes them if the backup fails.
    private func takeStorageSnapshots(_ disks: [DiskPlan], name: String) async throws {
        var groups: [(plugin: any StoragePlugin, volumes: [VolumeID])] = []
        for d in disks {
            if let i = groups.firstIndex(where: { $0.plugin.id == d.plugin.id }) { groups[i].volumes.append(d.volume) } else {
                groups.append((d.plugin, [d.volume]))
            }
        }
        for g in groups {
            let plugin = g.plugin, volumes = g.volumes
            try await Blocking.run("snapshot") { try plugin.createSnapshot(volumes, name: name) }
            snapshots.append((plugin, volumes, name))
            log.info("created storage snapshot '\(name)' on \(plugin.id) (kept as the base of the next backup)")
        }
    }

    /// What the freeze window made, to be read and then removed by settle() on every path out.
    private func adopt(_ window: FreezeWindow) {
        snapshots += window.snapshots
        if let o = window.overlay { overlays.append(o) }
    }

    /// Readers of the frozen views, one per disk in archive order: an overlaid disk's frozen image,
    /// a fleeced disk's NBD export in QEMU, else its storage snapshot.
    private func openSnapshotSources(_ disks: [DiskPlan], name: String) async throws {
        var qemuSources: [String: any BlockSource] = [:]
        for o in overlays { qemuSources.merge(try o.openSources()) { a, _ in a } }
        if let fleecing { qemuSources.merge(try fleecing.openSources()) { a, _ in a } }
        // Appended one by one, so settle() closes whatever was opened if a later one fails.
        sources = []
        do {
            for d in disks {
                if let q = qemuSources[d.key] { sources.append(q); continue }
                try await openSources([d], snapshot: name)
            }
        } catch {
            for s in qemuSources.values where !sources.contains(where: { $0 === s }) { try? s.close() }
            throw error
        }
    }

    private struct ArchiveResult {
        var fileBytes: UInt64
        var readBytes: UInt64
        var disks: [BackupSummary.Disk]? = nil
        var chunks: BackupSummary.Chunks? = nil
    }

    /// The archive phase into a repository: disks, then the config and
    /// snapdump.json as blobs, then the manifest (the commit). On any error
    /// the snapshot directory is removed; chunks already written stay for gc.
    private func upload(config: VMConfig, disks: [DiskPlan], store: RepositoryStore, snapshot: SnapshotName,
                        mode: BackupMode, downtime: DowntimeClock, started: Date) throws -> ArchiveResult {
        let log = self.log
        let writer = try BackupWriter(repository: store.repository, snapshot: snapshot, lockTimeout: 10) { old in
            log.warn("removed unfinished backup '\(store.storage):backup/\(old)', left by an earlier run that was killed")
        }
        do {
            let t0 = Date()
            let progress = ProgressReporter(log: log)
            var methods = [String?](repeating: nil, count: disks.count)
            var fullReasons = [String?](repeating: nil, count: disks.count)
            let upload = RepositoryUpload(writer: writer, disks: zip(disks, sources).map { .init(name: $0.deviceName, size: $0.size, source: $1) },
                                          bwlimitKiB: options.bwlimit, progress: progress, interrupt: interrupt)
            if let inc = incremental {
                for (i, d) in disks.enumerated() {
                    switch inc.read(d) {
                    case .incremental(let previous, let changed):
                        upload.disks[i].previous = previous
                        upload.disks[i].changed = changed
                        if case .incremental(let s, _, _) = inc.previous[d.key] { upload.disks[i].previousSnapshot = s }
                        methods[i] = changed.method
                    case .full(let reason):
                        log.info("\(d.deviceName): full read: \(reason)")
                        fullReasons[i] = reason
                    }
                }
            }
            let r = try upload.run()
            var diskSummaries: [BackupSummary.Disk] = []
            for (i, d) in disks.enumerated() {
                let c = r.disks[i]
                // Per disk: how it was read, chunks and bytes read, what the repository stored for it.
                let how = methods[i].map { "incremental: \(c.read) of \(c.chunks) chunks read (\($0))" } ?? "full: \(c.read) of \(c.chunks) chunks read"
                // Incremental: how many changed chunks were built from the previous backup's chunk with only the changed ranges read.
                let patched = methods[i] == nil ? "" : ", \(c.patched) chunks patched (previous chunk + changed ranges)"
                    + (c.resumed > 0 ? ", \(c.resumed) of them resumed at their first changed frame" : "")
                log.info("\(d.deviceName): \(how), \(Formatting.bytes(c.bytesRead)) read, \(c.newChunks) new chunks stored"
                         + " (\(Formatting.bytes(c.storedBytes)))" + patched)
                if let carried = sources[i] as? ChangedDataSource {
                    // The storage's report carried the changed data (zfs-fuse's send stream): the snapshot is opened only for the rest.
                    log.info("\(d.deviceName): changed data taken from the \(methods[i] ?? "change report") stream; "
                             + "\(Formatting.bytes(carried.bytesFromFallback)) read from the snapshot itself")
                }
                if c.previousUnreadable > 0 {
                    log.warn("\(d.deviceName): \(c.previousUnreadable) changed chunks read whole: the previous backup's chunk could not be read back (\(c.previousUnreadableReason ?? "?"))")
                }
                diskSummaries.append(BackupSummary.Disk(name: d.deviceName, method: methods[i] ?? "full", fullReason: fullReasons[i],
                                                        chunks: c.chunks, read: c.read, fromPrevious: c.fromPrevious, bytesRead: c.bytesRead,
                                                        newChunks: c.newChunks, storedBytes: c.storedBytes))
                if let inc = incremental {
                    writer.recordBase(name: d.deviceName + ".img", volume: d.volume.description, snapshot: inc.newBase,
                                      incrementalRuns: inc.incrementalRuns(d, incremental: methods[i] != nil))
                }
            }
            try writer.addBlob(name: "qemu-server.conf.blob", data: Array(VMAConfigFile.render(config, disks: disks).utf8))
            // snapdump.json as in an archive (mode, downtime); a device's digest is its index checksum, which for
            // an unencrypted repository equals the archive's device digest.
            let meta = SnapdumpMetadata(
                devices: zip(disks, r.indexes).map { SnapdumpMetadata.Device(name: $0.deviceName, size: $0.size, sha256: $1.indexChecksum) },
                mode: mode.rawValue, downtimeMs: downtime.projectedMilliseconds, startTime: Int64(started.timeIntervalSince1970),
                snapdumpVersion: SnapdumpVersion.current, downtimeParts: downtime.partsByName)
            try writer.addBlob(name: SnapdumpMetadata.blobName + ".blob", data: try meta.encoded())
            try interrupt.check()
            _ = try writer.finish()
            let secs = Date().timeIntervalSince(t0)
            let stats = writer.stats
            if let sparse = progress.sparseLine() { log.info(sparse) }
            log.info("transferred \(Formatting.bytes(r.bytesTotal)) in \(Int(secs.rounded())) seconds (\(Formatting.rate(r.bytesTotal, seconds: secs)))")
            let fromPrevious = r.disks.reduce(0) { $0 + $1.fromPrevious }
            log.info("read \(Formatting.bytes(r.bytesRead)) (\(r.disks.reduce(0) { $0 + $1.read }) chunks"
                     + (fromPrevious > 0 ? ", \(fromPrevious) taken from the previous backup unread" : "")
                     + "); chunks: \(stats.count) new (\(Formatting.bytes(stats.size))), "
                     + "\(stats.duplicates) reused; stored \(Formatting.bytes(stats.compressedSize))")
            for (d, idx) in zip(disks, r.indexes) { log.info("\(d.deviceName): index checksum \(idx.indexChecksum.hex)") }
            return ArchiveResult(fileBytes: stats.compressedSize, readBytes: r.bytesRead, disks: diskSummaries,
                                 chunks: .init(new: stats.count, reused: stats.duplicates, newBytes: stats.size, storedBytes: stats.compressedSize,
                                               read: r.disks.reduce(0) { $0 + $1.read }, fromPrevious: r.disks.reduce(0) { $0 + $1.fromPrevious }))
        } catch {
            writer.abort()
            throw error
        }
    }

    private func writeArchive(config: VMConfig, disks: [DiskPlan], dumpdir: String, path: String, archiveName: ArchiveName,
                              mode: BackupMode, downtime: DowntimeClock, started: Date) throws -> ArchiveResult {
        let datPath = "\(dumpdir)/\(archiveName.temporaryName)"
        // Whole sectors, as QEMU and Proxmox see a disk: the pipeline reads a raw file's odd tail as zeros.
        let devices = disks.enumerated().map {
            VMADevice(id: UInt8($0.offset + 1), name: $0.element.deviceName, size: VMAFormat.paddedDeviceSize($0.element.size))
        }
        let conf = VMAConfigFile.render(config, disks: disks)
        var compression = options.compression
        if case let .zstd(level, workers) = compression {
            compression = .zstd(level: level, workers: Int32(BackupOptions.zstdWorkers(Int(workers), cores: ProcessInfo.processInfo.activeProcessorCount)))
        }
        var configs = [VMAConfigBlob(name: "qemu-server.conf", data: Array(conf.utf8))]
        let ctime = Int64(started.timeIntervalSince1970)
        let writer: VMAWriter
        if let stream {
            // Invariant 5: the mode is in the archive's metadata, streamed too. The
            // header goes out first, so only what is known now: in snapshot mode the
            // window is over; in stop/suspend mode the guest is still down (no downtime yet).
            let known = SnapdumpMetadata(devices: [], mode: mode.rawValue,
                                         downtimeMs: mode == .snapshot ? downtime.projectedMilliseconds : nil,
                                         startTime: ctime, snapdumpVersion: SnapdumpVersion.current,
                                         downtimeParts: mode == .snapshot ? downtime.partsByName : nil)
            configs.append(VMAConfigBlob(name: SnapdumpMetadata.streamBlobName, data: try known.encoded()))
            writer = try VMAWriter(stream: stream, ctime: ctime, devices: devices, configs: configs, compression: compression)
        } else {
            writer = try VMAWriter(path: datPath, ctime: ctime, devices: devices, configs: configs,
                                   reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: devices.count),
                                   compression: compression)
        }
        do {
            let t0 = Date()
            let progress = ProgressReporter(log: log)
            let pipeline = ArchivePipeline(writer: writer, devices: zip(devices, sources).map { .init(id: $0.id, name: $0.name, source: $1) },
                                           bwlimitKiB: options.bwlimit, progress: progress, interrupt: interrupt)
            let r = try pipeline.run()
            // In stop and suspend mode the guest is still down now; its downtime ends when settle() resumes it.
            let meta = SnapdumpMetadata(
                devices: devices.map { SnapdumpMetadata.Device(name: $0.name, size: $0.size, sha256: r.digests[$0.id]!) },
                mode: mode.rawValue, downtimeMs: downtime.projectedMilliseconds, startTime: Int64(started.timeIntervalSince1970),
                snapdumpVersion: SnapdumpVersion.current, downtimeParts: downtime.partsByName)
            if writer.isStreaming {
                // The header went out first: the digests have no place in the stream, only in the log.
                try writer.finish(snapdumpJSON: nil)
            } else {
                try writer.finish(snapdumpJSON: try meta.encoded())
                try writer.commit(to: path)
            }
            let secs = Date().timeIntervalSince(t0)
            let size = writer.statistics.fileBytes
            if let sparse = progress.sparseLine() { log.info(sparse) }
            log.info("transferred \(Formatting.bytes(r.bytesTotal)) in \(Int(secs.rounded())) seconds (\(Formatting.rate(r.bytesTotal, seconds: secs)))")
            log.info("archive file size: \(Formatting.bytes(size))")
            for d in devices { log.info("\(d.name): sha256 \(r.digests[d.id]!.hex)") }
            return ArchiveResult(fileBytes: size, readBytes: r.bytesRead)
        } catch {
            writer.abort()
            throw error
        }
    }

    /// Closes readers, pays the guest's debts (resume, thaw, restart) and
    /// deletes snapshots. Runs on every path out; each step is attempted even
    /// when an earlier one fails, and the first failure is reported.
    private func settle() async throws {
        var firstError: (any Error)?
        do { try closeSources() } catch { firstError = error }
        do { try await debts.pay() } catch { firstError = firstError ?? error }
        for s in snapshots.reversed() {
            do {
                let plugin = s.plugin, volumes = s.volumes, name = s.name
                try await Blocking.run("delete-snapshot") { try plugin.deleteSnapshot(volumes, name: name) }
                log.info("removed storage snapshot '\(s.name)' on \(s.plugin.id)")
            } catch {
                log.error("cannot remove snapshot '\(s.name)' on \(s.plugin.id): \(error)")
                firstError = firstError ?? error
            }
        }
        snapshots = []
        for o in overlays {
            do {
                let qmp = try await lifecycle.connectQMP(vmid: vmid)
                do { try await o.commit(qmp: qmp) } catch { await qmp.close(); throw error }
                await qmp.close()
            } catch {
                firstError = firstError ?? error
            }
        }
        overlays = []
        if let f = fleecing {
            do { try await f.finish() } catch {
                log.error("cannot remove fleecing of VM \(vmid): \(error)")
                firstError = firstError ?? error
            }
            fleecing = nil
        }
        if let firstError { throw firstError }
    }
}

/// Measures how long the guest was unavailable, and how long each step of a freeze window took.
final class DowntimeClock: @unchecked Sendable {
    // @unchecked: used from one task at a time.
    private(set) var kind: String?
    private var started: ContinuousClock.Instant?
    private var total: Duration?
    /// Steps inside the window (`fs-freeze`, `snapshot`, `fs-thaw`, …) in the order first seen; repeats add up.
    private(set) var parts: [(name: String, ms: Int64)] = []

    func begin(_ kind: String) {
        self.kind = kind
        started = .now
    }

    func end() {
        if let s = started { total = (total ?? .zero) + (ContinuousClock.now - s) }
        started = nil
    }

    /// The window blocked nothing of the guest: no downtime, `kind` says why (`none (atomic snapshot)`).
    func reset(none why: String? = nil) {
        kind = why.map { "none (\($0))" }
        started = nil
        total = nil
        parts = []
    }

    /// Runs `body` as the step `name` of the window.
    func measure<T>(_ name: String, _ body: () async throws -> T) async rethrows -> T {
        let t0 = ContinuousClock.now
        defer {
            let ms = Formatting.milliseconds(ContinuousClock.now - t0)
            if let i = parts.firstIndex(where: { $0.name == name }) { parts[i].ms += ms } else { parts.append((name, ms)) }
        }
        return try await body()
    }

    var milliseconds: Int64? { total.map(Formatting.milliseconds) }

    /// The steps by name, for snapdump.json and the summary; nil when none were measured.
    var partsByName: [String: Int64]? {
        parts.isEmpty ? nil : Dictionary(parts.map { ($0.name, $0.ms) }, uniquingKeysWith: +)
    }

    /// `guest downtime: 61 ms (fs-freeze 30 ms, snapshot 4 ms, fs-thaw 27 ms)`; without steps, the kind.
    var summaryLine: String? {
        guard let ms = milliseconds else { return nil }
        let detail = parts.isEmpty ? (kind ?? "") : parts.map { "\($0.name) \($0.ms) ms" }.joined(separator: ", ")
        return "guest downtime: \(ms) ms (\(detail))"
    }

    /// Downtime so far, counting a pause still in progress (for metadata written before resuming).
    var projectedMilliseconds: Int64? {
        if let s = started { return Formatting.milliseconds((total ?? .zero) + (ContinuousClock.now - s)) }
        return milliseconds
    }
}
