import ArgumentParser

struct VMResume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM (QMP cont).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        try await ctx.lifecycle.resume(vmid: vm.vmid)
    }
}
