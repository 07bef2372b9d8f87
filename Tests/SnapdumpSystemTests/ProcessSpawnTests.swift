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

/// `Command.capture` / `run`: posix_spawn and poll(2) instead of Foundation's `Process`.
@Suite("Commands run to completion")
struct CapturedCommandTests {
    /// Both pipes drained at once: a child that fills stderr while we would wait on stdout must not hang.
    @Test func stdoutAndStderrArriveApartWithoutDeadlock() throws {
        let script = "import sys\nfor i in range(64):\n    sys.stderr.write('e' * 16384); sys.stderr.flush(); sys.stdout.write('o' * 16384); sys.stdout.flush()"
        let o = try Command.capture(["/usr/bin/python3", "-c", script])
        #expect(o.status == 0)
        #expect(o.stdout.utf8.count == 64 * 16384 && o.stdout.utf8.allSatisfy { $0 == UInt8(ascii: "o") })
        #expect(o.stderr.utf8.count == 64 * 16384 && o.stderr.utf8.allSatisfy { $0 == UInt8(ascii: "e") })
    }

    @Test func exitCodesAndSignalsAsAShellSaysThem() throws {
        #expect(try Command.capture(["sh", "-c", "exit 7"]).status == 7)
        #expect(try Command.capture(["sh", "-c", "kill -9 $$"]).status == 128 + 9)
        let e = try #require(throws: CommandError.self) { try Command.run(["sh", "-c", "echo bad thing >&2; exit 3"]) }
        #expect(e.status == 3 && e.stderr == "bad thing\n")
    }

    @Test func inputIsTheChildsStdinAndAChildThatIgnoresItRaisesNoSIGPIPE() throws {
        #expect(try Command.run(["cat"], input: "0 2048 linear /dev/loop0 0\n") == "0 2048 linear /dev/loop0 0\n")
        let big = String(repeating: "x", count: 200_000)
        #expect(try Command.run(["wc", "-c"], input: big).trimmingCharacters(in: .whitespacesAndNewlines) == "200000")
        // Exits without reading: the input already sits in the pipe, nothing is written to a closed reader.
        #expect(try Command.capture(["true"], input: big).status == 0)
    }

    @Test func environmentIsAddedToOurs() throws {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? ""
        #expect(try Command.run(["sh", "-c", "echo \"$SNAPDUMP_TEST_VAR $HOME\""], environment: ["SNAPDUMP_TEST_VAR": "x"]) == "x \(home)\n")
    }

    @Test func aProgramThatCannotStartIsStatus127() {
        let e = #expect(throws: CommandError.self) { try Command.run(["/nonexistent/snapdump-no-such-program"]) }
        #expect(e?.status == 127)
    }

    /// Started from a thread that blocks SIGTERM and holds a descriptor: the child leads its own
    /// process group (a Ctrl-C reaches snapdump, not a `zfs snapshot` half way), has an empty
    /// signal mask and no descriptor of ours but its pipes.
    @Test func childLeadsItsOwnGroupWithACleanSignalMaskAndNoDescriptorOfOurs() throws {
        let seenFD = LockedBox<Int32>(-1)
        let output = LockedBox<String>("")
        try ProcessSpawnTests().onThreadBlockingSIGTERM { fd in
            seenFD.value = fd
            output.value = try Command.run(["sh", "-c", "echo $$; cut -d' ' -f5 /proc/$$/stat; grep SigBlk /proc/self/status; ls /proc/$$/fd"])
        }
        let lines = output.value.split(separator: "\n").map(String.init)
        try #require(lines.count >= 3, "\(lines)")
        #expect(lines[0] == lines[1], "the child's process group \(lines[1]) is not its own (pid \(lines[0]))")
        #expect(lines[2] == "SigBlk:\t0000000000000000")
        let fds = lines.dropFirst(3).compactMap { Int32($0) }
        #expect(!fds.contains(seenFD.value), "the child inherited descriptor \(seenFD.value): \(fds)")
        #expect(fds.filter { $0 > 2 }.isEmpty, "\(fds)")
    }
}
