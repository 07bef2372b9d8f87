#if canImport(Glibc)
import Glibc
#endif
import CShims
import Foundation
import Synchronization

/// An external command that exited non-zero or could not be started.
public struct CommandError: Error, CustomStringConvertible, Sendable {
    public var commandLine: String
    public var status: Int32
    public var stderr: String

    public var description: String {
        let detail = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        return "command '\(commandLine)' failed (exit \(status))" + (detail.isEmpty ? "" : ": \(detail)")
    }
}

/// Runs external programs (qemu-img, zfs, btrfs, …) with captured output.
public enum Command {
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs a program that forks a daemon and exits (`qemu-nbd --fork`,
    /// `qemu -daemonize`). Its output goes to a file, not a pipe: the daemon
    /// inherits the descriptors, so a pipe would never reach end of file.
    public static func runDaemonizing(_ argv: [String]) throws {
        let errPath = NSTemporaryDirectory() + "snapdump-cmd-\(getpid())-\(UUID().uuidString.prefix(8)).err"
        defer { unlink(errPath) }
        let pid: pid_t
        do {
            pid = try ProcessSpawn.start(argv, stderr: .newFile(errPath))
        } catch {
            throw CommandError(commandLine: argv.joined(separator: " "), status: 127, stderr: error.description)
        }
        let code = ProcessSpawn.wait(pid)
        if code != 0 {
            let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            throw CommandError(commandLine: argv.joined(separator: " "), status: code, stderr: err)
        }
    }

    /// Runs `argv` to completion; never throws for a non-zero exit.
    /// `environment`: added to ours. `input`: its stdin (small: a device-mapper table).
    public static func capture(_ argv: [String], environment: [String: String]? = nil, input: String? = nil) throws -> Output {
        var out: [UInt8] = [], err: [UInt8] = []
        let status = try communicate(argv, environment: environment, input: input.map { Array($0.utf8) }) { fd, bytes in
            if fd == 1 { out.append(contentsOf: bytes) } else { err.append(contentsOf: bytes) }
        }
        return Output(status: status, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }

    /// Runs `argv` and hands its stdout to `consume` piece by piece as it
    /// arrives (`zfs send`: a stream too big to hold); throws `CommandError`
    /// with its stderr when it exits non-zero.
    public static func stream(_ argv: [String], consume: (UnsafeRawBufferPointer) -> Void) throws {
        var err: [UInt8] = []
        // A 1 MiB pipe, not the default 64 KiB: the writer (zfs-fuse's daemon writing a `zfs send`
        // stream) waited for this reader every 64 KiB; 20 MiB of changes were sent in 24–28 ms
        // instead of 36–47.
        let status = try communicate(argv, stdoutPipeSize: 1 << 20) { fd, bytes in
            if fd == 1 { consume(bytes) } else { err.append(contentsOf: bytes) }
        }
        if status != 0 {
            throw CommandError(commandLine: argv.joined(separator: " "), status: status, stderr: String(decoding: err, as: UTF8.self))
        }
    }

    /// Runs `argv` (posix_spawn, `ProcessSpawn`: its own process group, default signal state, no
    /// descriptor of ours but the pipes) with stdout and stderr on pipes read here with poll(2),
    /// handing what arrives to `receive` (1: stdout, 2: stderr) until both end; its exit status.
    /// Foundation's `Process` cost 0.5–2.5 ms more per command (a monitor thread, a drain thread,
    /// a close of every descriptor in the child), and an incremental backup on zfs-fuse runs five.
    /// The input is written into its pipe before the child starts, so a child that never reads
    /// it cannot raise SIGPIPE here.
    static func communicate(_ argv: [String], environment: [String: String]? = nil, input: [UInt8]? = nil,
                            stdoutPipeSize: Int32? = nil, receive: (Int32, UnsafeRawBufferPointer) -> Void) throws -> Int32 {
        precondition(!argv.isEmpty)
        let line = argv.joined(separator: " ")
        func failure(_ why: String) -> CommandError { CommandError(commandLine: line, status: 127, stderr: "cannot start: \(why)") }
        var opened: [Int32] = []
        defer { for fd in opened { close(fd) } }
        func makePipe() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            guard snapdump_pipe_cloexec(&fds) == 0 else { throw failure("pipe: \(String(cString: strerror(errno)))") }
            opened += fds
            return (fds[0], fds[1])
        }
        func closeNow(_ fd: Int32) {
            close(fd)
            opened.removeAll { $0 == fd }
        }
        let out = try makePipe(), err = try makePipe()
        if let size = stdoutPipeSize { _ = fcntl(out.read, pipeSetSize, size) }  // a hint: a refusal (pipe-max-size) leaves the default
        var stdin = ProcessSpawn.Redirect.null
        if let input {
            let p = try makePipe()
            // Non-blocking on our end only: an input its pipe cannot hold is refused, never waited on.
            _ = fcntl(p.write, F_SETFL, fcntl(p.write, F_GETFL) | O_NONBLOCK)
            if input.count > 60_000 { _ = fcntl(p.write, pipeSetSize, Int32(min(input.count + 4096, 1 << 20))) }
            let written = input.withUnsafeBytes { Glibc.write(p.write, $0.baseAddress, $0.count) }
            guard written == input.count else { throw failure("input of \(input.count) bytes does not fit its pipe") }
            closeNow(p.write)
            stdin = .descriptor(p.read)
        }
        let env = environment.map { ProcessInfo.processInfo.environment.merging($0) { $1 } }
        let pid: pid_t
        do {
            pid = try ProcessSpawn.spawn(argv, environment: env, stdin: stdin, stdout: .descriptor(out.write),
                                         stderr: .descriptor(err.write), ownProcessGroup: true)
        } catch {
            throw failure(error.description)
        }
        for fd in opened where fd != out.read && fd != err.read { closeNow(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(stdoutPipeSize ?? 65536), alignment: 16)
        defer { buffer.deallocate() }
        var polled = [pollfd(fd: out.read, events: Int16(POLLIN), revents: 0), pollfd(fd: err.read, events: Int16(POLLIN), revents: 0)]
        while polled.contains(where: { $0.fd >= 0 }) {
            if poll(&polled, nfds_t(polled.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for i in polled.indices where polled[i].fd >= 0 && polled[i].revents != 0 {
                let n = Glibc.read(polled[i].fd, buffer.baseAddress, buffer.count)
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if n <= 0 {
                    polled[i].fd = -1  // end of file (or an error: the child's status says what happened)
                    continue
                }
                receive(i == 0 ? 1 : 2, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
        }
        return ProcessSpawn.wait(pid)
    }

    /// A command running on a thread of its own (`start`).
    public final class Pending: Sendable {
        private let done = DispatchGroup()
        private let output = Mutex<Result<Output, any Error>?>(nil)

        fileprivate init(_ argv: [String]) {
            done.enter()
            Thread.detachNewThread { [self] in
                let r = Result { try Command.capture(argv) }
                output.withLock { $0 = r }
                done.leave()
            }
        }

        /// Waits for the command to end; what it printed and its status, or why it did not start.
        @discardableResult
        public func wait() -> Result<Output, any Error> {
            done.wait()
            return output.withLock { $0! }
        }
    }

    /// Starts `argv` without waiting for it: a round trip the caller need not wait for now
    /// (`zfs set` on zfs-fuse waits for a transaction group). `wait()` before relying on it.
    public static func start(_ argv: [String]) -> Pending { Pending(argv) }

    /// Runs `argv`; throws `CommandError` with its stderr when it exits non-zero.
    @discardableResult
    public static func run(_ argv: [String], environment: [String: String]? = nil, input: String? = nil) throws -> String {
        let o = try capture(argv, environment: environment, input: input)
        if o.status != 0 {
            throw CommandError(commandLine: argv.joined(separator: " "), status: o.status, stderr: o.stderr.isEmpty ? o.stdout : o.stderr)
        }
        return o.stdout
    }

    /// Whether a program is on PATH.
    public static func exists(_ name: String) -> Bool {
        resolve(name) != name || FileManager.default.isExecutableFile(atPath: name)
    }

    /// Absolute path of a program found on PATH (plus the sbin directories
    /// root's tools live in), or the name unchanged.
    public static func resolve(_ name: String) -> String {
        if name.contains("/") { return name }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for d in dirs where FileManager.default.isExecutableFile(atPath: "\(d)/\(name)") {
            return "\(d)/\(name)"
        }
        return name
    }
}

// <fcntl.h> defines F_SETPIPE_SZ under _GNU_SOURCE only, which Swift does not import.
private let pipeSetSize: Int32 = 1031
