import Logging
import SnapdumpConfig
import SnapdumpSystem

/// snapdumpd: the scheduler with the backup engine as runner, logging to
/// stderr (to the journal with priorities under systemd: `DaemonLogHandler`),
/// until SIGTERM or SIGINT.
public enum SchedulerDaemon {
    public static func run(paths: SnapdumpPaths) async throws {
        // Before any thread starts: a long-running process keeps what its arenas hold.
        ProcessMemory.configureForLongRunningProcess()
        LoggingSystem.bootstrap { _ in DaemonLogHandler.standardError() }
        var logger = Logger(label: "snapdumpd")
        logger.logLevel = .info
        let scheduler = Scheduler(paths: paths, runner: BackupJobRunner(echo: false), logger: logger)
        try await SchedulerService.runDaemon(scheduler: scheduler, logger: logger)
    }
}
