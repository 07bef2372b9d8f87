import ArgumentParser
import Backup
import Foundation
import Guest
import Storage

/// `snapdump vm move-disk <vmid> <disk> <storage>`: Proxmox's `qm move-disk`.
struct VMMoveDisk: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move-disk",
        abstract: "Move a VM disk to another storage (live, by block mirror, while the VM runs).",
        discussion: """
            The old volume is kept as the next free unusedN unless --delete. A locked VM is refused; \
            the VM's other commands wait while the disk moves.
            """
    )

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VMID.") var vmid: Int
    @Argument(help: "Disk key (scsi0, virtio0, …).") var disk: String
    @Argument(help: "Target storage id.") var storage: String
    @Option(help: "Target format: raw or qcow2 (default: the disk's own format if the target holds it).") var format: String?
    @Flag(help: "Delete the old volume after the move instead of keeping it as unusedN.") var delete = false
    @Option(help: "I/O bandwidth limit in KiB/s (0: unlimited).") var bwlimit: UInt64?

    func validate() throws {
        if let format, VolumeFormat(rawValue: format) == nil {
            throw ValidationError("invalid --format '\(format)': raw or qcow2")
        }
    }

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vmid)
        let interrupt = Interrupt()
        interrupt.install()
        let view = MoveProgressView(disk: disk, terminal: isatty(1) == 1)
        let mover = DiskMove(
            lifecycle: ctx.lifecycle, storages: ctx.storages,
            log: { view.line($0) },
            progress: { view.update($0) },
            interruption: { interrupt.received.map { GuestError.Detail("interrupted by \($0 == SIGINT ? "SIGINT" : $0 == SIGTERM ? "SIGTERM" : "signal \($0)")") } }
        )
        let request = DiskMove.Request(vmid: vmid, disk: disk, targetStorage: storage,
                                       format: format.flatMap(VolumeFormat.init(rawValue:)), deleteSource: delete,
                                       bandwidthLimit: bwlimit)
        let o = try await mover.run(request)
        let kept = o.unusedKey.map { ", old volume kept as \($0)" } ?? (o.deletedSource ? ", old volume deleted" : "")
        view.line("moved \(o.disk) of VM \(o.vmid) to \(o.newVolume) in \(MoveProgressView.seconds(o.duration))\(kept)")
    }
}

/// Progress of a disk move: a live line on a terminal, otherwise a line per
/// 10 % (as Proxmox's task log: `drive-scsi0: transferred 6.4 MiB of 64.0 MiB (10.00%) in 1s`).
final class MoveProgressView: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock` (callbacks come from QMP polling and qemu-img reader threads).
    private let lock = NSLock()
    private let prefix: String
    private let terminal: Bool
    private var nextStep = 0.0
    private var liveLine = false

    init(disk: String, terminal: Bool) {
        self.prefix = "drive-\(disk)"
        self.terminal = terminal
    }

    func line(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        write((liveLine ? "\r\u{1B}[K" : "") + text + "\n")
        liveLine = false
    }

    func update(_ p: DiskMove.Progress) {
        lock.lock()
        defer { lock.unlock() }
        let text = String(format: "%@: transferred %@ of %@ (%.2f%%) in %@%@", prefix, Self.bytes(p.done), Self.bytes(p.total), p.percent,
                          Self.seconds(p.elapsed), p.phase == .ready ? ", ready" : "")
        if terminal {
            write("\r\u{1B}[K" + text + (p.phase == .ready ? "\n" : ""))
            liveLine = p.phase != .ready
        } else if p.percent >= nextStep || p.phase == .ready {
            if p.phase == .ready && nextStep > 100 { return }
            write(text + "\n")
            while nextStep <= p.percent { nextStep += 10 }
            if p.phase == .ready { nextStep = 101 }
        }
    }

    private func write(_ s: String) {
        FileHandle.standardOutput.write(Data(s.utf8))
    }

    static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    static func seconds(_ d: Duration) -> String {
        let (s, atto) = d.components
        let t = Double(s) + Double(atto) / 1e18
        return t < 10 ? String(format: "%.1fs", t) : "\(Int(t.rounded()))s"
    }
}
