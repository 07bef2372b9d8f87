import Foundation
import ArgumentParser
import Backup
import SnapdumpConfig

/// `snapdump prune <storeid> [--vmid N] [--keep-… N] [--dry-run]`: Proxmox's
/// `pvesm prune-backups`. Without keep options the storage's `prune-backups`
/// applies (keep everything when it has none).
struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Prune backup archives with Proxmox's retention rules (pvesm prune-backups).",
        discussion: "Prints keep/remove/protected/renamed per archive; --dry-run removes nothing.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup storage (content 'backup').") var storeid: String?
    @Option(help: "Prune this directory instead of a storage.") var dumpdir: String?
    @Option(help: "Only the archives of this VMID (each VMID is its own group).") var vmid: Int?
    @Option(name: .customLong("keep-all"), help: "1: keep all backups.") var keepAll: String?
    @Option(name: .customLong("keep-last"), help: "Keep the last N backups.") var keepLast: Int?
    @Option(name: .customLong("keep-hourly"), help: "Keep the newest backup of each of the last N hours.") var keepHourly: Int?
    @Option(name: .customLong("keep-daily"), help: "Keep the newest backup of each of the last N days.") var keepDaily: Int?
    @Option(name: .customLong("keep-weekly"), help: "Keep the newest backup of each of the last N ISO weeks.") var keepWeekly: Int?
    @Option(name: .customLong("keep-monthly"), help: "Keep the newest backup of each of the last N months.") var keepMonthly: Int?
    @Option(name: .customLong("keep-yearly"), help: "Keep the newest backup of each of the last N years.") var keepYearly: Int?
    @Flag(name: .customLong("dry-run"), help: "Only show what would be removed.") var dryRun = false
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let given: [(String, String?)] = [
            ("keep-all", keepAll), ("keep-last", keepLast.map(String.init)), ("keep-hourly", keepHourly.map(String.init)),
            ("keep-daily", keepDaily.map(String.init)), ("keep-weekly", keepWeekly.map(String.init)),
            ("keep-monthly", keepMonthly.map(String.init)), ("keep-yearly", keepYearly.map(String.init)),
        ]
        let explicit = given.compactMap { k, v in v.map { "\(k)=\($0)" } }
        let policy: PrunePolicy
        if !explicit.isEmpty {
            policy = try PrunePolicy(parsing: explicit.joined(separator: ","), what: "options")
        } else if let storeid, let raw = try global.storages().config.storage(storeid).pruneBackups {
            policy = try PrunePolicy(parsing: raw, what: "storage '\(storeid)' prune-backups")
        } else {
            policy = .keepEverything
        }
        printError("retention: \(policy)")
        if let storeid, dumpdir == nil, try BackupLocation.isRepository(storeid, global: global) {
            return try await pruneRepository(storeid, policy: policy)
        }
        let dump = try BackupLocation.dumpDirectory(storeid: storeid, dumpdir: dumpdir, global: global)
        let results = try dump.prune(vmid: vmid, policy: policy, dryRun: dryRun) { level, message in
            printError("\(level.rawValue): \(message)")
        }
        report(results.map { (dump.label($0.archive), $0.archive.date, $0.archive.vmid, $0.mark) })
    }

    /// One line a backup, as `pvesm prune-backups` prints them.
    private func report(_ rows: [(volid: String, date: Date, vmid: Int, mark: PruneMark)]) {
        let records = rows.map { p -> OutputRecord in
            var r = OutputRecord()
            r.add("volid", "Volid", .string(p.volid))
            r.add("ctime", "Time", .of(p.date), text: BackupLocation.time(p.date))
            r.add("vmid", "VMID", .of(p.vmid))
            r.add("mark", "Mark", .string(p.mark.rawValue))
            r.add("type", nil, .string("qemu"))
            return r
        }
        Output.list(records, output.format, columns: ["Volid", "Time", "VMID", "Mark"])
        if !dryRun {
            printError("pruned \(rows.filter { $0.mark == PruneMark.remove }.count) backup(s)")
        }
    }

    /// The same over a repository's snapshots (each guest its own group); chunks stay until `repo gc`.
    private func pruneRepository(_ storeid: String, policy: PrunePolicy) async throws {
        let store = try BackupLocation.repositoryStore(storeid, global: global)
        let results = try store.prune(vmid: vmid, policy: policy, dryRun: dryRun) { level, message in
            printError("\(level.rawValue): \(message)")
        }
        report(results.map { (store.volume($0.snapshot).description, $0.snapshot.date, $0.snapshot.vmid ?? 0, $0.mark) })
        if !dryRun {
            let vmids = Set(results.filter { $0.mark == .remove }.compactMap(\.snapshot.vmid))
            let (removed, skipped) = await UnrecordedBases.removeAfterRemoval(vmids: vmids, paths: global.paths, storages: try global.storages())
            for r in removed { printError("removed \(r): no backup records it any more") }
            for s in skipped { printError("WARN: \(s)") }
        }
    }
}
