import Foundation
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// Moves a VM disk to another storage, Proxmox `qm move-disk` style.
///
/// Running VM: a volume of the same size is allocated on the target storage,
/// opened in QEMU with `blockdev-add` (a protocol node and a `raw`/`qcow2`
/// format node), and filled by `blockdev-mirror` (`sync: full`) while the
/// guest keeps writing; once the job is `READY`, `block-job-complete` pivots
/// the guest device onto the new node (`BLOCK_JOB_COMPLETED`). The old nodes
/// are then deleted from QEMU. Stopped VM: `qemu-img convert` into the new
/// volume. Either way the config's drive then names the new volume (its
/// options kept) and the old volume becomes the next free `unusedN`, or with
/// `deleteSource` is freed.
///
/// As Proxmox does, a VM with a `lock:` is refused and no `lock:` is written
/// during the move; instead the per-VM file lock is held throughout, so
/// start, stop, suspend, backup and a second move of the same VM wait for it
/// (and give up after 10 s). While a running VM's disk moves, its QMP socket
/// is busy (QEMU serves one client at a time).
///
/// On any failure before the pivot (a QMP error, a dead QEMU, SIGINT/SIGTERM
/// through `interruption`) the job is cancelled, the added nodes deleted, the
/// new volume freed, and the config is unchanged.
///
/// **Node names.** QEMU cannot rename a node, and the target node must exist
/// next to the source until the pivot, so a moved drive's format node is not
/// always `drive-<key>`: the target gets the first free name of
/// `drive-<key>`, `drive-<key>-move1`, `drive-<key>-move2`, … (protocol node:
/// the same plus `-file`). The first move of a freshly started VM yields
/// `drive-<key>-move1`; the next one `drive-<key>` again (the old nodes are
/// deleted after each pivot). After a restart the command line uses
/// `drive-<key>` again. Anything addressing a running VM's drive by node
/// name (snapshots, `block-commit`) must ask `DriveNodes.current(key:qmp:)`.
public struct DiskMove: Sendable {
    public struct Request: Sendable, Equatable {
        public var vmid: Int
        /// The drive key: `scsi0`, `virtio1`, …
        public var disk: String
        public var targetStorage: String
        /// nil: the source's format when the target holds it, else the target's default.
        public var format: VolumeFormat?
        /// Free the old volume after the move instead of keeping it as `unusedN`.
        public var deleteSource: Bool
        /// Copy rate limit in KiB/s (Proxmox's `bwlimit`); nil or 0: unlimited.
        public var bandwidthLimit: UInt64?

        public init(vmid: Int, disk: String, targetStorage: String, format: VolumeFormat? = nil, deleteSource: Bool = false,
                    bandwidthLimit: UInt64? = nil) {
            self.vmid = vmid
            self.disk = disk
            self.targetStorage = targetStorage
            self.format = format
            self.deleteSource = deleteSource
            self.bandwidthLimit = bandwidthLimit
        }

        /// The limit in bytes per second, or nil.
        var bytesPerSecond: UInt64? { bandwidthLimit.flatMap { $0 > 0 ? $0 * 1024 : nil } }
    }

    public struct Progress: Sendable, Equatable {
        public enum Phase: String, Sendable {
            /// Copying (mirror before READY, or qemu-img convert).
            case copying
            /// The mirror is in sync; completion is requested next.
            case ready
        }

        public var phase: Phase
        public var done: UInt64
        public var total: UInt64
        public var elapsed: Duration

        public var percent: Double { total == 0 ? 100 : min(100, Double(done) * 100 / Double(total)) }
    }

    public struct Outcome: Sendable {
        public var vmid: Int
        public var disk: String
        public var oldVolume: VolumeID
        public var newVolume: VolumeID
        public var format: VolumeFormat
        /// Whether the VM was running (mirror) or stopped (copy).
        public var online: Bool
        /// `unused0`… when the old volume was kept.
        public var unusedKey: String?
        public var deletedSource: Bool
        /// Running VM: the format node the guest device is now attached to.
        public var nodeName: String?
        public var size: UInt64
        public var duration: Duration
        /// Things that went wrong after the move succeeded (old volume not freed, …).
        public var warnings: [String]
    }

