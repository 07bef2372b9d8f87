import ArgumentParser
import Archive
import Backup
import Foundation

/// `snapdump backup`: vzdump for QEMU guests.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up guests into VMA archives (vzdump): stop, suspend or snapshot mode."
    )

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VMIDs to back up.") var vmids: [Int] = []
    @Flag(help: "Back up all guests.") var all = false
    @Option(help: "Exclude these VMIDs (implies --all), comma-separated.") var exclude: String?
    @Option(help: "stop, suspend or snapshot (default snapshot).") var mode: String = "snapshot"
    @Option(help: "Backup storage (content 'backup'); default 'local'.") var storage: String?
    @Option(help: "Write archives to this directory instead of a storage.") var dumpdir: String?
    @Option(help: "0, 1, gzip, lzo or zstd (default 0).") var compress: String = "0"
    @Option(help: "zstd threads; 0 = half of the cores.") var zstd: Int = 1
    @Option(help: "Minutes to wait for a clean shutdown in stop mode.") var stopwait: Int = 10
    @Option(help: "Read limit in KiB/s; 0 = unlimited.") var bwlimit: Int = 0
    @Option(help: "Temporary directory (accepted for compatibility).") var tmpdir: String?
    @Option(name: .customLong("snapshot-fallback"), help: "When a disk cannot be snapshotted: suspend (default, as Proxmox) or refuse.")
    var snapshotFallback: String = "suspend"
    @Option(help: "Minutes to wait for the global backup lock.") var lockwait: Double = 180
    @Flag(help: "Be quiet: log to the .log files only.") var quiet = false
    @Option(name: .customLong("output-format"), help: "Summary format on stdout: text or json.") var outputFormat: String = "text"

    func validate() throws {
        if vmids.isEmpty && !all && exclude == nil { throw ValidationError("name VMIDs to back up, or --all") }
        if storage != nil && dumpdir != nil { throw ValidationError("--storage and --dumpdir are mutually exclusive") }
        guard BackupMode(rawValue: mode) != nil else { throw ValidationError("invalid mode '\(mode)': stop, suspend or snapshot") }
        guard SnapshotFallback(rawValue: snapshotFallback) != nil else {
            throw ValidationError("invalid --snapshot-fallback '\(snapshotFallback)': suspend or refuse")
        }
        if outputFormat != "text" && outputFormat != "json" { throw ValidationError("--output-format must be text or json") }
        if zstd < 0 { throw ValidationError("--zstd must be 0 or more") }
        if bwlimit < 0 { throw ValidationError("--bwlimit must be 0 or more") }
    }

    func run() async throws {
        var o = BackupOptions()
        o.vmids = vmids
        o.all = all
        o.exclude = try exclude.map { try $0.split(separator: ",").map { s -> Int in
            guard let v = Int(s) else { throw ValidationError("invalid VMID '\(s)' in --exclude") }
            return v
        } } ?? []
        o.mode = BackupMode(rawValue: mode)!
        o.storage = storage
        o.dumpdir = dumpdir.map { $0.hasPrefix("/") ? $0 : FileManagerCWD.absolute($0) }
        o.compression = try BackupOptions.parseCompress(compress, zstdThreads: zstd)
        o.zstdThreads = zstd
        o.stopwait = stopwait
        o.bwlimit = bwlimit
        o.tmpdir = tmpdir
        o.snapshotFallback = SnapshotFallback(rawValue: snapshotFallback)!
        o.quiet = quiet

        let log = TaskLog(echo: !quiet)
        let interrupt = Interrupt()
        interrupt.install()
        let job = BackupJob(options: o, paths: global.paths, log: log, interrupt: interrupt)
        job.lockwait = lockwait
        let summaries = try await job.run()
        if outputFormat == "json" {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(summaries), as: UTF8.self))
        } else {
            print(BackupSummaryTable.render(summaries))
        }
        if !summaries.allSatisfy(\.ok) { throw ExitCode(1) }
    }
}

/// The table printed at the end of a backup run.
enum BackupSummaryTable {
    static func render(_ summaries: [BackupSummary]) -> String {
        let rows = summaries.map { s -> [String] in
            let mode = s.mode.map { m in s.fallbackReason != nil ? "\(m.rawValue) (fallback from \(s.requestedMode.rawValue))" : m.rawValue } ?? "-"
            let downtime = s.downtimeMs.map { "\($0) ms" + (s.downtimeKind.map { " (\($0))" } ?? "") } ?? (s.ok ? "0 ms" : "-")
            let rate = s.seconds > 0 ? SizeArgument.format(UInt64(Double(s.diskBytes) / s.seconds)) + "/s" : "-"
            return ["\(s.vmid)", s.ok ? "ok" : "FAILED", mode, s.storages.joined(separator: ","), downtime,
                    s.ok ? SizeArgument.format(s.archiveBytes) : "-", rate, s.archive ?? (s.error ?? "")]
        }
        return Table.render(["VMID", "Status", "Mode", "Storage", "Downtime", "Archive size", "Throughput", "Archive"], rows)
    }
}
