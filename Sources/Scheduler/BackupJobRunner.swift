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
        appendGuestLogs(summaries, log: log)
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
    func appendGuestLogs(_ summaries: [BackupSummary], log: TaskLog) {
        for s in summaries {
            guard let path = s.log, let text = try? FileSystem.readText(path) else { continue }
            // Raw, to the file only: these lines were on stderr already, with their timestamps.
            let block = "---- log of VM \(s.vmid): \(path) ----\n" + text + (text.hasSuffix("\n") ? "" : "\n")
            do {
                try log.appendToFile(block)
            } catch {
                log.warn("cannot copy \(path) into the task log: \(error)")
            }
        }
    }
}
