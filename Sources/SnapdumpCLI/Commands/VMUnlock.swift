import ArgumentParser
import Foundation
import Guest
import SnapdumpSystem

struct VMUnlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unlock", abstract: "Remove a stale lock from a VM's config.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        let config = try ctx.config(vm.vmid)
        if config.lock == "backup" && ctx.lifecycle.runningPID(vm.vmid) != nil {
            try await removeFleecingLeftovers(ctx)
        }
        try await ctx.lifecycle.unlock(vmid: vm.vmid)
    }

    /// A backup killed while fleecing left a job, an export and an image inside
    /// QEMU; they go with the stale lock — unless a backup still runs (it holds
    /// the global backup lock), whose fleecing is not stale.
    private func removeFleecingLeftovers(_ ctx: VMContext) async throws {
        let globalLock: FileLock
        do { globalLock = try FileLock.acquire(ctx.paths.backupLock, timeout: 0) } catch {
            FileHandle.standardError.write(Data("WARN: a backup is running: QEMU's fleecing state of VM \(vm.vmid) is left alone\n".utf8))
            return
        }
        defer { globalLock.unlock() }
        let qmp = try await ctx.lifecycle.connectQMP(vmid: vm.vmid)
        let removed: [String]
        do { removed = try await Fleecing.removeLeftovers(qmp: qmp, vmid: vm.vmid) } catch { await qmp.close(); throw error }
        await qmp.close()
        for what in removed {
            FileHandle.standardError.write(Data("WARN: removed \(what), left by a backup that was killed\n".utf8))
        }
    }
}