    public var lifecycle: VMLifecycle
    public var storages: StorageRegistry
    /// Informational lines (`drive mirror is starting for drive-scsi0`, …).
    public var log: @Sendable (String) -> Void
    /// Called as the copy advances (every `pollInterval` while mirroring).
    public var progress: @Sendable (Progress) -> Void
    /// Polled while waiting; an error returned here stops the move (cleanly).
    public var interruption: @Sendable () -> (any Error & Sendable)?
    public var directIOSupported: @Sendable (String) -> Bool
    public var qemuImg: String
    /// A copy that makes no progress for this long fails.
    public var stallTimeout: Duration
    public var pollInterval: Duration

    public init(lifecycle: VMLifecycle, storages: StorageRegistry,
                log: @escaping @Sendable (String) -> Void = { _ in },
                progress: @escaping @Sendable (Progress) -> Void = { _ in },
                interruption: @escaping @Sendable () -> (any Error & Sendable)? = { nil },
                directIOSupported: @escaping @Sendable (String) -> Bool = QEMUCommandLine.supportsDirectIO,
                qemuImg: String = "qemu-img", stallTimeout: Duration = .seconds(300), pollInterval: Duration = .milliseconds(500)) {
        self.lifecycle = lifecycle
        self.storages = storages
        self.log = log
        self.progress = progress
        self.interruption = interruption
        self.directIOSupported = directIOSupported
        self.qemuImg = qemuImg
        self.stallTimeout = stallTimeout
        self.pollInterval = pollInterval
    }

    /// Formats a storage type can hold, the default first.
    public static func formats(of def: StorageDefinition) -> [VolumeFormat] {
        switch def.type {
        case .zfspool, .rbd, .lvm, .lvmthin: return [.raw]
        case .repo: return []
        case .dir, .btrfs:
            let d = def.format ?? .raw
            return [d] + VolumeFormat.allCases.filter { $0 != d }
        }
    }

    /// The job id of the mirror for drive `key`.
    public static func jobID(_ key: String) -> String { "snapdump-move-\(key)" }

    // MARK: Plan

    /// What the checks found; the move itself works from this.
    struct Plan: Sendable {
        var config: VMConfig
        var disk: VMDisk
        var oldVolume: VolumeID
        var source: any StoragePlugin
        var sourcePath: String
        var sourceFormat: VolumeFormat
        var target: any StoragePlugin
        var format: VolumeFormat
    }

    /// Moves the disk; holds the VM's file lock throughout.
    public func run(_ request: Request) async throws -> Outcome {
        let started = ContinuousClock.now
        return try await lifecycle.withVMLock(request.vmid) {
            let plan = try makePlan(request)
            var outcome: Outcome
            if lifecycle.runningPID(request.vmid) != nil {
                outcome = try await moveOnline(request, plan)
            } else {
                outcome = try await moveOffline(request, plan)
            }
            outcome.duration = ContinuousClock.now - started
            return outcome
        }
    }

    /// Every check that needs no QEMU and changes nothing (Proxmox's order).
    func makePlan(_ r: Request) throws -> Plan {
        let vmid = r.vmid
        func invalid(_ m: String) -> GuestError { GuestError(vmid: vmid, .invalidArgument, "VM \(vmid): \(m)") }
        let config = try lifecycle.loadUnlocked(vmid, allowLock: nil)
        guard VMDisk.isDiskKey(r.disk) else {
            throw invalid("'\(r.disk)' is not a disk key (ide0-3, sata0-5, scsi0-30, virtio0-15)")
        }
        guard let disk = config.disk(r.disk) else { throw invalid("disk '\(r.disk)' does not exist") }
        if disk.isCDROM { throw invalid("\(r.disk) is a CD-ROM drive: you can't move a cdrom") }
        if disk.volid.hasPrefix("/") {
            throw invalid("\(r.disk) is the path \(disk.volid), not a storage volume: move-disk moves volumes ('storeid:volname')")
        }
        let oldVolume: VolumeID
        do { oldVolume = try VolumeID(parsing: disk.volid) } catch { throw invalid("\(r.disk): \(error)") }
        let source = try storage(vmid) { try storages.plugin(for: oldVolume) }
        let (sourcePath, sourceFormat) = try storage(vmid) { try source.path(of: oldVolume) }
        let target = try storage(vmid) { try storages.plugin(r.targetStorage) }
        guard target.definition.content.contains(.images) else {
            throw GuestError(vmid: vmid, .storage, "VM \(vmid): storage '\(r.targetStorage)' does not hold VM images (content: \(target.definition.content.map(\.rawValue).sorted().joined(separator: ",")))")
        }
        let formats = Self.formats(of: target.definition)
        let format: VolumeFormat
        if let f = r.format {
            guard formats.contains(f) else {
                throw GuestError(vmid: vmid, .storage, "VM \(vmid): storage '\(r.targetStorage)' (\(target.definition.type.rawValue)) cannot hold \(f.rawValue) volumes (only \(formats.map(\.rawValue).joined(separator: ", ")))")
            }
            format = f
        } else {
            format = formats.contains(sourceFormat) ? sourceFormat : formats[0]
        }
        if oldVolume.storage == r.targetStorage && format == sourceFormat {
            throw invalid("\(r.disk) is already on storage '\(r.targetStorage)' as \(format.rawValue): you can't move to the same storage with the same format")
        }
        if r.deleteSource && config.trailingSections.contains(disk.volid) {
            throw invalid("\(r.disk) (\(disk.volid)) is used by a VM snapshot: you can't move a disk with snapshots and delete the source")
        }
        return Plan(config: config, disk: disk, oldVolume: oldVolume, source: source, sourcePath: sourcePath,
                    sourceFormat: sourceFormat, target: target, format: format)
    }

