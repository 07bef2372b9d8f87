#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem
@testable import Guest

/// A fake guest agent listening on a unix socket, the way QEMU's chardev
/// presents the real one.
final class FakeAgent: @unchecked Sendable {
    // @unchecked: `listenFD` is immutable; `state` is guarded by `lock`.
    enum Mode {
        /// Speaks the protocol; first writes stale bytes a previous client left.
        case answers
        /// Accepts and reads, never answers (no qemu-ga in the guest).
        case silent
        /// Accepts and closes at once.
        case closes
    }

    let path: String
    let mode: Mode
    private let listenFD: Int32
    private let lock = NSLock()
    private var frozen = false
    private var clients: [Int32] = []
    private(set) var commands: [String] = []

    init(path: String, mode: Mode) throws {
        self.path = path
        self.mode = mode
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes); $0[bytes.count] = 0 }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0, listen(fd, 4) == 0 else { throw SystemError("bind", path) }
        listenFD = fd
        let t = Thread { [self] in acceptLoop() }
        t.start()
    }

    var recordedCommands: [String] {
        lock.lock()
        defer { lock.unlock() }
        return commands
    }

    func stop() {
        shutdown(listenFD, Int32(SHUT_RDWR))
        lock.lock()
        for c in clients { shutdown(c, Int32(SHUT_RDWR)) }
        lock.unlock()
        unlink(path)
    }

    deinit { close(listenFD) }

    private func acceptLoop() {
        while true {
            let c = accept(listenFD, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            switch mode {
            case .closes:
                close(c)
            case .silent, .answers:
                lock.lock()
                clients.append(c)
                lock.unlock()
                let t = Thread { [self] in serve(c) }
                t.start()
            }
        }
    }

    private func write(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        if mode == .answers {
            // Leftovers of an earlier session: a stale reply and half a message.
            write(fd, Array("{\"return\": 4242}\n{\"return\": {\"sta".utf8))
        }
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            guard mode == .answers else { continue }
            for b in buf[..<n] {
                if b == 0xFF { pending.removeAll(); continue }
                if b != 0x0A { pending.append(b); continue }
                defer { pending.removeAll() }
                guard let req = try? JSONValue.parse(pending), let cmd = req["execute"]?.stringValue else {
                    write(fd, Array("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid JSON syntax\"}}\n".utf8))
                    continue
                }
                lock.lock()
                commands.append(cmd)
                lock.unlock()
                switch cmd {
                case "guest-sync-delimited":
                    write(fd, [0xFF] + Array("{\"return\": \(req["arguments"]?["id"]?.intValue ?? 0)}\n".utf8))
                case "guest-ping":
                    write(fd, Array("{\"return\": {}}\n".utf8))
                case "guest-fsfreeze-freeze":
                    lock.lock(); frozen = true; lock.unlock()
                    write(fd, Array("{\"return\": 2}\n".utf8))
                case "guest-fsfreeze-thaw":
                    lock.lock(); let was = frozen; frozen = false; lock.unlock()
                    write(fd, Array("{\"return\": \(was ? 2 : 0)}\n".utf8))
                case "guest-fsfreeze-status":
                    lock.lock(); let f = frozen; lock.unlock()
                    write(fd, Array("{\"return\": \"\(f ? "frozen" : "thawed")\"}\n".utf8))
                default:
                    write(fd, Array("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command \(cmd) has not been found\"}}\n".utf8))
                }
            }
        }
    }
}
