#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem

/// A connected unix stream socket, shared by `QMPClient` and
/// `GuestAgentClient`.
///
/// Reading happens on a dedicated thread (blocking `read`), never on the
/// cooperative pool; it splits the byte stream into newline-terminated
/// messages and reports the guest agent's 0xFF sentinel separately. Writes go
/// through a private serial queue with a send timeout. `close()` shuts the
/// socket down, which ends the reader; the descriptor itself is closed when
/// the last user lets go (reader thread and pending writes hold a reference),
/// so it is never closed under a running `read` or `send`.
final class SocketConnection: @unchecked Sendable {
    // @unchecked: `fd` and `label` are immutable; `isShutDown` is guarded by `lock`.

    enum Incoming: Sendable {
        /// One message without its line terminator.
        case message([UInt8])
        /// A 0xFF byte (guest-sync-delimited): discard what came before.
        case sentinel
        /// The stream ended; no more input follows.
        case closed(CloseReason)
    }

    enum CloseReason: Sendable, Equatable {
        case endOfFile
        case readError(Int32)
        case messageTooLarge(Int)
        case closedLocally
    }

    enum TransportError: Error, Equatable {
        /// The socket does not exist or nobody listens (errno of connect).
        case unavailable(path: String, errno: Int32)
        case connectTimeout(path: String)
        case sendTimeout
        case closed
        case pathTooLong(String)
        case system(String, Int32)
    }

    let fd: Int32
    let label: String
    private let writeQueue: DispatchQueue
    private let lock = NSLock()
    private var isShutDown = false

    init(adopting fd: Int32, label: String) {
        self.fd = fd
        self.label = label
        self.writeQueue = DispatchQueue(label: "snapdump.\(label).write")
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    /// Connects to the unix socket at `path`, waiting at most `timeout` (a
    /// full listen backlog makes connect return EAGAIN; we retry until the
    /// deadline). A missing socket or a refused connection fails at once.
    static func connect(path: String, timeout: Duration, label: String) async throws -> SocketConnection {
        let deadline = ContinuousClock.now + timeout
        return try await Blocking.run("\(label)-connect") {
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: addr.sun_path)
            guard bytes.count < capacity else { throw TransportError.pathTooLong(path) }
            withUnsafeMutableBytes(of: &addr.sun_path) { buf in
                buf.copyBytes(from: bytes)
                buf[bytes.count] = 0
            }
            while true {
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                if fd < 0 { throw TransportError.system("socket", errno) }
                let r = withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
                let err = errno
                if r == 0 || err == EINPROGRESS {
                    if r != 0 {
                        // Wait for the connect to finish.
                        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                        let ms = Int32(max(1, deadline.remaining.seconds * 1000))
                        if poll(&pfd, 1, ms) <= 0 {
                            Glibc.close(fd)
                            throw TransportError.connectTimeout(path: path)
                        }
                        var soerr: Int32 = 0
                        var len = socklen_t(MemoryLayout<Int32>.size)
                        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len)
                        if soerr != 0 {
                            Glibc.close(fd)
                            throw TransportError.unavailable(path: path, errno: soerr)
                        }
                    }
                    // Back to blocking mode: the reader thread blocks in read().
                    let flags = fcntl(fd, F_GETFL)
                    _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
                    return SocketConnection(adopting: fd, label: label)
                }
                Glibc.close(fd)
                if (err == EAGAIN || err == EINTR) && !deadline.hasPassed {
                    usleep(20_000)
                    continue
                }
                if err == EAGAIN { throw TransportError.connectTimeout(path: path) }
                throw TransportError.unavailable(path: path, errno: err)
            }
        }
    }

    /// Starts the reader thread. `handler` is called on that thread, one
    /// message at a time, in stream order; the last call is `.closed`.
    func startReading(maxMessage: Int = 16 << 20, handler: @escaping @Sendable (Incoming) -> Void) {
        let t = Thread { [self] in self.readLoop(maxMessage: maxMessage, handler: handler) }
        t.name = "snapdump-\(label)-reader"
        t.start()
    }

    private func readLoop(maxMessage: Int, handler: @Sendable (Incoming) -> Void) {
        var partial: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var reason = CloseReason.endOfFile
        reading: while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                reason = .readError(errno)
                break
            }
            if n == 0 { break }
            for b in buffer[0..<n] {
                switch b {
                case 0xFF:
                    partial.removeAll(keepingCapacity: true)
                    handler(.sentinel)
                case 0x0A:
                    while let last = partial.last, last == 0x0D || last == 0x20 || last == 0x09 { partial.removeLast() }
                    if !partial.isEmpty { handler(.message(partial)) }
                    partial.removeAll(keepingCapacity: true)
                default:
                    partial.append(b)
                    if partial.count > maxMessage {
                        reason = .messageTooLarge(maxMessage)
                        break reading
                    }
                }
            }
        }
        lock.lock()
        if isShutDown && reason == .endOfFile { reason = .closedLocally }
        isShutDown = true
        lock.unlock()
        shutdown(fd, Int32(SHUT_RDWR))
        handler(.closed(reason))
    }

    /// Writes all of `bytes`; fails with `.closed` once the connection is
    /// shut down or the peer went away, `.sendTimeout` when the peer does
    /// not read for 5 s.
    func send(_ bytes: [UInt8]) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            writeQueue.async { c.resume(with: Result { try self.sendBlocking(bytes) }) }
        }
    }

    /// Like `send`, reporting the outcome to `completion` (on the write
    /// queue) instead of suspending the caller.
    func send(_ bytes: [UInt8], completion: @escaping @Sendable ((any Error)?) -> Void) {
        writeQueue.async {
            do { try self.sendBlocking(bytes); completion(nil) } catch { completion(error) }
        }
    }

    private func sendBlocking(_ bytes: [UInt8]) throws {
        lock.lock()
        let down = isShutDown
        lock.unlock()
        if down { throw TransportError.closed }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw TransportError.sendTimeout }
                throw TransportError.closed
            }
            done += n
        }
    }

    /// Shuts the socket down: the reader sees end of file and reports
    /// `.closed(.closedLocally)`; later sends fail.
    func close() {
        lock.lock()
        let already = isShutDown
        isShutDown = true
        lock.unlock()
        if !already { shutdown(fd, Int32(SHUT_RDWR)) }
    }
}