    // MARK: Running VM: mirror

    private func moveOnline(_ r: Request, _ plan: Plan) async throws -> Outcome {
        let vmid = r.vmid, key = r.disk
        let qmp = try await lifecycle.connectQMP(vmid: vmid)
        let job = Self.jobID(key)
        var state = MirrorState()
        do {
            guard let current = try await DriveNodes.current(key: key, qmp: qmp) else {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QEMU has no block device for \(key) (query-block)")
            }
            if current.backingDepth > 0 {
                throw GuestError(vmid: vmid, .invalidArgument, "VM \(vmid): \(key) has a QEMU backing chain on node \(current.node) (a qcow2 overlay left by an interrupted backup?): merge it first")
            }
            state.sourceNode = current.node
            let size = current.virtualSize
            state.size = size
            let taken = try await DriveNodes.names(qmp: qmp)
            let node = DriveNodes.freeNodeName(for: key, taken: taken)
            let fileNode = DriveNodes.fileNodeName(for: node)
            state.targetNode = node
            try checkInterrupted(vmid)

            log("moving \(key) (\(plan.oldVolume), \(plan.sourceFormat.rawValue), \(Self.describe(size))) to storage '\(r.targetStorage)' as \(plan.format.rawValue); VM running: block mirror")
            let newVolume = try await allocate(vmid, plan, size: size)
            state.newVolume = newVolume
            let (newPath, _) = try storage(vmid) { try plan.target.path(of: newVolume) }
            let opts = DriveBlockOptions(disk: plan.disk, path: newPath, directIOSupported: directIOSupported)
            log("target node \(node) on \(newPath)\(opts.direct ? " (cache.direct)" : " (no O_DIRECT on this filesystem)")")

            try await qmpStep(vmid, "blockdev-add \(fileNode)") {
                _ = try await qmp.execute("blockdev-add", arguments: opts.fileBlockdev(node: fileNode, path: newPath))
            }
            state.added.append(fileNode)
            try await qmpStep(vmid, "blockdev-add \(node)") {
                _ = try await qmp.execute("blockdev-add", arguments: opts.formatBlockdev(node: node, format: plan.format.rawValue, fileNode: fileNode))
            }
            state.added.append(node)
            try checkInterrupted(vmid)

            let mark = await qmp.eventMark
            var mirror: [String: JSONValue] = [
                "job-id": .string(job), "device": .string(current.node), "target": .string(node), "sync": .string("full"),
            ]
            if let bps = r.bytesPerSecond { mirror["speed"] = .int(Int64(bps)) }
            try await qmpStep(vmid, "blockdev-mirror") {
                _ = try await qmp.execute("blockdev-mirror", arguments: mirror)
            }
            state.jobStarted = true
            log("drive mirror is starting for \(current.node) (job \(job))")
            try await waitForReady(vmid, qmp: qmp, job: job, after: mark, total: size)

            let mark2 = await qmp.eventMark
            state.completeRequested = true
            try await qmpStep(vmid, "block-job-complete") {
                _ = try await qmp.execute("block-job-complete", arguments: ["device": .string(job)])
            }
            let done = try await waitForJobEnd(vmid, qmp: qmp, job: job, after: mark2, timeout: stallTimeout)
            if let e = done.data["error"]?.stringValue {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): mirror job \(job) failed while completing: \(e)")
            }
            guard let now = try await DriveNodes.current(key: key, qmp: qmp), now.node == node else {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): the mirror of \(key) completed but the device is not on \(node)")
            }
            state.pivoted = true
            log("mirror complete: \(key) now writes to \(newVolume) (node \(node))")
        } catch {
            return try await recover(r, plan, qmp: qmp, state: state, error: error)
        }
        // The old nodes are unused now; deleting them closes the old image.
        var warnings: [String] = []
        for n in [state.sourceNode, DriveNodes.fileNodeName(for: state.sourceNode)] {
            do {
                _ = try await qmp.execute("blockdev-del", arguments: ["node-name": .string(n)], timeout: .seconds(10))
            } catch {
                warnings.append("cannot remove the old node \(n) from QEMU: \(error)")
            }
        }
        await qmp.close()
        var outcome = try await finish(r, plan, newVolume: state.newVolume!, size: state.size, online: true, sourceReleased: warnings.isEmpty, warnings: warnings)
        outcome.nodeName = state.targetNode
        return outcome
    }

    private struct MirrorState {
        var sourceNode = ""
        var targetNode = ""
        var newVolume: VolumeID?
        var size: UInt64 = 0
        var added: [String] = []
        var jobStarted = false
        var completeRequested = false
        var pivoted = false
    }

    /// Undoes a failed online move; when the pivot turns out to have
    /// happened after all, carries on as a success.
    private func recover(_ r: Request, _ plan: Plan, qmp: QMPClient, state: MirrorState, error: any Error) async throws -> Outcome {
        let vmid = r.vmid
        // Undo without being interrupted again: a fresh unstructured task.
        let cleanup = Task { () -> (pivoted: Bool, notes: [String]) in
            var notes: [String] = []
            var conn: QMPClient? = await qmp.isConnected ? qmp : nil
            if conn == nil, lifecycle.runningPID(vmid) != nil {
                conn = try? await QMPClient.connect(path: lifecycle.paths.qmpSocket(vmid), timeout: .seconds(5))
            }
            guard let conn else {
                if lifecycle.runningPID(vmid) != nil { notes.append("cannot reach QMP to undo the mirror") }
                return (false, notes)
            }
            let job = Self.jobID(r.disk)
            if state.completeRequested || state.pivoted,
               let now = try? await DriveNodes.current(key: r.disk, qmp: conn), now.node == state.targetNode {
                if conn !== qmp { await conn.close() }
                return (true, notes)
            }
            if state.jobStarted {
                let mark = await conn.eventMark
                let jobs = (try? await conn.execute("query-block-jobs", timeout: .seconds(5)))?.arrayValue ?? []
                if jobs.contains(where: { $0["device"]?.stringValue == job }) {
                    do {
                        _ = try await conn.execute("block-job-cancel", arguments: ["device": .string(job), "force": .bool(true)], timeout: .seconds(10))
                        _ = try? await conn.waitForEvent(after: mark, timeout: .seconds(30), description: "end of \(job)") {
                            ["BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED"].contains($0.name) && $0.data["device"]?.stringValue == job
                        }
                    } catch {
                        notes.append("cannot cancel mirror job \(job): \(error)")
                    }
                }
            }
            for n in state.added.reversed() {
                do {
                    _ = try await conn.execute("blockdev-del", arguments: ["node-name": .string(n)], timeout: .seconds(10))
                } catch {
                    notes.append("cannot remove node \(n): \(error)")
                }
            }
            if conn !== qmp { await conn.close() }
            return (false, notes)
        }
        let (pivoted, notes) = await cleanup.value
        if pivoted {
            log("the mirror completed despite: \(error)")
            var s = state
            s.pivoted = true
            await qmp.close()
            var outcome = try await finish(r, plan, newVolume: s.newVolume!, size: s.size, online: true, sourceReleased: false,
                                           warnings: ["the old nodes of \(r.disk) were left in QEMU"] + notes)
            outcome.nodeName = s.targetNode
            return outcome
        }
        await qmp.close()
        var notes2 = notes
        if let v = state.newVolume {
            if state.completeRequested && lifecycle.runningPID(vmid) == nil {
                // QEMU died after the pivot was requested: which copy is newer is unknown. Keep both.
                let key = try? await keepAsUnused(vmid, v)
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QEMU exited while the mirror of \(r.disk) was completing; the config still names \(plan.oldVolume), the copy \(v) is kept\(key.map { " as \($0)" } ?? ""): check which is newer", cause: Self.sendable(error))
            }
            do {
                try await Blocking.run("free-volume") { [plan] in try plan.target.free(v) }
            } catch {
                notes2.append("cannot free the new volume \(v): \(error)")
            }
        }
        throw Self.failure(vmid, "moving \(r.disk) to storage '\(r.targetStorage)'", error, notes: notes2)
    }

    /// Waits for `BLOCK_JOB_READY`, reporting progress from `query-block-jobs`.
    private func waitForReady(_ vmid: Int, qmp: QMPClient, job: String, after mark: Int, total: UInt64) async throws {
        let start = ContinuousClock.now
        var lastOffset: Int64 = -1
        var lastChange = ContinuousClock.now
        while true {
            try checkInterrupted(vmid)
            do {
                let e = try await qmp.waitForEvent(after: mark, timeout: pollInterval, description: "BLOCK_JOB_READY") {
                    ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"].contains($0.name) && $0.data["device"]?.stringValue == job
                }
                switch e.name {
                case "BLOCK_JOB_READY":
                    let len = UInt64(max(0, e.data["len"]?.intValue ?? Int64(total)))
                    progress(Progress(phase: .ready, done: len, total: len, elapsed: ContinuousClock.now - start))
                    log("mirror job \(job) is ready (\(Self.describe(len)) in sync) after \((ContinuousClock.now - start).shortDescription)")
                    return
                case "BLOCK_JOB_COMPLETED":
                    let why = e.data["error"]?.stringValue ?? "it ended before it was ready"
                    throw GuestError(vmid: vmid, .qmp, "VM \(vmid): mirror job \(job) failed: \(why)")
                default:
                    throw GuestError(vmid: vmid, .qmp, "VM \(vmid): mirror job \(job) was cancelled")
                }
            } catch QMPError.timeout {
                // No event yet: report progress.
            } catch let e as QMPError {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): lost QEMU while mirroring", cause: e)
            }
            let jobs = try await qmpStep(vmid, "query-block-jobs") { try await qmp.execute("query-block-jobs", timeout: .seconds(10)) }
            guard let j = jobs.arrayValue?.first(where: { $0["device"]?.stringValue == job }) else {
                // Ended between the event wait and the query: the next wait sees its event.
                continue
            }
            let offset = j["offset"]?.intValue ?? 0, len = j["len"]?.intValue ?? Int64(total)
            progress(Progress(phase: .copying, done: UInt64(max(0, offset)), total: UInt64(max(0, len)), elapsed: ContinuousClock.now - start))
            if offset != lastOffset {
                lastOffset = offset
                lastChange = ContinuousClock.now
            } else if ContinuousClock.now - lastChange > stallTimeout {
                throw GuestError(vmid: vmid, .timeout, "VM \(vmid): mirror job \(job) made no progress for \(stallTimeout.shortDescription) (at \(Self.describe(UInt64(max(0, offset)))) of \(Self.describe(UInt64(max(0, len)))))")
            }
        }
    }

    /// Waits for the job's `BLOCK_JOB_COMPLETED` (or `_CANCELLED`).
    private func waitForJobEnd(_ vmid: Int, qmp: QMPClient, job: String, after mark: Int, timeout: Duration) async throws -> QMPEvent {
        let deadline = ContinuousClock.now + timeout
        while true {
            // Interruption is not checked here: the pivot may already be under way.
            do {
                let e = try await qmp.waitForEvent(after: mark, timeout: pollInterval, description: "BLOCK_JOB_COMPLETED") {
                    ["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"].contains($0.name) && $0.data["device"]?.stringValue == job
                }
                if e.name == "BLOCK_JOB_CANCELLED" {
                    throw GuestError(vmid: vmid, .qmp, "VM \(vmid): mirror job \(job) was cancelled while completing")
                }
                return e
            } catch QMPError.timeout {
                if deadline.hasPassed {
                    throw GuestError(vmid: vmid, .timeout, "VM \(vmid): mirror job \(job) did not complete within \(timeout.shortDescription)")
                }
            } catch let e as QMPError {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): lost QEMU while completing the mirror", cause: e)
            }
        }
    }

    // MARK: Stopped VM: copy

    private func moveOffline(_ r: Request, _ plan: Plan) async throws -> Outcome {
        let vmid = r.vmid
        let size = try storage(vmid) { try plan.source.size(of: plan.oldVolume) }
        log("moving \(r.disk) (\(plan.oldVolume), \(plan.sourceFormat.rawValue), \(Self.describe(size))) to storage '\(r.targetStorage)' as \(plan.format.rawValue); VM stopped: qemu-img convert")
        let newVolume = try await allocate(vmid, plan, size: size)
        do {
            let (newPath, _) = try storage(vmid) { try plan.target.path(of: newVolume) }
            try await convert(vmid, from: plan.sourcePath, format: plan.sourceFormat, to: newPath, format: plan.format, size: size,
                              bytesPerSecond: r.bytesPerSecond)
            // The VM may not have been started meanwhile: start takes the same lock.
        } catch {
            var notes: [String] = []
            do {
                try await Blocking.run("free-volume") { [plan] in try plan.target.free(newVolume) }
            } catch let e {
                notes.append("cannot free the new volume \(newVolume): \(e)")
            }
            throw Self.failure(vmid, "copying \(r.disk) to storage '\(r.targetStorage)'", error, notes: notes)
        }
        return try await finish(r, plan, newVolume: newVolume, size: size, online: false, sourceReleased: true, warnings: [])
    }

    /// `qemu-img convert -p -n --target-is-zero` into the freshly allocated (zeroed) volume.
    private func convert(_ vmid: Int, from src: String, format sf: VolumeFormat, to dst: String, format df: VolumeFormat, size: UInt64,
                         bytesPerSecond: UInt64?) async throws {
        var argv = [qemuImg, "convert", "-p", "-n", "--target-is-zero", "-f", sf.rawValue, "-O", df.rawValue]
        if directIOSupported(dst) { argv += ["-t", "none"] }
        if let bytesPerSecond { argv += ["-r", String(bytesPerSecond)] }
        argv += [src, dst]
        let start = ContinuousClock.now
        let progress = self.progress
        let run = try ProgressCommand(argv) { percent in
            progress(Progress(phase: .copying, done: UInt64(Double(size) * percent / 100), total: size, elapsed: ContinuousClock.now - start))
        }
        while run.isRunning {
            if let e = interruption() {
                run.terminate()
                _ = try? await run.wait()
                throw GuestError(vmid: vmid, .interrupted, "VM \(vmid): copy interrupted", cause: e)
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        let (status, stderr) = try await run.wait()
        if status != 0, let e = interruption() {
            // The terminal's SIGINT reached qemu-img first.
            throw GuestError(vmid: vmid, .interrupted, "VM \(vmid): copy interrupted", cause: e)
        }
        guard status == 0 else {
            throw GuestError(vmid: vmid, .system, "VM \(vmid): copy failed",
                             cause: GuestError.Detail("\(argv.joined(separator: " ")) exited with \(status): \(stderr.trimmingCharacters(in: .whitespacesAndNewlines))"))
        }
        progress(Progress(phase: .copying, done: size, total: size, elapsed: ContinuousClock.now - start))
    }

    // MARK: Shared steps

    private func allocate(_ vmid: Int, _ plan: Plan, size: UInt64) async throws -> VolumeID {
        let target = plan.target, format = plan.format
        do {
            let v = try await Blocking.run("allocate") { try target.allocate(vmid: vmid, size: size, format: format) }
            log("allocated \(v)")
            return v
        } catch {
            throw GuestError(vmid: vmid, .storage, "VM \(vmid): cannot allocate \(Self.describe(size)) on storage '\(target.id)'", cause: Self.sendable(error))
        }
    }

    /// After the data is on the new volume: the config update, then the old volume.
    private func finish(_ r: Request, _ plan: Plan, newVolume: VolumeID, size: UInt64, online: Bool, sourceReleased: Bool, warnings: [String]) async throws -> Outcome {
        let vmid = r.vmid
        var warnings = warnings
        var config: VMConfig
        do {
            config = try VMConfig.load(vmid: vmid, paths: lifecycle.paths)
        } catch {
            config = plan.config
        }
        var disk = config.disk(r.disk) ?? plan.disk
        disk.volid = newVolume.description
        if disk.options["format"] != nil { disk.options["format"] = plan.format.rawValue }
        config.setDisk(disk)
        var unusedKey: String?
        let deleting = r.deleteSource && sourceReleased
        if !deleting { unusedKey = config.addUnused(plan.oldVolume.description) }
        do {
            try await lifecycle.save(config)
        } catch {
            throw GuestError(vmid: vmid, .system, online
                ? "VM \(vmid): \(r.disk) now runs on \(newVolume), but the config could not be updated (it still names \(plan.oldVolume)): set '\(r.disk): \(disk.value)' by hand before the next start"
                : "VM \(vmid): \(r.disk) was copied to \(newVolume), but the config could not be updated", cause: Self.sendable(error))
        }
        log("config: \(r.disk): \(disk.value)" + (unusedKey.map { ", \($0): \(plan.oldVolume)" } ?? ""))
        var deleted = false
        if r.deleteSource && !sourceReleased {
            warnings.append("not deleting \(plan.oldVolume): QEMU may still have it open; kept as \(unusedKey ?? "unused")")
        } else if deleting {
            do {
                try await Blocking.run("free-volume") { [plan] in try plan.source.free(plan.oldVolume) }
                deleted = true
                log("removed old volume \(plan.oldVolume)")
            } catch {
                let key = try? await keepAsUnused(vmid, plan.oldVolume)
                unusedKey = key
                warnings.append("cannot delete the old volume \(plan.oldVolume): \(error); kept\(key.map { " as \($0)" } ?? "")")
            }
        }
        for w in warnings { log("warning: \(w)") }
        return Outcome(vmid: vmid, disk: r.disk, oldVolume: plan.oldVolume, newVolume: newVolume, format: plan.format, online: online,
                       unusedKey: unusedKey, deletedSource: deleted, nodeName: nil, size: size, duration: .zero, warnings: warnings)
    }

    /// Records `volume` as the next free `unusedN` of the VM's config.
    private func keepAsUnused(_ vmid: Int, _ volume: VolumeID) async throws -> String? {
        var c = try VMConfig.load(vmid: vmid, paths: lifecycle.paths)
        let key = c.addUnused(volume.description)
        try await lifecycle.save(c)
        return key
    }

    private func checkInterrupted(_ vmid: Int) throws {
        if let e = interruption() { throw GuestError(vmid: vmid, .interrupted, "VM \(vmid): disk move interrupted", cause: e) }
    }

    private func qmpStep<T>(_ vmid: Int, _ what: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let e as QMPError {
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): \(what) failed", cause: e)
        }
    }

    private func storage<T>(_ vmid: Int, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as StorageError {
            throw GuestError(vmid: vmid, .storage, "VM \(vmid): \(e.message)")
        }
    }

    /// The error of a failed move: the original one, with what cleanup could not undo.
    static func failure(_ vmid: Int, _ what: String, _ error: any Error, notes: [String]) -> GuestError {
        var e: GuestError
        if let g = error as? GuestError {
            e = g
            e.vmid = vmid
        } else {
            e = GuestError(vmid: vmid, .system, "VM \(vmid): \(what) failed", cause: sendable(error))
        }
        if notes.isEmpty {
            e.message += " (nothing changed)"
        } else {
            e.message += " (config unchanged; cleanup incomplete: \(notes.joined(separator: "; ")))"
        }
        return e
    }

    /// Errors are Sendable in Swift 6; this names the conversion for `cause:`.
    static func sendable(_ error: any Error) -> any Error & Sendable { error }

    static func describe(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(bytes) B" : String(format: "%.1f %@", v, units[i])
    }
}

