import SnapdumpSystem
import ArgumentParser
import Archive
import Backup
import Foundation

/// `snapdump backup`: vzdump for QEMU guests.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up guests into VMA archives or a repository storage (vzdump): stop, suspend or snapshot mode."
    )

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VMIDs to back up.") var vmids: [Int] = []
    @OptionGroup var options: BackupOptionArguments
    @Flag(help: ArgumentHelp("Write the archive to standard output (a pipe) instead of a file, as vzdump's --stdout: one guest, the task log and the summary on stderr, no .log, notes or prune; no snapdump.json in the archive (the digests are in the log). Refused when stdout is a terminal. (also --stdout 1)"))
    var stdout = false
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if vmids.isEmpty && !options.all && options.exclude == nil { throw ValidationError("name VMIDs to back up, or --all") }
        try options.validateValues()
        _ = try parameters()
        if stdout && isatty(1) == 1 {
            throw CLIError("--stdout: standard output is a terminal; pipe the archive into a program or redirect it to a file")
        }
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
        if stdout { job.stream = try Self.takeStandardOutput() }
        let summaries = try await job.run()
        let text: String
        if output.format != .text {
            let enc = JSONEncoder()
            enc.outputFormatting = output.format == .jsonPretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
            text = String(decoding: try enc.encode(summaries), as: UTF8.self)
        } else {
            text = BackupSummaryTable.render(summaries)
        }
        // With --stdout, fd 1 points at stderr by now (takeStandardOutput): the summary cannot mix into the archive.
        print(text)
        if !summaries.allSatisfy(\.ok) { throw ExitCode(1) }
    }
}

extension BackupCommand {
    /// The archive's stream for `--stdout`: the pipe on fd 1, moved to a
    /// descriptor of its own (close-on-exec, so no child process holds the
    /// pipe open), and fd 1 pointed at stderr — a stray print cannot corrupt
    /// the archive, and closing the stream ends it for the reader even while
    /// this process goes on (restarting a guest, removing snapshots).
    /// SIGPIPE is ignored: a reader that goes away makes the write fail with
    /// EPIPE, and the backup fails and cleans up instead of being killed.
    static func takeStandardOutput() throws -> File {
        let fd = fcntl(1, F_DUPFD_CLOEXEC, 3)
        guard fd >= 0 else { throw CLIError("--stdout: cannot take standard output: \(String(cString: strerror(errno)))") }
        guard dup2(2, 1) >= 0 else {
            close(fd)
            throw CLIError("--stdout: cannot point standard output at stderr: \(String(cString: strerror(errno)))")
        }
        signal(SIGPIPE, SIG_IGN)
        return File(adopting: fd, path: "<stdout>", isStream: true)
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
