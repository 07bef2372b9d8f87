import SnapdumpSystem
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
    @OptionGroup var options: BackupOptionArguments
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if vmids.isEmpty && !options.all && options.exclude == nil { throw ValidationError("name VMIDs to back up, or --all") }
        try options.validateValues()
        _ = try parameters()
    }

    /// The VMIDs and options as vzdump parameters, checked by the same code as jobs.cfg.
    func parameters() throws -> BackupParameters {
        var props = options.properties()
        if !vmids.isEmpty { props.insert(("vmid", vmids.map(String.init).joined(separator: ",")), at: 0) }
        do { return try BackupParameters(props) } catch { throw CLIError("\(error)") }
    }

    func run() async throws {
        let params = try parameters()
        // vzdump.conf's `quiet` counts too, so resolve before the log exists.
        let effective = try params.effective(paths: global.paths)
        let log = TaskLog(echo: !effective.options.quiet, jsonEvents: output.format != .text)
        params.warnNotApplied(log)
        let interrupt = Interrupt()
        interrupt.install()
        let job = try params.makeJob(paths: global.paths, log: log, interrupt: interrupt, effective: effective)
        let summaries = try await job.run()
        if output.format != .text {
            let enc = JSONEncoder()
            enc.outputFormatting = output.format == .jsonPretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
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
            let rate = s.seconds > 0 ? ByteCount.format(UInt64(Double(s.diskBytes) / s.seconds)) + "/s" : "-"
            return ["\(s.vmid)", s.ok ? "ok" : "FAILED", mode, s.storages.joined(separator: ","), downtime,
                    s.ok ? ByteCount.format(s.archiveBytes) : "-", rate, s.archive ?? (s.error ?? "")]
        }
        return Table.render(["VMID", "Status", "Mode", "Storage", "Downtime", "Archive size", "Throughput", "Archive"], rows)
    }
}
