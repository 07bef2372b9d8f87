#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem
import Testing

/// A child started from a worker thread (Dispatch and Swift concurrency block
/// almost every signal there) still stops on SIGTERM and holds no descriptor
/// of ours: a `qemu-nbd --fork` once outlived its backup that way, and kept
/// the test harness's pipe open.
@Suite struct ProcessSpawnTests {
    /// Runs `body` on a new thread whose signal mask blocks SIGTERM and which
    /// holds a descriptor without FD_CLOEXEC; returns that descriptor's number.
    func onThreadBlockingSIGTERM(_ body: @escaping @Sendable (Int32) throws -> Void) throws {
        let failure = LockedBox<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            defer { done.signal() }
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            let fd = open("/dev/null", O_RDONLY)  // no O_CLOEXEC: inherited unless closed on purpose
            defer { close(fd) }
            do { try body(fd) } catch { failure.value = error }
        }
        t.start()
        done.wait()
        if let e = failure.value { throw e }
    }

    @Test func childHasAnEmptySignalMaskAndOnlyStandardDescriptors() throws {
        let dir = NSTemporaryDirectory() + "snapdump-spawn-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        let seenFD = LockedBox<Int32>(-1)
        try onThreadBlockingSIGTERM { fd in
            seenFD.value = fd
            let pid = try ProcessSpawn.start(["sh", "-c", "grep SigBlk /proc/self/status; ls /proc/self/fd"], stdout: out)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        let text = try FileSystem.readText(out)
        #expect(text.contains("SigBlk:\t0000000000000000"), "\(text)")
        let fds = text.split(separator: "\n").dropFirst().compactMap { Int32($0) }
        // 0, 1, 2 and ls's own directory descriptor; never the thread's.
        #expect(!fds.contains(seenFD.value), "the child inherited descriptor \(seenFD.value): \(fds)")
        #expect(fds.filter { $0 > 2 }.count <= 1, "\(fds)")
    }

    @Test func daemonStartedFromABlockingThreadStopsOnSIGTERM() throws {
        let dir = NSTemporaryDirectory() + "snapdump-spawn-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pidFile = dir + "/pid"
        // A daemon like `qemu-nbd --fork`: the started process forks and exits at once.
        try onThreadBlockingSIGTERM { _ in
            try Command.runDaemonizing(["sh", "-c", "sleep 60 & echo $! > \(pidFile)"])
        }
        let daemon = try #require(Int32(try FileSystem.readText(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { kill(daemon, SIGKILL) }
        #expect(kill(daemon, SIGTERM) == 0)
        var gone = false
        for _ in 0..<100 {
            if kill(daemon, 0) != 0 || (try? FileSystem.readText("/proc/\(daemon)/stat"))?.contains(") Z ") == true { gone = true; break }
            usleep(20_000)
        }
        #expect(gone, "the daemon ignored SIGTERM: \((try? FileSystem.readText("/proc/\(daemon)/status")) ?? "")")
    }
}

/// A value shared with a thread (the tests wait for it before reading).
final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ value: T) { _value = value }
    var value: T {
        get { lock.withLock { _value } }
        set { lock.withLock { _value = newValue } }
    }
}

/// `Command.start`: the caller goes on while the command runs; `wait` gives its output, or why it did not start.
@Suite("Commands started in the background")
struct PendingCommandTests {
    @Test func startReturnsAtOnceAndWaitGivesTheOutput() throws {
        let t0 = Date()
        let pending = Command.start(["sh", "-c", "sleep 0.5; echo done; exit 3"])
        #expect(Date().timeIntervalSince(t0) < 0.4, "start waited for the command")
        let out = try pending.wait().get()
        #expect(Date().timeIntervalSince(t0) >= 0.5)
        #expect(out.status == 3 && out.stdout == "done\n")
        #expect(try pending.wait().get().stdout == "done\n", "waiting again gives the same")
    }

    @Test func aProgramThatCannotStartIsAFailure() {
        let r = Command.start(["/nonexistent/snapdump-no-such-program"]).wait()
        #expect((try? r.get()) == nil)
    }
}

@Suite("Commands streamed to a reader")
struct StreamCommandTests {
    /// The child writes into a 1 MiB pipe (F_GETPIPE_SZ on its stdout), and every byte arrives in order.
    @Test func streamsThroughAOneMiBPipe() throws {
        let script = "import fcntl, sys; sys.stdout.write('%d\\n' % fcntl.fcntl(1, 1032)); sys.stdout.flush(); "
            + "sys.stdout.buffer.write(bytes(range(256)) * 8192)"
        var received: [UInt8] = []
        try Command.stream(["/usr/bin/python3", "-c", script]) { received.append(contentsOf: $0) }
        let newline = try #require(received.firstIndex(of: 10))
        #expect(String(decoding: received[..<newline], as: UTF8.self) == "1048576")
        let body = received[(newline + 1)...]
        #expect(body.count == 256 * 8192)
        #expect(body.enumerated().allSatisfy { $0.element == UInt8($0.offset & 255) })
    }
}
