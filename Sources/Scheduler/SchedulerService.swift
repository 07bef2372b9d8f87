import Logging
import ServiceLifecycle

/// The scheduler as a swift-service-lifecycle service: it runs until the
/// service group shuts down gracefully (SIGTERM, SIGINT), then stops the loop;
/// a running backup is interrupted, cleans up, and is waited for.
public struct SchedulerService: Service {
    public let scheduler: Scheduler

    public init(scheduler: Scheduler) { self.scheduler = scheduler }

    public func run() async throws {
        let scheduler = self.scheduler
        await withGracefulShutdownHandler {
            await scheduler.run()
        } onGracefulShutdown: {
            Task { await scheduler.shutdown() }
        }
    }

    /// Runs the scheduler until SIGTERM or SIGINT.
    public static func runDaemon(scheduler: Scheduler, logger: Logger) async throws {
        let group = ServiceGroup(
            services: [SchedulerService(scheduler: scheduler)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger
        )
        try await group.run()
    }
}
