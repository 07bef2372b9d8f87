import Archive
import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// Backs up one guest in stop, suspend or snapshot mode into a VMA archive.
///
/// Invariants (DESIGN.md): a guest this code paused, froze or stopped is
/// resumed, thawed or restarted on every path out; every snapshot it creates
/// is deleted on every path out; the archive gets its final name only when
/// complete and fsynced, and a failure leaves no `.dat`/`.vma*` behind; the
/// mode actually used is logged, stored in the archive and returned.
final class VMBackup: @unchecked Sendable {
    // @unchecked: one backup runs in one task; blocking steps are handed to a
    // thread with Blocking.run while that task awaits them, so state is never
    // touched from two places at once.
    let vmid: Int
    let options: BackupOptions
    let paths: SnapdumpPaths
    let storages: StorageRegistry
    let lifecycle: VMLifecycle
    let dumpdir: String
    let log: TaskLog
    let interrupt: Interrupt
    let name: ArchiveName
    let startTime: Date
    let settings: BackupSettings
    let hook: HookScript?

    init(vmid: Int, options: BackupOptions, paths: SnapdumpPaths, storages: StorageRegistry,
         lifecycle: VMLifecycle, dumpdir: String, log: TaskLog, interrupt: Interrupt, name: ArchiveName, startTime: Date,
         settings: BackupSettings = BackupSettings(), hook: HookScript? = nil) {
        self.settings = settings
        self.hook = hook
        self.name = name
        self.startTime = startTime
        self.vmid = vmid
        self.options = options
        self.paths = paths
        self.storages = storages
        self.lifecycle = lifecycle
        self.dumpdir = dumpdir
        self.log = log
        self.interrupt = interrupt
    }

    /// What the guest is owed before we return: resume, thaw, restart.
    private var guestDebts: [(String, () async throws -> Void)] = []
    private var snapshots: [(plugin: any StoragePlugin, volumes: [VolumeID], name: String)] = []
    private var sources: [any BlockSource] = []
    private var overlays: [QCOW2Overlay] = []
    private var hookGuest: HookScript.Guest?

    /// Runs a guest phase of the hook script (no-op without `--script`).
    /// A hook can take long: a SIGINT/SIGTERM that came meanwhile stops the
    /// backup right after it (a safe point), not only at the next chunk read.
    private func runHook(_ phase: HookScript.Phase) throws {
        guard let hook, let g = hookGuest else { return }
        try hook.run(phase, guest: g, log: log)
        if phase != .backupAbort { try interrupt.check() }
    }

