import ArgumentParser
import Guest

struct VMList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List VMs: vmid, name, status, disks.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let ctx = try VMContext(global)
        var records: [OutputRecord] = []
        for vmid in try VMConfig.list(paths: ctx.paths) {
            let c = try ctx.config(vmid)
            let st = try await ctx.lifecycle.status(vmid: vmid)
            var r = OutputRecord()
            r.add("vmid", "VMID", .of(vmid))
            r.add("name", "Name", .of(c.name), text: c.name ?? "")
            r.add("status", "Status", .string(st.state.rawValue), text: st.state.rawValue + (c.lock.map { " (lock: \($0))" } ?? ""))
            r.add("lock", nil, .of(c.lock))
            r.add("pid", nil, .of(st.pid))
            r.add("disks", "Disks", .list(c.disks.map { d in
                var dr = OutputRecord()
                dr.add("key", nil, .string(d.key))
                dr.add("volid", nil, .string("\(d.volid)"))
                return .record(dr)
            }), text: c.disks.map { "\($0.key)=\($0.volid)" }.joined(separator: " "))
            records.append(r)
        }
        Output.list(records, output.format, columns: ["VMID", "Name", "Status", "Disks"])
    }
}
