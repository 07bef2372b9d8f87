import ArgumentParser

struct VMShutdown: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shutdown", abstract: "ACPI power-down, then wait for the guest to stop.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument
    @Option(help: "Seconds to wait.") var timeout: Int = 60
    @Flag(name: .customLong("force-stop"), help: "Stop hard when the timeout passes.") var forceStop = false

    func run() async throws {
        let ctx = try VMContext(global)
        _ = try ctx.config(vm.vmid)
        try await ctx.lifecycle.shutdown(vmid: vm.vmid, timeout: .seconds(timeout), forceStop: forceStop)
    }
}