    func run() async -> BackupSummary {
        var summary = BackupSummary(vmid: vmid, ok: false, requestedMode: options.mode)
        let started = Date()
        log.info("Starting Backup of VM \(vmid) (qemu)")
        log.info("Backup started at \(TaskLog.timestamp())")
        var locked = false
        do {
            var config = try VMConfig.load(vmid: vmid, paths: paths)
            var staleLock = false
            if config.lock == "backup" {
                staleLock = true
                // We hold the global backup lock: no other backup can be running, so this lock is stale.
                log.warn("VM \(vmid) has a stale 'backup' lock left by an earlier run that was killed - removing it")
                try await lifecycle.unlock(vmid: vmid)
                config = try VMConfig.load(vmid: vmid, paths: paths)
            }
            if let lock = config.lock {
                throw BackupError("VM \(vmid) is locked (\(lock)); if nothing is using it, clear it with 'snapdump vm unlock \(vmid)'")
            }
            try BackupLifecycle.checkBeforeBackup(vmid: vmid, dumpdir: dumpdir, storage: options.dumpdir == nil ? options.storage : nil,
                                                  settings: settings)
            let storages = self.storages
            let disks = try await Blocking.run("resolve-disks") { [config] in try DiskPlan.resolve(config, storages: storages) }
            summary.storages = Array(Set(disks.map(\.volume.storage))).sorted()
            var status = try await lifecycle.status(vmid: vmid)
            let restartMarker = "\(paths.qemuRunDir)/\(vmid).restart-after-backup"
            if staleLock && status.state == .stopped && FileSystem.exists(restartMarker) {
                log.warn("VM \(vmid) was stopped for a stop-mode backup by the killed run that left the lock - starting it again")
                _ = try await lifecycle.start(vmid: vmid, disks: disks.map(\.resolvedDisk))
                status = try await lifecycle.status(vmid: vmid)
            }
            try? FileSystem.remove(restartMarker)
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
            try await Leftovers.remove(vmid: vmid, disks: disks, dumpdir: dumpdir, running: status.state != .stopped,
                                       lifecycle: lifecycle, log: log)
            log.info("status = \(status.state.rawValue)")
            if let name = config.name { log.info("VM Name: \(name)") }
            for d in disks {
                log.info("include disk '\(d.key)' '\(d.volume)' \(Formatting.bytes(d.size))")
            }
            summary.diskBytes = disks.reduce(0) { $0 + $1.size }

            // Decide the mode before touching the guest.
            var mode = options.mode
            var snapshotPlan: SnapshotPlan?
            if status.state == .stopped {
                mode = .stop
            } else if mode == .snapshot {
                let plan = SnapshotPlan.make(for: disks, running: true)
                if case .unsupported(let why) = plan {
                    switch options.snapshotFallback {
                    case .refuse:
                        throw BackupError("\(why); refusing (--snapshot-fallback refuse)")
                    case .suspend:
                        log.warn(why)
                        log.info("trying 'suspend' mode instead")
                        summary.fallbackReason = why
                        mode = .suspend
                    }
                } else {
                    snapshotPlan = plan
                }
            }
            summary.mode = mode
            log.info("backup mode: \(mode.rawValue)")
            if options.bwlimit > 0 { log.info("bandwidth limit: \(options.bwlimit) KiB/s") }

            try await lifecycle.lock(vmid: vmid, "backup")
            locked = true

            let start = startTime
            let archivePath = "\(dumpdir)/\(name.fileName)"
            hookGuest = HookScript.Guest(mode: mode, vmid: vmid, hostname: config.name ?? "VM \(vmid)", target: archivePath,
                                         logfile: "\(dumpdir)/\(name.logName)")
            try runHook(.backupStart)
            log.info("creating vzdump archive '\(archivePath)'")

            let downtime = DowntimeClock()
            let snapName = "\(Leftovers.snapshotPrefix)\(Int(start.timeIntervalSince1970))"
            switch mode {
            case .stop:
                if status.state != .stopped {
                    try runHook(.preStop)
                    let resolved = disks.map(\.resolvedDisk)
                    // Owed from the moment shutdown starts (it may stop the guest and then fail), and
                    // recorded on disk so the next run restarts the guest if this process is killed.
                    try FileSystem.createDirectory(paths.qemuRunDir)
                    try FileSystem.writeAtomically(restartMarker, "\(vmid)\n")
                    guestDebts.append(("start guest", { [lifecycle, vmid, log, downtime] in
                        // A failing hook fails the backup, but never keeps the guest down.
                        var hookError: (any Error)?
                        do { try self.runHook(.preRestart) } catch { hookError = error }
                        if try await lifecycle.status(vmid: vmid).state == .stopped {
                            log.info("resuming VM again after stop")
                            _ = try await lifecycle.start(vmid: vmid, disks: resolved, allowLock: "backup")
                        }
                        try? FileSystem.remove(restartMarker)
                        downtime.end()
                        do { try self.runHook(.postRestart) } catch { hookError = hookError ?? error }
                        if let hookError { throw hookError }
                    }))
                    downtime.begin("stopped")
                    log.info("stopping virtual guest")
                    try await shutdownUnlessInterrupted(timeout: .seconds(options.stopwait * 60))
                }
                for d in disks { sources.append(try d.plugin.openBlockSource(d.volume, snapshot: nil)) }
            case .suspend:
                if status.state == .running {
                    try runHook(.preStop)
                    log.info("suspending guest")
                    downtime.begin("paused")
                    try await lifecycle.suspend(vmid: vmid, allowLock: "backup")
                    guestDebts.append(("resume guest", { [lifecycle, vmid, log, downtime] in
                        var hookError: (any Error)?
                        do { try self.runHook(.preRestart) } catch { hookError = error }
                        try await lifecycle.resume(vmid: vmid, allowLock: "backup")
                        downtime.end()
                        log.info("resumed guest")
                        do { try self.runHook(.postRestart) } catch { hookError = hookError ?? error }
                        if let hookError { throw hookError }
                    }))
                }
                for d in disks { sources.append(try d.plugin.openBlockSource(d.volume, snapshot: nil)) }
            case .snapshot:
                guard case let .storage(groups, overlayDisks, needsPause)? = snapshotPlan else { throw BackupError("internal: no snapshot plan") }
                let overlay = overlayDisks.isEmpty ? nil : QCOW2Overlay(vmid: vmid, disks: overlayDisks, tag: snapName, log: log)
                try await takeSnapshots(config: config, status: status, groups: groups, overlay: overlay, needsPause: needsPause,
                                        name: snapName, downtime: downtime)
                let overlaySources = try overlay?.openSources() ?? [:]
                // Appended one by one, so settle() closes whatever was opened if a later one fails.
                sources = []
                do {
                    for d in disks {
                        sources.append(try overlaySources[d.key] ?? d.plugin.openBlockSource(d.volume, snapshot: snapName))
                    }
                } catch {
                    for s in overlaySources.values where !sources.contains(where: { $0 === s }) { try? s.close() }
                    throw error
                }
            }

            // The archive phase: in snapshot mode the guest runs meanwhile.
            // Reading, hashing and writing block: they run on their own threads, not the cooperative pool.
            let result = try await Blocking.run("archive") { [config, name, mode] in try self.writeArchive(config: config, disks: disks, path: archivePath, archiveName: name,
                                          mode: mode, downtime: downtime, started: start) }
            summary.archive = archivePath
            summary.archiveBytes = result.fileBytes
            summary.readBytes = result.readBytes
            try await settle()
            if let ms = downtime.milliseconds {
                summary.downtimeMs = ms
                summary.downtimeKind = downtime.kind
            }
            try BackupLifecycle.afterCommit(archivePath: archivePath, vmid: vmid, guestName: config.name,
                                            storage: options.dumpdir == nil ? options.storage : nil, settings: settings, log: log)
            try runHook(.backupEnd)
            summary.ok = true
        } catch {
            let message = "\(error)"
            log.error("Backup of VM \(vmid) failed - \(message)")
            summary.error = message
            if let archive = summary.archive {
                // Failed after the commit (restart, hook, signal): the archive is whole and retention may have
                // counted it already; deleting it could lose the newest backup.
                log.info("archive '\(archive)' is complete and is kept; only what came after it failed")
            }
            do { try await settle() } catch { log.error("cleanup failed: \(error)") }
            try? runHook(.backupAbort)
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

    /// Clean shutdown, waiting up to `stopwait`, then a hard stop (vzdump's stop
    /// mode). SIGINT/SIGTERM end the wait at once: the shutdown already asked
    /// for is finished hard, and the restart owed to the guest follows in settle().
    private func shutdownUnlessInterrupted(timeout: Duration) async throws {
        let lifecycle = self.lifecycle, vmid = self.vmid, interrupt = self.interrupt
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await lifecycle.shutdown(vmid: vmid, timeout: timeout, forceStop: true, allowLock: "backup")
            }
            group.addTask {
                while !Task.isCancelled && interrupt.received == nil {
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            _ = try await group.next()
            group.cancelAll()
            try await group.waitForAll()
        }
        try interrupt.check()
    }

    /// Freeze (agent) → pause (when needed) → snapshots → resume → thaw, with
    /// the guest's unavailability measured from the first step to the last.
    private func takeSnapshots(config: VMConfig, status: VMStatus, groups: [(plugin: any StoragePlugin, volumes: [VolumeID])],
                               overlay: QCOW2Overlay?, needsPause: Bool, name: String, downtime: DowntimeClock) async throws {
        var freeze = false
        if config.agentEnabled && status.state == .running {
            let agent = lifecycle.guestAgent(vmid: vmid)
            do {
                try await agent.ping(timeout: .seconds(3))
                freeze = true
            } catch {
                log.warn("guest agent of VM \(vmid) does not answer (\(error)) - skipping fs-freeze")
            }
        } else if !config.agentEnabled {
            log.info("skipping guest-agent 'fs-freeze': agent not enabled")
        }
        let pause = needsPause && status.state == .running
        try runHook(.preStop)
        downtime.begin(pause ? "paused for snapshot" : "frozen for snapshot")
        var frozen = 0
        do {
            if freeze {
                log.info("issuing guest-agent 'fs-freeze' command")
                let agent = lifecycle.guestAgent(vmid: vmid)
                guestDebts.append(("thaw guest filesystems", { [lifecycle, vmid, log] in
                    log.info("issuing guest-agent 'fs-thaw' command")
                    _ = try await lifecycle.guestAgent(vmid: vmid).fsfreezeThaw(timeout: .seconds(30))
                }))
                frozen = try await agent.fsfreezeFreeze(timeout: .seconds(60))
                log.info("guest agent froze \(frozen) filesystem(s)")
            }
            if pause {
                try await lifecycle.suspend(vmid: vmid, allowLock: "backup")
                guestDebts.append(("resume guest", { [lifecycle, vmid] in
                    try await lifecycle.resume(vmid: vmid, allowLock: "backup")
                }))
            }
            for g in groups {
                try interrupt.check()
                let plugin = g.plugin, volumes = g.volumes
                try await Blocking.run("snapshot") { try plugin.createSnapshot(volumes, name: name) }
                snapshots.append((g.plugin, g.volumes, name))
            }
            if let overlay {
                try interrupt.check()
                let qmp = try await lifecycle.connectQMP(vmid: vmid)
                do { try await overlay.create(qmp: qmp) } catch { await qmp.close(); throw error }
                // QEMU serves one QMP client at a time: close before resume/thaw connect.
                await qmp.close()
                overlays.append(overlay)
                log.info("froze \(overlay.disks.map(\.key).joined(separator: ", ")) with QEMU qcow2 overlays (one QMP transaction)")
            }
            try runHook(.preRestart)
            try await payGuestDebts()
        } catch {
            try? await payGuestDebts()
            downtime.end()
            throw error
        }
        downtime.end()
        try runHook(.postRestart)
        // Neither paused nor a filesystem frozen: the guest's I/O was never blocked.
        if !pause && frozen == 0 { downtime.reset() }
        if !groups.isEmpty {
            log.info("created storage snapshot '\(name)' of \(groups.map { "\($0.volumes.count) volume(s) on \($0.plugin.id)" }.joined(separator: ", "))")
        }
        if let ms = downtime.milliseconds {
            log.info("guest downtime: \(ms) ms (\(downtime.kind ?? ""))")
        } else {
            log.info("guest downtime: 0 ms (atomic snapshot; the guest was neither paused nor had a filesystem frozen)")
        }
    }

    private struct ArchiveResult {
        var fileBytes: UInt64
        var readBytes: UInt64
    }

    private func writeArchive(config: VMConfig, disks: [DiskPlan], path: String, archiveName: ArchiveName,
                              mode: BackupMode, downtime: DowntimeClock, started: Date) throws -> ArchiveResult {
        let datPath = "\(dumpdir)/\(archiveName.temporaryName)"
        let devices = disks.enumerated().map { VMADevice(id: UInt8($0.offset + 1), name: $0.element.deviceName, size: $0.element.size) }
        let conf = VMAConfigFile.render(config, disks: disks)
        var compression = options.compression
        if case let .zstd(level, workers) = compression {
            compression = .zstd(level: level, workers: Int32(BackupOptions.zstdWorkers(Int(workers), cores: ProcessInfo.processInfo.activeProcessorCount)))
        }
        let writer = try VMAWriter(path: datPath, ctime: Int64(started.timeIntervalSince1970), devices: devices,
                                   configs: [VMAConfigBlob(name: "qemu-server.conf", data: Array(conf.utf8))],
                                   reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: devices.count),
                                   compression: compression)
        do {
            let t0 = Date()
            let pipeline = ArchivePipeline(writer: writer, devices: zip(devices, sources).map { .init(id: $0.id, name: $0.name, source: $1) },
                                           bwlimitKiB: options.bwlimit, progress: ProgressReporter(log: log), interrupt: interrupt)
            let r = try pipeline.run()
            // In stop and suspend mode the guest is still down now; its downtime ends when settle() resumes it.
            let meta = SnapdumpMetadata(
                devices: devices.map { SnapdumpMetadata.Device(name: $0.name, size: $0.size, sha256: r.digests[$0.id]!) },
                mode: mode.rawValue, downtimeMs: downtime.projectedMilliseconds, startTime: Int64(started.timeIntervalSince1970),
                snapdumpVersion: SnapdumpVersion.current)
            try writer.finish(snapdumpJSON: try meta.encoded())
            try writer.commit(to: path)
            let secs = Date().timeIntervalSince(t0)
            let size = writer.statistics.fileBytes
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
        for s in sources { do { try s.close() } catch { firstError = firstError ?? error } }
        sources = []
        do { try await payGuestDebts() } catch { firstError = firstError ?? error }
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
        if let firstError { throw firstError }
    }

    /// Pays debts in reverse order (resume before thaw, as they were taken).
    private func payGuestDebts() async throws {
        var firstError: (any Error)?
        while let (what, pay) = guestDebts.popLast() {
            do { try await pay() } catch {
                log.error("cannot \(what) of VM \(vmid): \(error)")
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }
}

/// Measures how long the guest was unavailable.
final class DowntimeClock: @unchecked Sendable {
    // @unchecked: used from one task at a time.
    private(set) var kind: String?
    private var started: ContinuousClock.Instant?
    private var total: Duration?

    func begin(_ kind: String) {
        self.kind = kind
        started = .now
    }

    func end() {
        if let s = started { total = (total ?? .zero) + (ContinuousClock.now - s) }
        started = nil
    }

    func reset() {
        kind = nil
        started = nil
        total = nil
    }

    var milliseconds: Int64? { total.map(Formatting.milliseconds) }

    /// Downtime so far, counting a pause still in progress (for metadata written before resuming).
    var projectedMilliseconds: Int64? {
        if let s = started { return Formatting.milliseconds((total ?? .zero) + (ContinuousClock.now - s)) }
        return milliseconds
    }
}

public enum SnapdumpVersion {
    public static let current = "0.1.0"
}
