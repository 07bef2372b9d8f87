import ArgumentParser

struct VMConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Print a VM's configuration.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument
    @OptionGroup var output: OutputOptions

    func run() throws {
        let text = try VMContext(global).config(vm.vmid).serialized()
        // As `qm config --output-format json`: the config's keys and their values, in file order.
        var r = OutputRecord()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            r.add(String(line[..<colon]), nil, .string(line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        Output.object(r, output.format) { text }
    }
}
