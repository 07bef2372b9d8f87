import ArgumentParser

struct VMStart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start a VM (detached; survives this command).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        let c = try ctx.config(vm.vmid)
        let pid = try await ctx.lifecycle.start(vmid: vm.vmid, disks: try ctx.resolvedDisks(c))
        print("VM \(vm.vmid) started (pid \(pid))")
    }
}
