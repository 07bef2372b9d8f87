import SnapdumpSystem
import ArgumentParser
import Backup
import Repository

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
        if let storeid, dumpdir == nil, try global.storages().config.storage(storeid).type == .repo {
            return try listRepository(storeid)
        }
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

    /// A repository's snapshots: size is the sum of the disks (logical), as PBS shows it.
    private func listRepository(_ storeid: String) throws {
        let repo = try RepositoryAccess.open(storeid, global)
        let records = try repo.snapshots(type: "vm", id: vmid.map(String.init)).map { s -> OutputRecord in
            let m = try repo.manifest(s)
            let size = m.files.filter { $0.filename.hasSuffix(".fidx") }.reduce(UInt64(0)) { $0 + $1.size }
            let notes = m.unprotected.notes?.split(separator: "\n").first.map(String.init)
            var r = OutputRecord()
            r.add("volid", "Volid", .string(RepositoryVolume(storage: storeid, snapshot: s).description))
            r.add("ctime", "Time", .of(s.date), text: BackupLocation.time(s.date))
            r.add("size", "Size", .of(size), text: ByteCount.format(size))
            r.add("vmid", "VMID", .of(s.vmid ?? 0))
            r.add("protected", "Protected", .bool(repo.isProtected(s)))
            r.add("notes", "Notes", .of(notes), text: notes ?? "")
            r.add("path", nil, .string(repo.directory(of: s)))
            return r
        }
        Output.list(records, output.format, columns: ["Volid", "Time", "Size", "VMID", "Protected", "Notes"])
    }
}
