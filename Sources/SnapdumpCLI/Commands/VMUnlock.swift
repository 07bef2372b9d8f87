import ArgumentParser
import Foundation
import Backup
import Guest
import SnapdumpSystem
import Storage

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
        if config.lock == "backup" { await removeBackupLeftovers(ctx, config) }
        try await ctx.lifecycle.unlock(vmid: vm.vmid)
    }

    /// A backup killed after its snapshot left it (`snapdump-…`, on rbd a group snapshot and
    /// its group), and a repository backup a base snapshot no finished backup records; they
    /// go with the stale lock, unless a backup still runs (those snapshots are its own).
    private func removeBackupLeftovers(_ ctx: VMContext, _ config: VMConfig) async {
        let globalLock: FileLock
        do { globalLock = try FileLock.acquire(ctx.paths.backupLock, timeout: 0) } catch {
            FileHandle.standardError.write(Data("WARN: a backup is running: snapshots of VM \(vm.vmid) are left alone\n".utf8))
            return
        }
        defer { globalLock.unlock() }
        do {
            for what in try Leftovers.removeStorageSnapshots(config: config, storages: ctx.storages) {
                FileHandle.standardError.write(Data("WARN: removed \(what), left by a backup that was killed\n".utf8))
            }
        } catch {
            // Not fatal: the next backup of the guest removes them as well.
            FileHandle.standardError.write(Data("WARN: snapshots of VM \(vm.vmid) left alone: \(error)\n".utf8))
        }
        do {
            for what in try await UnrecordedBases.remove(vmid: vm.vmid, config: config, storages: ctx.storages, paths: ctx.paths) {
                FileHandle.standardError.write(Data("WARN: removed \(what), left by a backup that was killed\n".utf8))
            }
        } catch {
            // Not fatal: the next backup of the guest removes them as well.
            FileHandle.standardError.write(Data("WARN: base snapshots of VM \(vm.vmid) left alone: \(error)\n".utf8))
        }
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
        // Thin-LV images are freed by their storage (which one the killed run used is not recorded).
        for def in ctx.storages.config.storages where def.type == .lvmthin && !def.disabled {
            let plugin = StorageRegistry.plugin(for: def)
            do {
                for image in try plugin.fleecingImages(vmid: vm.vmid) {
                    try plugin.freeFleecingImage(image)
                    FileHandle.standardError.write(Data("WARN: removed fleecing image \(image.path), left by a backup that was killed\n".utf8))
                }
            } catch {
                FileHandle.standardError.write(Data("WARN: fleecing images of VM \(vm.vmid) on storage '\(def.id)' left alone: \(error)\n".utf8))
            }
        }
    }
}
