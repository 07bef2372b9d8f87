import ArgumentParser
import Guest

struct VMList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List VMs: vmid, name, status, disks.")

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let ctx = try VMContext(global)
        var rows: [[String]] = []
        for vmid in try VMConfig.list(paths: ctx.paths) {
            let c = try ctx.config(vmid)
            let st = try await ctx.lifecycle.status(vmid: vmid)
            rows.append(["\(vmid)", c.name ?? "", st.state.rawValue + (c.lock.map { " (lock: \($0))" } ?? ""),
                         c.disks.map { "\($0.key)=\($0.volid)" }.joined(separator: " ")])
        }
        print(Table.render(["VMID", "Name", "Status", "Disks"], rows))
    }
}
