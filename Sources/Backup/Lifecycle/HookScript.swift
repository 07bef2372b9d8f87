import Foundation
import SnapdumpSystem

/// vzdump's hook script (`--script`, `script:` in vzdump.conf): called as
/// `script <phase> [<mode> <vmid>]` with STOREID and DUMPDIR in the
/// environment, and for guest phases VMTYPE, HOSTNAME, TARGET and LOGFILE.
/// A non-zero exit fails the job (job phases) or the guest's backup (guest
/// phases), except in `backup-abort`, `job-abort` and `log-end`, where it is a
/// warning: those run when things already went wrong or are over.
struct HookScript {
    enum Phase: String, CaseIterable {
        case jobInit = "job-init", jobStart = "job-start", jobEnd = "job-end", jobAbort = "job-abort"
        case backupStart = "backup-start", preStop = "pre-stop", preRestart = "pre-restart", postRestart = "post-restart"
        case backupEnd = "backup-end", backupAbort = "backup-abort", logEnd = "log-end"

        var failureIsWarning: Bool { self == .backupAbort || self == .logEnd || self == .jobAbort }
        var isGuestPhase: Bool { ![.jobInit, .jobStart, .jobEnd, .jobAbort].contains(self) }
    }

    struct Guest {
        var mode: BackupMode
        var vmid: Int
        var hostname: String
        var target: String
        var logfile: String
    }

    let path: String
    let storeID: String?
    let dumpdir: String

    /// Runs the script for `phase` and waits for it on a thread of its own:
    /// a hook may take minutes, and on the cooperative pool it would stall
    /// snapdumpd's scheduler (two pool threads here).
    func run(_ phase: Phase, guest: Guest? = nil, log: TaskLog) async throws {
        var argv = [path, phase.rawValue]
        var env = ["DUMPDIR": dumpdir, "STOREID": storeID ?? ""]
        if let g = guest {
            argv += [g.mode.rawValue, String(g.vmid)]
            env["VMTYPE"] = "qemu"
            env["HOSTNAME"] = g.hostname
            env["TARGET"] = g.target
            env["LOGFILE"] = g.logfile
        }
        let out: Command.Output
        do {
            out = try await Blocking.run("hook") { [argv, env] in try Command.capture(argv, environment: env) }
        } catch {
            try fail(phase, "hook script '\(path)' could not be run: \(error)", log: log)
            return
        }
        for line in (out.stdout + out.stderr).split(separator: "\n") where !line.isEmpty {
            log.info("hook: \(line)")
        }
        if out.status != 0 {
            try fail(phase, "hook script '\(path)' failed in phase '\(phase.rawValue)' (exit code \(out.status))", log: log)
        }
    }

    private func fail(_ phase: Phase, _ message: String, log: TaskLog) throws {
        if phase.failureIsWarning { log.warn(message) } else { throw BackupError(message) }
    }
}
