import ArgumentParser

struct VMSuspend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "suspend", abstract: "Pause a VM (QMP stop).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        try await ctx.lifecycle.suspend(vmid: vm.vmid)
    }
}