extension VMConfig {
    /// Adds `volid` as the lowest free `unusedN` (as Proxmox's
    /// `add_unused_volume`); returns the key, or the existing key when the
    /// volume is already listed.
    @discardableResult
    public mutating func addUnused(_ volid: String) -> String? {
        if let (n, _) = unused.first(where: { $0.value == volid }) { return "unused\(n)" }
        guard let n = (0...255).first(where: { unused[$0] == nil }) else { return nil }
        unused[n] = volid
        return "unused\(n)"
    }
}

/// Which node a running VM's drive is attached to. Node names change on a
/// live disk move (see `DiskMove`); ask here instead of assuming `drive-<key>`.
public enum DriveNodes {
    public struct Drive: Sendable, Equatable {
        /// The drive key (`scsi0`), QEMU's qdev id.
        public var key: String
        /// The top node the guest device uses: `drive-scsi0`, `drive-scsi0-move1`, or an overlay during a backup.
        public var node: String
        /// The image file of that node.
        public var file: String?
        public var format: String?
        public var virtualSize: UInt64
        /// Backing images below `node` (0 for a plain raw/qcow2 image).
        public var backingDepth: Int
    }

    /// The drive `key` from `query-block`, or nil when QEMU has no such device.
    public static func current(key: String, qmp: QMPClient) async throws -> Drive? {
        let blocks = try await qmp.execute("query-block", timeout: .seconds(10))
        for b in blocks.arrayValue ?? [] {
            guard let qdev = b["qdev"]?.stringValue, matches(qdev: qdev, key: key) || b["device"]?.stringValue == key,
                  let inserted = b["inserted"], let node = inserted["node-name"]?.stringValue else { continue }
            return Drive(key: key, node: node, file: inserted["file"]?.stringValue,
                         format: inserted["image"]?["format"]?.stringValue ?? inserted["drv"]?.stringValue,
                         virtualSize: UInt64(max(0, inserted["image"]?["virtual-size"]?.intValue ?? 0)),
                         backingDepth: Int(inserted["backing_file_depth"]?.intValue ?? 0))
        }
        return nil
    }

