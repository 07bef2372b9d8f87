#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Guest
import SnapdumpSystem
import Storage

/// What the guest is owed before a backup returns (resume, thaw, restart),
/// paid in reverse order of taking (resume before thaw). Every debt is
/// attempted even when an earlier one fails; the first failure is reported.
final class GuestDebts: @unchecked Sendable {
    // @unchecked: one backup task owns it.
    private var debts: [(what: String, pay: () async throws -> Void)] = []
    let vmid: Int
    let log: TaskLog

    init(vmid: Int, log: TaskLog) {
        self.vmid = vmid
        self.log = log
    }

    func owe(_ what: String, _ pay: @escaping () async throws -> Void) { debts.append((what, pay)) }

    func pay() async throws {
        var firstError: (any Error)?
        while let (what, pay) = debts.popLast() {
            do { try await pay() } catch {
                log.error("cannot \(what) of VM \(vmid): \(error)")
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }
}

/// What each mode's quiesce step works with.
struct GuestControl {
    let vmid: Int
    let lifecycle: VMLifecycle
    let log: TaskLog
    let interrupt: Interrupt
    let debts: GuestDebts
    let downtime: DowntimeClock
    /// Runs a guest phase of the hook script (a no-op without one).
    let hook: (HookScript.Phase) async throws -> Void
    /// Whether a hook script runs at all (it may call `vm status`, which needs the QMP socket).
    let hasHook: Bool

    /// pre-restart, `restore`, post-restart: a failing hook fails the backup but never keeps the guest down.
    func restoreGuest(_ restore: () async throws -> Void) async throws {
        var hookError: (any Error)?
        do { try await hook(.preRestart) } catch { hookError = error }
        try await restore()
        downtime.end()
        do { try await hook(.postRestart) } catch { hookError = hookError ?? error }
        if let hookError { throw hookError }
    }
}

/// Stop mode: a clean shutdown (waiting `stopwait`, then a hard stop), the
/// restart owed from the moment shutdown starts and recorded on disk so the
/// next run restarts the guest if this process is killed. The restart uses
/// every drive the guest starts with (`DrivePurpose.start`), not only the
/// backed-up ones.
struct StopQuiesce {
    let guest: GuestControl
    let stopwait: Duration
    let startDrives: [ResolvedDisk]
    let restartMarker: String

    func run() async throws {
        let g = guest
        try await g.hook(.preStop)
        try FileSystem.createDirectory((restartMarker as NSString).deletingLastPathComponent)
        try FileSystem.writeAtomically(restartMarker, "\(g.vmid)\n")
        let startDrives = self.startDrives, marker = restartMarker
        g.debts.owe("start guest") {
            try await g.restoreGuest {
                if try await g.lifecycle.status(vmid: g.vmid).state == .stopped {
                    g.log.info("resuming VM again after stop")
                    _ = try await g.lifecycle.start(vmid: g.vmid, disks: startDrives, allowLock: "backup")
                }
                try? FileSystem.remove(marker)
            }
        }
        g.downtime.begin("stopped")
        g.log.info("stopping virtual guest")
        try await shutdownUnlessInterrupted()
    }

    /// SIGINT/SIGTERM end the wait at once: the shutdown already asked for is
    /// finished hard, and the restart owed to the guest follows.
    private func shutdownUnlessInterrupted() async throws {
        let lifecycle = guest.lifecycle, vmid = guest.vmid, interrupt = guest.interrupt, timeout = stopwait
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
}

/// Suspend mode: the guest is paused while its volumes are read.
struct SuspendQuiesce {
    let guest: GuestControl

    func run() async throws {
        let g = guest
        try await g.hook(.preStop)
        g.log.info("suspending guest")
        g.downtime.begin("paused")
        try await g.lifecycle.suspend(vmid: g.vmid, allowLock: "backup")
        g.debts.owe("resume guest") {
            try await g.restoreGuest {
                try await g.lifecycle.resume(vmid: g.vmid, allowLock: "backup")
                g.log.info("resumed guest")
            }
        }
    }
}

/// Snapshot mode's window: fs-freeze (guest agent) → pause (when the plan
/// needs it) → storage snapshots, QEMU overlays or the start of fleecing →
/// resume → fs-thaw, with the guest's unavailability measured from the first
/// step to the last.
///
/// The guest-agent connection is opened and synced (ping) before the window
/// and serves freeze and thaw; one QMP session serves pause, overlays,
/// fleecing and resume — no connect falls inside the measured downtime. QEMU
/// serves one QMP client at a time, so the session is let go while a hook
/// script runs (a hook may ask `snapdump vm status`). Fleecing keeps the
/// session after the window, for its watch (threshold, I/O error, pause
/// events) during the archive; it too lets go while a hook runs.
final class FreezeWindow {
    let guest: GuestControl
    let config: VMConfig
    let state: VMStatus.State
    let plan: SnapshotPlan
    let name: String
    /// Snapshots taken, for the caller to delete after the archive is read.
    private(set) var snapshots: [(plugin: any StoragePlugin, volumes: [VolumeID], name: String)] = []
    /// The overlays made, for the caller to merge back after the archive is read.
    private(set) var overlay: QCOW2Overlay?
    /// Fleecing of the plan's `.fleecing` disks (made by the caller, which reads and removes it).
    let fleecing: FleecingBackup?
    /// A dirty bitmap (held in QEMU only) to start on every overlaid image in the overlays' transaction (`QCOW2Incremental`).
    let bitmap: String?
    private var qmp: QMPClient?

    init(guest: GuestControl, config: VMConfig, state: VMStatus.State, plan: SnapshotPlan, name: String,
         fleecing: FleecingBackup? = nil, bitmap: String? = nil) {
        self.bitmap = bitmap
        self.guest = guest
        self.config = config
        self.state = state
        self.plan = plan
        self.name = name
        self.fleecing = fleecing
    }

    private func session() async throws -> QMPClient {
        if let qmp { return qmp }
        let q = try await guest.lifecycle.connectQMP(vmid: guest.vmid)
        qmp = q
        return q
    }

    private func release() async {
        await qmp?.close()
        qmp = nil
    }

    private func hook(_ phase: HookScript.Phase) async throws {
        guard guest.hasHook else { return }
        await release()
        await fleecing?.letGo()
        try await guest.hook(phase)
        try await fleecing?.watchAgain()
    }

    /// The agent, connected and synced, when the guest's filesystems are to be frozen; nil otherwise (logged why).
    private func openAgent() async -> GuestAgentClient? {
        let g = guest
        guard config.agentEnabled else {
            g.log.info("skipping guest-agent 'fs-freeze': agent not enabled")
            return nil
        }
        guard state == .running else { return nil }
        guard config.agentFreezeOnBackup else {
            g.log.info("skipping guest-agent 'fs-freeze': disabled in VM options (freeze-fs-on-backup=0)")
            return nil
        }
        let agent = g.lifecycle.guestAgent(vmid: g.vmid)
        do {
            try await agent.ping(timeout: .seconds(3))
            return agent
        } catch {
            await agent.close()
            g.log.warn("guest agent of VM \(g.vmid) does not answer (\(error)) - skipping fs-freeze")
            return nil
        }
    }

    /// Each storage's snapshot made ready while the guest still runs: the checks, its
    /// connections, and a flush of what the host caches of the disks (syncfs), so the snapshot
    /// inside the window has nothing left to write (a btrfs snapshot commits its transaction;
    /// issue 15 measured 2.2 s windows without this). A failed flush only costs window time.
    private func prepareSnapshots() async throws -> [PreparedSnapshot] {
        let groups = plan.storageGroups, name = self.name, log = guest.log
        // QEMU flushes an overlaid or fleeced image inside its transaction: its host pages too, now.
        let overlaid = (plan.overlayDisks + plan.fleecingDisks).map(\.path)
        let t0 = ContinuousClock.now
        let (prepared, overlayWarnings) = try await Blocking.run("prepare-snapshots") {
            let overlayWarnings = PreparedSnapshot.flushHostCaches(overlaid)
            var done: [PreparedSnapshot] = []
            do {
                for g in groups { done.append(try g.plugin.prepareSnapshot(g.volumes, name: name)) }
            } catch {
                for p in done { p.release() }
                throw error
            }
            return (done, overlayWarnings)
        }
        for w in overlayWarnings + prepared.flatMap(\.warnings) { log.warn(w) }
        log.info("flushed host caches of \(plan.disks.count) disk(s) before the freeze (\(Formatting.milliseconds(ContinuousClock.now - t0)) ms)")
        return prepared
    }

    func run() async throws {
        let agent = await openAgent()
        do {
            try await window(agent: agent)
        } catch {
            await release()
            await agent?.close()
            throw error
        }
        await release()
        await agent?.close()
    }

    private func window(agent: GuestAgentClient?) async throws {
        let g = guest
        let pause = plan.needsPause && state == .running
        let groups = plan.storageGroups
        let overlayDisks = plan.overlayDisks
        // The images first: qemu-img takes a while, and only QEMU's side belongs in the window.
        if let fleecing { try await Blocking.run("fleecing-images") { try fleecing.prepare() } }
        try await hook(.preStop)
        let prepared = try await prepareSnapshots()
        defer { for p in prepared { p.release() } }
        if pause || !overlayDisks.isEmpty || fleecing != nil { _ = try await session() }
        // The overlays' files and nodes made now, while the guest runs: inside the window only their transaction.
        var overlays: QCOW2Overlay?
        if !overlayDisks.isEmpty {
            let o = QCOW2Overlay(vmid: g.vmid, disks: overlayDisks.map { ($0.key, $0.path) }, tag: name, log: g.log.overlayLog)
            try await o.prepare(qmp: try await session())
            overlays = o
        }
        g.downtime.begin(pause ? "paused for snapshot" : fleecing != nil ? "frozen for fleecing" : "frozen for snapshot")
        var frozen = 0
        let debts = GuestDebts(vmid: g.vmid, log: g.log)
        do {
            if let agent {
                g.log.info("issuing guest-agent 'fs-freeze' command")
                debts.owe("thaw guest filesystems") { [g] in
                    g.log.info("issuing guest-agent 'fs-thaw' command")
                    do {
                        _ = try await g.downtime.measure("fs-thaw") { try await agent.fsfreezeThaw(timeout: .seconds(30)) }
                    } catch {
                        // The connection may be what broke: one more try on a fresh one (the agent serves one client).
                        await agent.close()
                        let fresh = g.lifecycle.guestAgent(vmid: g.vmid)
                        do { _ = try await fresh.fsfreezeThaw(timeout: .seconds(30)) } catch { await fresh.close(); throw error }
                        await fresh.close()
                    }
                }
                frozen = try await g.downtime.measure("fs-freeze") { try await agent.fsfreezeFreeze(timeout: .seconds(60)) }
                g.log.info("guest agent froze \(frozen) filesystem(s)")
            }
            if pause {
                _ = try await g.downtime.measure("pause") { try await session().execute("stop", timeout: .seconds(10)) }
                debts.owe("resume guest") { [self] in
                    do {
                        _ = try await g.downtime.measure("resume") { try await session().execute("cont", timeout: .seconds(10)) }
                    } catch {
                        await release()
                        try await g.lifecycle.resume(vmid: g.vmid, allowLock: "backup")
                    }
                }
            }
            for (group, snapshot) in zip(groups, prepared) {
                try g.interrupt.check()
                try await g.downtime.measure("snapshot") {
                    try await Blocking.run("snapshot") { try snapshot.take() }
                }
                snapshots.append((group.plugin, group.volumes, name))
            }
            if let o = overlays {
                try g.interrupt.check()
                let qmp = try await session()
                // Not persistent: QEMU would store a persistent one when the snapshot reopens the image read-only, inside the window.
                let bitmaps = bitmap.map { name in o.disks.map { QEMUDirtyBitmaps.addAction(node: $0.node, name: name, persistent: false) } } ?? []
                try await g.downtime.measure("overlay") { try await o.create(qmp: qmp, extraActions: bitmaps) }
                overlay = o
                g.log.info("froze \(o.disks.map(\.key).joined(separator: ", ")) with QEMU qcow2 overlays (one QMP transaction"
                           + (bitmap.map { ", dirty bitmap '\($0)' started" } ?? "") + ")")
            }
            if let fleecing {
                try g.interrupt.check()
                let qmp = try await session()
                // The session is the fleecing's from here on, whatever happens (its watch, then its teardown).
                self.qmp = nil
                try await g.downtime.measure("fleecing") { try await fleecing.start(qmp: qmp, lifecycle: g.lifecycle) }
                g.log.info("started fleecing of \(fleecing.disks.map(\.key).joined(separator: ", ")) (one QMP transaction)")
            }
            try await debts.pay()
        } catch {
            try? await debts.pay()
            g.downtime.end()
            // The window never came for the prepared overlays: their nodes and files go.
            if let o = overlays, overlay == nil, let qmp = try? await session() { await o.discard(qmp: qmp) }
            throw error
        }
        g.downtime.end()
        await release()
        // After the window, as Proxmox runs it for a VM (its freeze is inside the archive step):
        // a hook process never adds to the guest's downtime.
        try await hook(.preRestart)
        try await hook(.postRestart)
        // How long the snapshot calls took: with no pause, at most what a guest write waited for
        // one (an rbd group snapshot holds the images' locks), so it is logged even then.
        let snapshotMs = g.downtime.parts.filter { $0.name == "snapshot" }.reduce(Int64(0)) { $0 + $1.ms }
        // Neither paused nor a filesystem frozen: the guest's I/O was never blocked.
        if !pause && frozen == 0 { g.downtime.reset(none: fleecing != nil ? "fleecing" : "atomic snapshot") }
        if !groups.isEmpty {
            g.log.info("created storage snapshot '\(name)' of \(groups.map { "\($0.volumes.count) volume(s) on \($0.plugin.id)" }.joined(separator: ", ")) in \(snapshotMs) ms")
        }
        if let line = g.downtime.summaryLine {
            g.log.info(line)
        } else {
            g.log.info("guest downtime: 0 ms (\(fleecing != nil ? "fleecing" : "atomic snapshot"); the guest was neither paused nor had a filesystem frozen)")
        }
    }
}

extension TaskLog {
    /// Where `QCOW2Overlay` reports merges (info) and failures (error).
    var overlayLog: @Sendable (Bool, String) -> Void {
        { [self] isError, message in isError ? self.error(message) : self.info(message) }
    }
}
