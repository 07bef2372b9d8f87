import ArgumentParser

struct VMStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "running, paused or stopped, with pid and uptime.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        let st = try await ctx.lifecycle.status(vmid: vm.vmid)
        var line = "status: \(st.state.rawValue)"
        if let pid = st.pid { line += "\npid: \(pid)" }
        if let up = st.uptime { line += "\nuptime: \(Int(up))" }
        if let lock = st.lock { line += "\nlock: \(lock)" }
        print(line)
    }
}