    /// The format node of drive `key` now: what `blockdev-snapshot-sync`'s
    /// `node-name` and `block-commit`'s `base-node` must name.
    public static func formatNode(key: String, qmp: QMPClient) async throws -> String? {
        try await current(key: key, qmp: qmp)?.node
    }

    /// Every named node (`query-named-block-nodes`).
    public static func names(qmp: QMPClient) async throws -> Set<String> {
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10))
        return Set((nodes.arrayValue ?? []).compactMap { $0["node-name"]?.stringValue })
    }

    /// `scsi0` for qdev `scsi0` (scsi-hd, ide-hd) or
    /// `/machine/peripheral/virtio0/virtio-backend` (virtio-blk).
    static func matches(qdev: String, key: String) -> Bool {
        qdev == key || qdev == "/machine/peripheral/\(key)" || qdev.hasPrefix("/machine/peripheral/\(key)/")
    }

    /// The first of `drive-<key>`, `drive-<key>-move1`, `-move2`, … not in
    /// `taken` (its `-file` protocol node free as well).
    public static func freeNodeName(for key: String, taken: Set<String>) -> String {
        let base = QEMUCommandLine.nodeName(for: key)
        var n = 0
        while true {
            let name = n == 0 ? base : "\(base)-move\(n)"
            if !taken.contains(name) && !taken.contains(fileNodeName(for: name)) { return name }
            n += 1
        }
    }

    /// The protocol node under format node `node`: `<node>-file`.
    public static func fileNodeName(for node: String) -> String { node + "-file" }
}

