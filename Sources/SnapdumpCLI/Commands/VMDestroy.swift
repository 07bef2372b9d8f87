import ArgumentParser
import Foundation
import SnapdumpSystem
import Scheduler
import Storage

struct VMDestroy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "destroy", abstract: "Remove a VM and its disks (refused while running or locked).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument
    @Flag(help: "Also remove the VMID from backup jobs (jobs.cfg); a job left without guests is removed.") var purge = false

    func run() async throws {
        let ctx = try VMContext(global)
        let c = try ctx.config(vm.vmid)
        if let lock = c.lock { throw GuestCLIError("VM \(vm.vmid) is locked (\(lock))") }
        let st = try await ctx.lifecycle.status(vmid: vm.vmid)
        guard st.state == .stopped else { throw GuestCLIError("VM \(vm.vmid) is \(st.state.rawValue): stop it first") }
        // Free owned disks first; the config goes last so a failure leaves the VM describable.
        let owned = (c.disks.map(\.volid) + c.unused.values.sorted()).compactMap { try? VolumeID(parsing: $0) }
            .filter { $0.vmid == vm.vmid }
        for vol in owned {
            do {
                let plugin = try ctx.storages.plugin(for: vol)
                // The base snapshots incremental repository backups keep go with the disk (other snapshots still refuse).
                try BaseSnapshot.free(vol, on: plugin)
            } catch let e as StorageError where e.code == .notFound {
                FileHandle.standardError.write(Data("warning: \(vol) already gone\n".utf8))
            }
        }
        if purge {
            let changes = try JobsConfig.edit(paths: ctx.paths) { try $0.purge(vmid: vm.vmid) }
            for c in changes { print(c) }
        }
        try FileSystem.remove(ctx.paths.vmConfig(vm.vmid))
        _ = try? ctx.lifecycle.cleanupStale(vmid: vm.vmid)
    }
}
