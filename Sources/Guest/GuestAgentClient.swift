import Foundation

/// A client for the QEMU guest agent (`qemu-ga`) on its host-side unix
/// socket (`<rundir>/qemu/<vmid>.qga`).
///
/// The agent protocol has no request ids and the channel may hold stale
/// bytes from an earlier client, so every new connection first sends a 0xFF
/// byte (resets the agent's parser) and `guest-sync-delimited` with a random
/// id, discards everything up to the agent's 0xFF sentinel, and waits for its
/// own id to come back. Commands then run one at a time.
///
/// Nothing waits unbounded: a missing socket fails at once, a silent agent
/// within `syncTimeout` (3 s). After a timeout the connection is dropped, so
/// the next call reconnects and syncs again.
public actor GuestAgentClient {
    public enum FreezeStatus: String, Sendable, Equatable {
        case thawed, frozen
    }

    public nonisolated let socketPath: String
    /// Upper bound for connecting and syncing, whatever a command's timeout.
    public nonisolated let syncTimeout: Duration

    private var connection: SocketConnection?
    private var generation = 0
    private var synced = false
    private var inbox: [SocketConnection.Incoming] = []
    private static let inboxLimit = 64
    private var waiter: CheckedContinuation<SocketConnection.Incoming, any Error>?
    private var waiterTimer: Task<Void, Never>?
    private var busy = false
    private var queue: [CheckedContinuation<Void, Never>] = []

    public init(socketPath: String, syncTimeout: Duration = .seconds(3)) {
        self.socketPath = socketPath
        self.syncTimeout = syncTimeout
    }

    deinit { connection?.close() }

    // MARK: Commands

    /// `guest-ping`: succeeds when the agent answers within `timeout`.
    public func ping(timeout: Duration = .seconds(3)) async throws {
        _ = try await execute("guest-ping", timeout: timeout)
    }

    /// `guest-fsfreeze-freeze`: freezes the guest's filesystems and returns
    /// how many were frozen. Freezing can take long on a busy guest; the
    /// sync before it is still bounded by `syncTimeout`. After a timeout or a
    /// dropped connection the guest may be frozen anyway: thaw it.
    public func fsfreezeFreeze(timeout: Duration = .seconds(60)) async throws -> Int {
        try await intResult("guest-fsfreeze-freeze", timeout: timeout)
    }

    /// `guest-fsfreeze-thaw`: returns how many filesystems were thawed.
    public func fsfreezeThaw(timeout: Duration = .seconds(30)) async throws -> Int {
        try await intResult("guest-fsfreeze-thaw", timeout: timeout)
    }

    /// `guest-fsfreeze-status`.
    public func fsfreezeStatus(timeout: Duration = .seconds(3)) async throws -> FreezeStatus {
        let r = try await execute("guest-fsfreeze-status", timeout: timeout)
        guard let s = r.stringValue, let status = FreezeStatus(rawValue: s) else {
            throw GuestAgentError.protocolError("unexpected fsfreeze status '\(r.encoded())'")
        }
        return status
    }

    private func intResult(_ command: String, timeout: Duration) async throws -> Int {
        let r = try await execute(command, timeout: timeout)
        guard let n = r.intValue else { throw GuestAgentError.protocolError("'\(command)' returned '\(r.encoded())', expected a number") }
        return Int(n)
    }

    /// Runs any agent command and returns its `return` value. The whole call
    /// (connect, sync, command) takes at most `timeout`.
    public func execute(_ command: String, arguments: [String: JSONValue]? = nil, timeout: Duration) async throws -> JSONValue {
        await acquire()
        defer { release() }
        let deadline = ContinuousClock.now + timeout
        do {
            try await ensureSynced(deadline: deadline, command: command, timeout: timeout)
            var message: [String: JSONValue] = ["execute": .string(command)]
            if let arguments { message["arguments"] = .object(arguments) }
            try await send(Array((JSONValue.object(message).encoded() + "\n").utf8))
            while true {
                let incoming = try await next(deadline: deadline, command: command, timeout: timeout)
                guard case .message(let bytes) = incoming else { continue }
                let reply = try parse(bytes)
                if let error = reply["error"] {
                    throw GuestAgentError.commandFailed(class: error["class"]?.stringValue ?? "GenericError",
                                                        desc: error["desc"]?.stringValue ?? error.encoded())
                }
                guard let value = reply["return"] else {
                    throw GuestAgentError.protocolError("unexpected answer '\(reply.encoded().prefix(200))'")
                }
                return value
            }
        } catch let e as GuestAgentError {
            if case .commandFailed = e {} else { disconnect() }
            throw e
        } catch {
            disconnect()
            throw error
        }
    }

    /// Drops the connection (the next command reconnects).
    public func close() {
        disconnect()
    }

    // MARK: Connection and sync

    private func ensureSynced(deadline: Deadline, command: String, timeout: Duration) async throws {
        if connection != nil && synced { return }
        let syncDeadline = min(deadline, ContinuousClock.now + syncTimeout)
        if connection == nil {
            let c: SocketConnection
            do {
                c = try await SocketConnection.connect(path: socketPath, timeout: syncDeadline.remaining, label: "qga")
            } catch let e as SocketConnection.TransportError {
                if case .connectTimeout = e { throw GuestAgentError.timeout(command: command, seconds: timeout.seconds) }
                throw GuestAgentError.unavailable(path: socketPath, reason: QMPClient.describe(e))
            }
            generation += 1
            let gen = generation
            connection = c
            synced = false
            inbox.removeAll()
            c.startReading(maxMessage: 1 << 20) { [weak self] incoming in
                guard let self else { return }
                let done = DispatchSemaphore(value: 0)
                Task {
                    await self.deliver(incoming, generation: gen)
                    done.signal()
                }
                done.wait()
            }
        }
        let id = Int64.random(in: 1...Int64(Int32.max))
        let request = JSONValue.object(["execute": "guest-sync-delimited", "arguments": ["id": .int(id)]])
        try await send([0xFF] + Array((request.encoded() + "\n").utf8))
        var sawSentinel = false
        while true {
            let incoming = try await next(deadline: syncDeadline, command: command, timeout: min(timeout, syncTimeout))
            switch incoming {
            case .sentinel:
                sawSentinel = true
            case .message(let bytes):
                // Stale data before the sentinel, or answers to earlier syncs.
                guard sawSentinel, let reply = try? JSONValue.parse(bytes) else { continue }
                if reply["return"]?.intValue == id {
                    synced = true
                    return
                }
            case .closed:
                throw GuestAgentError.connectionClosed
            }
        }
    }

    private func send(_ bytes: [UInt8]) async throws {
        guard let connection else { throw GuestAgentError.connectionClosed }
        do {
            try await connection.send(bytes)
        } catch {
            throw GuestAgentError.connectionClosed
        }
    }

    private func parse(_ bytes: [UInt8]) throws -> JSONValue {
        do {
            return try JSONValue.parse(bytes)
        } catch {
            throw GuestAgentError.protocolError("malformed JSON '\(String(decoding: bytes.prefix(200), as: UTF8.self))'")
        }
    }

    private func disconnect() {
        connection?.close()
        connection = nil
        synced = false
        inbox.removeAll()
        generation += 1
        if let w = waiter {
            waiter = nil
            waiterTimer?.cancel()
            w.resume(throwing: GuestAgentError.connectionClosed)
        }
    }

    // MARK: Incoming

    private func deliver(_ incoming: SocketConnection.Incoming, generation gen: Int) {
        guard gen == generation else { return }
        if case .closed = incoming {
            connection = nil
            synced = false
        }
        if let w = waiter {
            waiter = nil
            waiterTimer?.cancel()
            w.resume(returning: incoming)
            return
        }
        inbox.append(incoming)
        if inbox.count > GuestAgentClient.inboxLimit { inbox.removeFirst(inbox.count - GuestAgentClient.inboxLimit) }
    }

    /// The next incoming item, or `.timeout` at the deadline; `.closed` is
    /// turned into `.connectionClosed`.
    private func next(deadline: Deadline, command: String, timeout: Duration) async throws -> SocketConnection.Incoming {
        let item: SocketConnection.Incoming
        if !inbox.isEmpty {
            item = inbox.removeFirst()
        } else {
            if connection == nil { throw GuestAgentError.connectionClosed }
            item = try await withCheckedThrowingContinuation { (c: CheckedContinuation<SocketConnection.Incoming, any Error>) in
                waiter = c
                let remaining = deadline.remaining
                waiterTimer = Task { [weak self] in
                    try? await Task.sleep(for: remaining)
                    if Task.isCancelled { return }
                    await self?.waiterTimedOut(GuestAgentError.timeout(command: command, seconds: timeout.seconds))
                }
            }
        }
        if case .closed = item { throw GuestAgentError.connectionClosed }
        return item
    }

    private func waiterTimedOut(_ error: GuestAgentError) {
        guard let w = waiter else { return }
        waiter = nil
        w.resume(throwing: error)
    }

    // MARK: One command at a time

    private func acquire() async {
        if !busy {
            busy = true
            return
        }
        await withCheckedContinuation { queue.append($0) }
    }

    private func release() {
        if queue.isEmpty {
            busy = false
        } else {
            queue.removeFirst().resume()
        }
    }
}
