#if canImport(Glibc)
import Glibc
#endif
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
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        let code = exited ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        if code != 0 {
            let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            throw CommandError(commandLine: argv.joined(separator: " "), status: code, stderr: err)
        }
    }

    /// Runs `argv` to completion; never throws for a non-zero exit.
    public static func capture(_ argv: [String], environment: [String: String]? = nil, input: String? = nil) throws -> Output {
        precondition(!argv.isEmpty)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: resolve(argv[0]))
        p.arguments = Array(argv.dropFirst())
        if let environment {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let inPipe = Pipe()
        p.standardInput = input == nil ? FileHandle.nullDevice : inPipe
        do {
            try p.run()
        } catch {
            throw CommandError(commandLine: argv.joined(separator: " "), status: 127, stderr: "cannot start: \(error)")
        }
        if let input {
            inPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        // Drain stdout on another thread so a chatty stderr cannot deadlock us.
        let box = DataBox()
        let group = DispatchGroup()
        group.enter()
        Thread.detachNewThread {
            box.data = out.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return Output(status: p.terminationStatus,
                      stdout: String(decoding: box.data, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs `argv` and hands its stdout to `consume` piece by piece as it
    /// arrives (`zfs send`: a stream too big to hold); throws `CommandError`
    /// with its stderr when it exits non-zero.
    public static func stream(_ argv: [String], consume: (UnsafeRawBufferPointer) -> Void) throws {
        precondition(!argv.isEmpty)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: resolve(argv[0]))
        p.arguments = Array(argv.dropFirst())
        let out = Pipe(), err = Pipe()
        // A 1 MiB pipe, not the default 64 KiB: the writer (zfs-fuse's daemon writing a `zfs send`
        // stream) waited for this reader every 64 KiB; 20 MiB of changes were sent in 24–28 ms
        // instead of 36–47. A hint: a refusal (pipe-max-size) leaves the default.
        _ = fcntl(out.fileHandleForReading.fileDescriptor, pipeSetSize, Int32(1 << 20))
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        do {
            try p.run()
        } catch {
            throw CommandError(commandLine: argv.joined(separator: " "), status: 127, stderr: "cannot start: \(error)")
        }
        let box = DataBox()
        let group = DispatchGroup()
        group.enter()
        Thread.detachNewThread {
            box.data = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let fd = out.fileHandleForReading.fileDescriptor
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress!, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            consume(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        group.wait()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            throw CommandError(commandLine: argv.joined(separator: " "), status: p.terminationStatus,
                               stderr: String(decoding: box.data, as: UTF8.self))
        }
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

private final class DataBox: @unchecked Sendable {
    // @unchecked: written by one thread before DispatchGroup.leave, read after wait.
    var data = Data()
}

// <fcntl.h> defines F_SETPIPE_SZ under _GNU_SOURCE only, which Swift does not import.
private let pipeSetSize: Int32 = 1031
