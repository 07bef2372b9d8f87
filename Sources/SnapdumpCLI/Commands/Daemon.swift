import ArgumentParser
import Scheduler

/// `snapdump daemon`: runs the job scheduler in the foreground (as snapdumpd).
struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the backup job scheduler (snapdumpd) in the foreground until SIGTERM."
    )

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await SchedulerDaemon.run(paths: global.paths)
    }
}

/// The `snapdumpd` executable's command.
public struct SnapdumpDaemon: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "snapdumpd",
        abstract: "snapdump's backup job scheduler: runs the jobs of jobs.cfg on their schedule until SIGTERM."
    )

    @OptionGroup var global: GlobalOptions

    public init() {}

    public func run() async throws {
        try await SchedulerDaemon.run(paths: global.paths)
    }
}
