import Foundation
import Testing
import SnapdumpSystem

/// vzdump's `ionice`: applied to the threads that do backup I/O.
@Suite(.serialized) struct IOPriorityTests {
    /// Runs `body` on a fresh thread (the priority is per thread) and returns its result.
    func onNewThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await Blocking.run("ioprio-test", body)
    }

    @Test func bestEffortLevelAndIdleClassAreApplied() async throws {
        #expect(try await onNewThread { try IOPriority.set(ionice: 5); return try IOPriority.currentThread() } == 5)
        #expect(try await onNewThread { try IOPriority.set(ionice: 8); return try IOPriority.currentThread() } == 8)
    }

    @Test func threadsStartedLaterApplyTheRememberedValue() async throws {
        try await onNewThread { try IOPriority.set(ionice: 6) }
        let other = try await onNewThread { () -> Int? in
            try IOPriority.applyToCurrentThread()
            return try IOPriority.currentThread()
        }
        #expect(other == 6)
    }
}
