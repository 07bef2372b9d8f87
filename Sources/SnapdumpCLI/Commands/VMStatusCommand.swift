import ArgumentParser

struct VMStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "running, paused or stopped, with pid and uptime.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        let st = try await ctx.lifecycle.status(vmid: vm.vmid)
        var r = OutputRecord()
        r.add("vmid", nil, .of(vm.vmid))
        r.add("status", nil, .string(st.state.rawValue))
        r.add("pid", nil, .of(st.pid))
        r.add("uptime", nil, .of(st.uptime.map { Int64($0) }))
        r.add("lock", nil, .of(st.lock))
        Output.object(r, output.format) {
            var line = "status: \(st.state.rawValue)"
            if let pid = st.pid { line += "\npid: \(pid)" }
            if let up = st.uptime { line += "\nuptime: \(Int(up))" }
            if let lock = st.lock { line += "\nlock: \(lock)" }
            return line + "\n"
        }
    }
}
