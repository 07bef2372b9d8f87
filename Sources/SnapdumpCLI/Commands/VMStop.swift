import ArgumentParser

struct VMStop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop a VM hard (QMP quit, then kill).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        try await ctx.lifecycle.stop(vmid: vm.vmid)
    }
}