/// A child process whose stdout carries `qemu-img -p` progress
/// (`    (12.34/100%)\r`); stderr is kept for the error message.
private final class ProgressCommand: @unchecked Sendable {
    // @unchecked: `process` is only touched by the owning task; `stderrData`
    // is written by one reader thread before `group` is left and read after.
    private let process = Process()
    private let group = DispatchGroup()
    private var stderrData = Data()

    init(_ argv: [String], onPercent: @escaping @Sendable (Double) -> Void) throws {
        process.executableURL = URL(fileURLWithPath: Command.resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw GuestError.Detail("cannot start \(argv[0]): \(error)")
        }
        group.enter()
        Thread.detachNewThread {
            var pending = ""
            while true {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                pending += String(decoding: chunk, as: UTF8.self)
                let parts = pending.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\r" || $0 == "\n" })
                pending = String(parts.last ?? "")
                for p in parts.dropLast() {
                    let t = p.trimmingCharacters(in: .whitespaces)
                    if t.hasPrefix("("), let slash = t.firstIndex(of: "/"), let v = Double(t[t.index(after: t.startIndex)..<slash]) {
                        onPercent(v)
                    }
                }
            }
            self.group.leave()
        }
        group.enter()
        Thread.detachNewThread {
            let d = err.fileHandleForReading.readDataToEndOfFile()
            self.stderrData = d
            self.group.leave()
        }
    }

    var isRunning: Bool { process.isRunning }

    func terminate() { process.terminate() }

    /// Exit status and stderr, once the process ended and its pipes are drained.
    func wait() async throws -> (Int32, String) {
        let process = self.process, group = self.group
        try await Blocking.run("qemu-img") {
            process.waitUntilExit()
            group.wait()
        }
        return (process.terminationStatus, String(decoding: stderrData, as: UTF8.self))
    }
}
