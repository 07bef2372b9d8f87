import Foundation
import Notify
import SnapdumpSystem

/// The message a backup job sends when it ends, laid out as vzdump's mail:
/// a summary table of the guests, the totals, then each guest's task log.
struct BackupReport {
    struct Guest {
        var summary: BackupSummary
        var name: String
        var logFile: String
        /// The task log's lines when it has no file (`--stdout`).
        var lines: [String]? = nil
    }

    var guests: [Guest]
    var commandLine: String
    var jobID: String?
    var hostname: String
    var seconds: Double
    /// The job ended early (signal) or failed before a guest was backed up.
    var jobError: String?

    var failed: Bool { jobError != nil || guests.contains { !$0.summary.ok } }

    func notification() -> NotificationEvent {
        var fields: [String: [String]] = ["type": ["vzdump"], "hostname": [hostname], "vmid": guests.map { String($0.summary.vmid) }]
        if let jobID { fields["job-id"] = [jobID] }
        let warned = guests.contains { $0.summary.fallbackReason != nil }
        let severity: Severity = failed ? .error : warned ? .warning : .info
        return NotificationEvent(severity: severity, title: "vzdump backup status (\(hostname)): \(failed ? "backup failed" : "backup successful")",
                            message: body, fields: fields)
    }

    var body: String {
        var rows: [[String]] = []
        for g in guests {
            let s = g.summary
            rows.append([String(s.vmid), g.name, s.ok ? "ok" : "err", Formatting.duration(s.seconds),
                         Formatting.bytes(s.archiveBytes), s.ok ? (s.archive ?? "") : (s.error ?? "failed")])
        }
        var out = "Details\n=======\n"
        out += Self.table(["VMID", "Name", "Status", "Time", "Size", "Filename"], rows) + "\n\n"
        out += "Total running time: \(Formatting.duration(seconds))\n"
        out += "Total size: \(Formatting.bytes(guests.reduce(0) { $0 + $1.summary.archiveBytes }))\n"
        if let jobError { out += "Job error: \(jobError)\n" }
        out += "\nLogs\n====\n\(commandLine)\n"
        for g in guests {
            out += "\n"
            let text = g.lines.map { $0.joined(separator: "\n") }
                ?? (try? FileSystem.readText(g.logFile)) ?? "(task log '\(g.logFile)' cannot be read)\n"
            for line in text.split(separator: "\n") { out += "\(g.summary.vmid): \(line)\n" }
        }
        return out
    }

    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return ([header] + rows).map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) }.joined()
        }.joined(separator: "\n")
    }
}

/// Sends the job's report: to `mailto` through the host's sendmail when it is
/// set (vzdump's legacy mail, honouring `mailnotification failure`), otherwise
/// through the notification system's matchers (notifications.cfg) — Proxmox
/// VE 8's `notification-mode auto`. Failures are logged, never fatal.
enum BackupNotification {
    static func send(_ report: BackupReport, settings: BackupSettings, configFile: String, log: TaskLog) {
        let n = report.notification()
        if !settings.mailto.isEmpty {
            guard settings.mailnotification == "always" || report.failed else { return }
            var t = SendmailTarget(name: "mailto")
            t.mailto = settings.mailto
            do {
                try Target.sendmail(t).send(n, hostname: report.hostname)
                log.info("sent the backup report to \(settings.mailto.joined(separator: ", ")) (mailto)")
            } catch {
                log.warn("cannot send the backup report by mail: \(error)")
            }
            return
        }
        let config: NotificationConfig
        do { config = try NotificationConfig.load(configFile) } catch {
            log.warn("no notification sent: \(error)")
            return
        }
        for o in Notifier(config: config, hostname: report.hostname).send(n) {
            if let e = o.error { log.warn("notification failed: \(e)") } else { log.info("sent notification to target '\(o.target)'") }
        }
    }
}
