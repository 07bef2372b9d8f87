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
    @OptionGroup var output: OutputOptions

    func run() throws {
        let dump = try BackupLocation.dumpDirectory(storeid: storeid, dumpdir: dumpdir, global: global)
        let records = try dump.archives(vmid: vmid).map { a -> OutputRecord in
            var r = OutputRecord()
            r.add("volid", "Volid", .string(dump.label(a)))
            r.add("ctime", "Time", .of(a.date), text: BackupLocation.time(a.date))
            r.add("size", "Size", .of(a.size), text: ByteCount.format(a.size))
            r.add("vmid", "VMID", .of(a.vmid))
            r.add("protected", "Protected", .bool(a.isProtected))
            r.add("notes", "Notes", .of(a.notesFirstLine), text: a.notesFirstLine ?? "")
            r.add("path", nil, .string(a.path))
            return r
        }
        Output.list(records, output.format, columns: ["Volid", "Time", "Size", "VMID", "Protected", "Notes"])
    }
}
