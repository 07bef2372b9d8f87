import ArgumentParser

struct VMConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Print a VM's configuration.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMIDArgument

    func run() throws {
        print(try VMContext(global).config(vm.vmid).serialized(), terminator: "")
    }
}
