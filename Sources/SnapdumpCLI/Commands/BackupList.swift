import SnapdumpSystem
import ArgumentParser
import Backup

/// `snapdump backup list <storeid> [--vmid N]`: the archives of a storage.
struct BackupList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List backup archives: volid, time, size, protection, notes.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup storage (content 'backup').") var storeid: String?
    @Option(help: "List this directory instead of a storage.") var dumpdir: String?
    @Option(help: "Only archives of this VMID.") var vmid: Int?

    func run() throws {
        let dump = try BackupLocation.dumpDirectory(storeid: storeid, dumpdir: dumpdir, global: global)
        let rows = try dump.archives(vmid: vmid).map { a -> [String] in
            [dump.label(a), BackupLocation.time(a.date), ByteCount.format(a.size), "\(a.vmid)",
             a.isProtected ? "1" : "0", a.notesFirstLine ?? ""]
        }
        print(Table.render(["Volid", "Time", "Size", "VMID", "Protected", "Notes"], rows))
    }
}
