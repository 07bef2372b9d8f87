#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// Real-QEMU tests run when qemu-system-x86_64 is installed, or always with
/// SNAPDUMP_INTEGRATION=1 — then a missing QEMU is a failure, not a skip.
enum QEMU {
    static let binary = "qemu-system-x86_64"
    static var enabled: Bool { Integration.required || Command.exists(binary) }

    static func require() throws {
        guard Command.exists(binary) else { throw TestFailure("integration: \(binary) not found (SNAPDUMP_INTEGRATION=1 requires it)") }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A unix socketpair: (client end, fake-server end).
func makeSocketPair() throws -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
        throw SystemError("socketpair", "AF_UNIX")
    }
    return (fds[0], fds[1])
}

/// The scripted side of a socket in tests: blocking I/O on its own queue,
/// so the cooperative pool is never blocked.
final class FakePeer: @unchecked Sendable {
    // @unchecked: `buffer` and `closed` are only touched on `queue`.
    let fd: Int32
    private let queue: DispatchQueue
    private var buffer: [UInt8] = []
    private var closed = false

    init(fd: Int32, label: String = "fake-peer") {
        self.fd = fd
        self.queue = DispatchQueue(label: label)
    }

    deinit { if !closed { Glibc.close(fd) } }

    func send(_ text: String) async {
        await send(Array(text.utf8))
    }

    func send(_ bytes: [UInt8]) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.async {
                if !self.closed {
                    bytes.withUnsafeBytes { _ = Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
                c.resume()
            }
        }
    }

    /// The next line (without terminator); throws after `timeout` or at EOF.
    func readLine(timeout: Duration = .seconds(5)) async throws -> String {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, any Error>) in
            queue.async {
                let deadline = ContinuousClock.now + timeout
                while true {
                    if let nl = self.buffer.firstIndex(of: 0x0A) {
                        let line = String(decoding: self.buffer[..<nl], as: UTF8.self)
                        self.buffer.removeSubrange(...nl)
                        c.resume(returning: line)
                        return
                    }
                    let ms = Int32(max(0, (deadline - ContinuousClock.now).seconds * 1000))
                    var pfd = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                    if self.closed || poll(&pfd, 1, ms) <= 0 {
                        c.resume(throwing: TestFailure("fake peer: no line within \(timeout)"))
                        return
                    }
                    var chunk = [UInt8](repeating: 0, count: 4096)
                    let n = chunk.withUnsafeMutableBytes { Glibc.read(self.fd, $0.baseAddress, $0.count) }
                    if n <= 0 {
                        c.resume(throwing: TestFailure("fake peer: end of stream"))
                        return
                    }
                    self.buffer += chunk[..<n]
                }
            }
        }
    }

    /// The next request as JSON.
    func readRequest(timeout: Duration = .seconds(5)) async throws -> JSONValue {
        try JSONValue.parse(try await readLine(timeout: timeout))
    }

    func close() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.async {
                if !self.closed {
                    self.closed = true
                    shutdown(self.fd, Int32(SHUT_RDWR))
                    Glibc.close(self.fd)
                }
                c.resume()
            }
        }
    }
}

/// A scratch directory for a test; short, because unix socket paths are
/// limited to 107 bytes.
func scratch(_ label: String) throws -> String {
    try Integration.scratchDirectory(label, under: "/tmp")
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Measures how long `body` takes.
func timed<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let start = ContinuousClock.now
    let r = try await body()
    return (r, ContinuousClock.now - start)
}

/// Expects `body` to throw an error of type `E`; returns it.
func expectError<E: Error, T>(_ expected: E.Type, _ body: () async throws -> T, sourceLocation: SourceLocation = #_sourceLocation) async -> E? {
    do {
        let v = try await body()
        Issue.record("expected \(E.self), got \(v)", sourceLocation: sourceLocation)
        return nil
    } catch let e as E {
        return e
    } catch {
        Issue.record("expected \(E.self), got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// A QEMU a test started itself; killed by pid on every path.
final class QEMUProcess: @unchecked Sendable {
    // @unchecked: `process` is only used from the owning test.
    let process: Process
    var pid: Int32 { process.processIdentifier }

    init(_ args: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: Command.resolve(QEMU.binary))
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Waits for the process to end on its own.
    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// SIGKILL (if still running) and wait until it is reaped.
    func kill() async {
        if process.isRunning { Glibc.kill(pid, SIGKILL) }
        _ = await waitForExit(timeout: .seconds(10))
    }
}

/// Runs `body` with a QEMU started from `args`; the QEMU is killed afterwards
/// whatever happens.
func withQEMU<T>(_ args: [String], _ body: (QEMUProcess) async throws -> T) async throws -> T {
    let q = try QEMUProcess(args)
    do {
        let r = try await body(q)
        await q.kill()
        return r
    } catch {
        await q.kill()
        throw error
    }
}

/// Connects to a QMP socket that may not exist yet.
func connectQMP(_ path: String, within timeout: Duration = .seconds(10)) async throws -> QMPClient {
    let deadline = ContinuousClock.now + timeout
    while true {
        do {
            return try await QMPClient.connect(path: path, timeout: .seconds(5))
        } catch {
            if ContinuousClock.now >= deadline { throw error }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
