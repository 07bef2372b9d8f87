import ArgumentParser

struct VMUnlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unlock", abstract: "Remove a stale lock from a VM's config.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        try await ctx.lifecycle.unlock(vmid: vm.vmid)
    }
}
