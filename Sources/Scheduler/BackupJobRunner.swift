import Archive
import Backup
import Foundation
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// Runs a job through the backup engine (`BackupJob`, which takes the global
/// lock), writing the task log: the job's own lines as they happen, then each
/// guest's `.log` from beside its archive.
public struct BackupJobRunner: JobRunner {
    /// Also print the log lines to stderr (`job run` does; the daemon does not).
    public var echo: Bool

    public init(echo: Bool = false) { self.echo = echo }

    public func run(_ r: JobRun) async -> JobOutcome {
        let log = TaskLog(echo: echo)
        do { try log.attach(file: r.taskLog) } catch {
            return JobOutcome(ok: false, error: "cannot write task log \(r.taskLog): \(error)")
        }
        defer { log.detach() }
        log.info("job '\(r.job.id)' started (\(r.trigger)), schedule '\(r.job.schedule.text)'"
                 + (r.job.comment.map { ", comment '\($0)'" } ?? ""))
        r.job.parameters.warnNotApplied(log)
        let start = Date()
        let summaries: [BackupSummary]
        do {
            let job = try r.job.parameters.makeJob(paths: r.paths, log: log, interrupt: r.interrupt)
            job.jobID = r.job.id
            summaries = try await job.run()
        } catch {
            log.error("job '\(r.job.id)' failed: \(error)")
            return JobOutcome(ok: false, error: "\(error)")
        }
        for s in summaries where !s.ok {
            log.error("VM \(s.vmid): \(s.error ?? "failed")")
        }
        appendGuestLogs(summaries, start: start, parameters: r.job.parameters, paths: r.paths, log: log, taskLog: r.taskLog)
        let archives = summaries.compactMap { $0.ok ? $0.archive : nil }
        let failed = summaries.filter { !$0.ok }
        if let sig = r.interrupt.received, !failed.isEmpty || summaries.isEmpty {
            return JobOutcome(ok: false, archives: archives, error: "interrupted by signal \(sig)")
        }
        if failed.isEmpty && !summaries.isEmpty {
            return JobOutcome(ok: true, archives: archives)
        }
        let what = failed.map { "VM \($0.vmid): \($0.error ?? "failed")" }.joined(separator: "; ")
        return JobOutcome(ok: false, archives: archives, error: what.isEmpty ? "no guest was backed up" : what)
    }

    /// Appends each guest's log (vzdump-qemu-<vmid>-<ts>.log beside the archive) to the task log.
    func appendGuestLogs(_ summaries: [BackupSummary], start: Date, parameters: BackupParameters,
                         paths: SnapdumpPaths, log: TaskLog, taskLog: String) {
        let dumpdir: String? = {
            guard let o = try? parameters.effective(paths: paths).options, let reg = try? StorageRegistry(paths: paths) else { return nil }
            return try? o.target.directory(storages: reg)
        }()
        for s in summaries {
            var path: String?
            if let a = s.archive, let name = ArchiveName(fileName: (a as NSString).lastPathComponent) {
                path = ((a as NSString).deletingLastPathComponent as NSString).appendingPathComponent(name.logName)
            } else if let dumpdir {
                // A failed guest has no archive: its log is the newest one since the job started.
                let prefix = "vzdump-qemu-\(s.vmid)-"
                let candidates = ((try? FileSystem.list(dumpdir)) ?? []).filter { $0.hasPrefix(prefix) && $0.hasSuffix(".log") }
                path = candidates.sorted().last.map { "\(dumpdir)/\($0)" }.flatMap { p in
                    let m = (try? FileManager.default.attributesOfItem(atPath: p)[.modificationDate] as? Date) ?? nil
                    return (m ?? .distantPast) >= start.addingTimeInterval(-1) ? p : nil
                }
            }
            guard let path, let text = try? FileSystem.readText(path) else { continue }
            // Raw, to the file only: these lines were on stderr already, with their timestamps.
            let block = "---- log of VM \(s.vmid): \(path) ----\n" + text + (text.hasSuffix("\n") ? "" : "\n")
            do {
                let f = try File.open(taskLog, O_WRONLY | O_APPEND)
                try f.writeAll(Array(block.utf8))
                try f.close()
            } catch {
                log.warn("cannot copy \(path) into the task log: \(error)")
            }
        }
    }
}
