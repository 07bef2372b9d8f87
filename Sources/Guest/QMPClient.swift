import Foundation

/// A client for the QEMU Machine Protocol on a unix socket.
///
/// `connect` reads QEMU's greeting and negotiates capabilities. Commands
/// carry a request `id`, so any number may be in flight: replies are routed
/// to their callers whatever order they arrive in, and events interleaved
/// with them go to the event subscribers and waiters. When the connection
/// drops, every pending caller gets `.connectionClosed`; nothing waits
/// without a timeout.
///
/// Reading happens on a dedicated thread (see `SocketConnection`); this
/// actor owns the connection state.
public actor QMPClient {
    public struct Greeting: Sendable, Equatable {
        /// `{"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": …}`
        public var version: JSONValue
        public var capabilities: [String]

        /// "7.2.22", or nil when the greeting carries no version.
        public var qemuVersion: String? {
            guard let q = version["qemu"], let ma = q["major"]?.intValue, let mi = q["minor"]?.intValue else { return nil }
            return "\(ma).\(mi).\(q["micro"]?.intValue ?? 0)"
        }
    }

    /// How many past events `waitForEvent(after:)` can still see.
    public static let eventHistoryLimit = 256

    /// The socket path or label this client was connected with (for messages).
    public nonisolated let label: String
    private let connection: SocketConnection

    public private(set) var greeting: Greeting?
    private var greetingMessage: JSONValue?
    private var greetingWaiter: CheckedContinuation<JSONValue, any Error>?
    /// Set once the connection is unusable; later calls fail with `.connectionClosed`.
    private var failure: QMPError?

    private struct Pending {
        var command: String
        var continuation: CheckedContinuation<JSONValue, any Error>
    }
    private var pending: [String: Pending] = [:]
    private var pendingOrder: [String] = []
    private var nextID = 1
    private var timers: [String: Task<Void, Never>] = [:]

    private struct EventWaiter {
        var after: Int
        var predicate: @Sendable (QMPEvent) -> Bool
        var continuation: CheckedContinuation<QMPEvent, any Error>
        var what: String
    }
    private var eventCount = 0
    private var history: [QMPEvent] = []
    private var subscribers: [Int: AsyncStream<QMPEvent>.Continuation] = [:]
    private var eventWaiters: [Int: EventWaiter] = [:]
    private var nextToken = 0

    private init(connection: SocketConnection, label: String) {
        self.connection = connection
        self.label = label
    }

    deinit { connection.close() }

    /// Connects to QEMU's QMP socket at `path`, reads the greeting and sends
    /// `qmp_capabilities`, all within `timeout`.
    public static func connect(path: String, timeout: Duration = .seconds(5)) async throws -> QMPClient {
        let deadline = ContinuousClock.now + timeout
        let connection: SocketConnection
        do {
            connection = try await SocketConnection.connect(path: path, timeout: timeout, label: "qmp")
        } catch let e as SocketConnection.TransportError {
            throw QMPError.unavailable(QMPClient.describe(e))
        }
        let client = QMPClient(connection: connection, label: path)
        try await client.negotiate(deadline: deadline)
        return client
    }

    /// Takes over an already connected stream socket (a socketpair end in
    /// tests) and negotiates as `connect(path:)` does.
    public static func connect(adoptingSocket fd: Int32, label: String = "qmp", timeout: Duration = .seconds(5)) async throws -> QMPClient {
        let client = QMPClient(connection: SocketConnection(adopting: fd, label: "qmp"), label: label)
        try await client.negotiate(deadline: ContinuousClock.now + timeout)
        return client
    }

    private func negotiate(deadline: Deadline) async throws {
        startReading()
        do {
            let message = try await waitForGreeting(timeout: deadline.remaining)
            let qmp = message["QMP"] ?? .null
            greeting = Greeting(version: qmp["version"] ?? .null,
                                capabilities: qmp["capabilities"]?.arrayValue?.compactMap(\.stringValue) ?? [])
            _ = try await execute("qmp_capabilities", timeout: max(deadline.remaining, .milliseconds(1)))
        } catch {
            close()
            throw error
        }
    }

    private func startReading() {
        connection.startReading { [weak self] incoming in
            guard let self else { return }
            // Hand each message to the actor and wait until it is handled:
            // keeps stream order and bounds what is in flight to one message.
            let done = DispatchSemaphore(value: 0)
            Task {
                await self.deliver(incoming)
                done.signal()
            }
            done.wait()
        }
    }

    // MARK: Commands

    /// Runs `command` and returns its `return` value. Throws
    /// `.commandFailed` when QEMU refuses it, `.timeout(command)` when no
    /// reply comes within `timeout`, `.connectionClosed` when the connection
    /// ends first.
    public func execute(_ command: String, arguments: [String: JSONValue]? = nil, timeout: Duration = .seconds(30)) async throws -> JSONValue {
        if failure != nil { throw QMPError.connectionClosed }
        let id = "snapdump-\(nextID)"
        nextID += 1
        var message: [String: JSONValue] = ["execute": .string(command), "id": .string(id)]
        if let arguments { message["arguments"] = .object(arguments) }
        let bytes = Array((JSONValue.object(message).encoded() + "\n").utf8)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<JSONValue, any Error>) in
                pending[id] = Pending(command: command, continuation: c)
                pendingOrder.append(id)
                timers[id] = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    if Task.isCancelled { return }
                    await self?.finish(id, .failure(QMPError.timeout(command)))
                }
                connection.send(bytes) { [weak self] error in
                    guard error != nil, let self else { return }
                    Task { await self.finish(id, .failure(QMPError.connectionClosed)) }
                }
            }
        } onCancel: {
            Task { await self.finish(id, .failure(CancellationError())) }
        }
    }

    /// Resolves the pending command `id` (no-op when already resolved).
    private func finish(_ id: String, _ result: Result<JSONValue, any Error>) {
        guard let p = pending.removeValue(forKey: id) else { return }
        pendingOrder.removeAll { $0 == id }
        timers.removeValue(forKey: id)?.cancel()
        p.continuation.resume(with: result)
    }

    // MARK: Events

    /// A new subscription to every event from now on. The stream keeps at
    /// most `bufferingNewest` undelivered events (older ones are dropped) and
    /// finishes when the connection ends.
    public func events(bufferingNewest limit: Int = 256) -> AsyncStream<QMPEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: QMPEvent.self, bufferingPolicy: .bufferingNewest(limit))
        if failure != nil {
            continuation.finish()
            return stream
        }
        let token = nextToken
        nextToken += 1
        subscribers[token] = continuation
        continuation.onTermination = { [weak self] _ in
            Task { await self?.removeSubscriber(token) }
        }
        return stream
    }

    private func removeSubscriber(_ token: Int) {
        subscribers.removeValue(forKey: token)
    }

    /// A mark for `waitForEvent(after:)`: take it before the command that
    /// causes the event, so an event arriving before the wait starts is
    /// not missed.
    public var eventMark: Int { eventCount }

    /// Waits for the first event after `mark` (default: from now on) that
    /// matches `predicate`; throws `.timeout` after `timeout`, or
    /// `.connectionClosed` when the connection ends first.
    public func waitForEvent(after mark: Int? = nil, timeout: Duration, description: String = "event",
                             where predicate: @escaping @Sendable (QMPEvent) -> Bool) async throws -> QMPEvent {
        let mark = mark ?? eventCount
        let firstSeq = eventCount - history.count + 1
        for (i, e) in history.enumerated() where firstSeq + i > mark && predicate(e) {
            return e
        }
        if let failure { throw failure == .connectionClosed ? QMPError.connectionClosed : failure }
        let token = nextToken
        nextToken += 1
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<QMPEvent, any Error>) in
                eventWaiters[token] = EventWaiter(after: mark, predicate: predicate, continuation: c, what: description)
                let timerKey = "event-\(token)"
                timers[timerKey] = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    if Task.isCancelled { return }
                    await self?.finishWaiter(token, .failure(QMPError.timeout(description)))
                }
            }
        } onCancel: {
            Task { await self.finishWaiter(token, .failure(CancellationError())) }
        }
    }

    /// Waits for the next event named `name` (after `mark`) matching `predicate`.
    public func waitForEvent(_ name: String, after mark: Int? = nil, timeout: Duration,
                             where predicate: @escaping @Sendable (QMPEvent) -> Bool = { _ in true }) async throws -> QMPEvent {
        try await waitForEvent(after: mark, timeout: timeout, description: name) { $0.name == name && predicate($0) }
    }

    private func finishWaiter(_ token: Int, _ result: Result<QMPEvent, any Error>) {
        guard let w = eventWaiters.removeValue(forKey: token) else { return }
        timers.removeValue(forKey: "event-\(token)")?.cancel()
        w.continuation.resume(with: result)
    }

    // MARK: Closing

    /// Closes the connection; pending commands and waiters fail with
    /// `.connectionClosed`.
    public func close() {
        fail(with: .connectionClosed)
        connection.close()
    }

    /// Whether the connection is still usable.
    public var isConnected: Bool { failure == nil }

    private func fail(with error: QMPError) {
        if failure == nil { failure = error }
        if let g = greetingWaiter {
            greetingWaiter = nil
            g.resume(throwing: error)
        }
        for id in pendingOrder { finish(id, .failure(error)) }
        for token in Array(eventWaiters.keys) { finishWaiter(token, .failure(error)) }
        for t in timers.values { t.cancel() }
        timers.removeAll()
        for s in subscribers.values { s.finish() }
        subscribers.removeAll()
    }

    private func protocolFailure(_ detail: String) {
        fail(with: .protocolError(detail))
        connection.close()
    }

    // MARK: Incoming

    private func waitForGreeting(timeout: Duration) async throws -> JSONValue {
        if let greetingMessage { return greetingMessage }
        if let failure { throw failure }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<JSONValue, any Error>) in
            greetingWaiter = c
            timers["greeting"] = Task { [weak self] in
                try? await Task.sleep(for: timeout)
                if Task.isCancelled { return }
                await self?.greetingTimedOut()
            }
        }
    }

    private func greetingTimedOut() {
        guard let g = greetingWaiter else { return }
        greetingWaiter = nil
        g.resume(throwing: QMPError.timeout("greeting"))
    }

    private func deliver(_ incoming: SocketConnection.Incoming) {
        switch incoming {
        case .closed(let reason):
            if case .messageTooLarge(let n) = reason {
                fail(with: .protocolError("message longer than \(n) bytes"))
            } else {
                fail(with: .connectionClosed)
            }
        case .sentinel:
            if failure == nil { protocolFailure("unexpected 0xFF byte in the stream") }
        case .message(let bytes):
            guard failure == nil else { return }
            let message: JSONValue
            do {
                message = try JSONValue.parse(bytes)
            } catch {
                protocolFailure("malformed JSON: '\(String(decoding: bytes.prefix(200), as: UTF8.self))'")
                return
            }
            guard case .object = message else {
                protocolFailure("expected a JSON object, got '\(message.encoded().prefix(200))'")
                return
            }
            if greetingMessage == nil {
                guard message["QMP"] != nil else {
                    protocolFailure("expected the QMP greeting, got '\(message.encoded().prefix(200))'")
                    return
                }
                greetingMessage = message
                timers.removeValue(forKey: "greeting")?.cancel()
                if let g = greetingWaiter {
                    greetingWaiter = nil
                    g.resume(returning: message)
                }
            } else if let event = QMPEvent(message) {
                handle(event)
            } else if message["return"] != nil || message["error"] != nil {
                handleReply(message)
            } else {
                protocolFailure("unexpected message '\(message.encoded().prefix(200))'")
            }
        }
    }

    private func handleReply(_ message: JSONValue) {
        let id: String?
        if let given = message["id"] {
            id = given.stringValue
        } else {
            // QEMU answers without an id only when it could not parse our
            // request; that is the oldest one still waiting.
            id = pendingOrder.first
        }
        // A reply for a command that already timed out is dropped.
        guard let id, pending[id] != nil else { return }
        if let error = message["error"] {
            let cls = error["class"]?.stringValue ?? "GenericError"
            let desc = error["desc"]?.stringValue ?? error.encoded()
            finish(id, .failure(QMPError.commandFailed(class: cls, desc: desc)))
        } else {
            finish(id, .success(message["return"] ?? .null))
        }
    }

    private func handle(_ event: QMPEvent) {
        eventCount += 1
        history.append(event)
        if history.count > QMPClient.eventHistoryLimit { history.removeFirst(history.count - QMPClient.eventHistoryLimit) }
        for s in subscribers.values { s.yield(event) }
        for (token, w) in eventWaiters where eventCount > w.after && w.predicate(event) {
            finishWaiter(token, .success(event))
        }
    }

    static func describe(_ e: SocketConnection.TransportError) -> String {
        switch e {
        case let .unavailable(path, err): return "\(path): \(String(cString: strerror(err)))"
        case .connectTimeout(let path): return "\(path): connect timed out"
        case .pathTooLong(let path): return "\(path): socket path too long"
        case let .system(call, err): return "\(call): \(String(cString: strerror(err)))"
        case .sendTimeout: return "send timed out"
        case .closed: return "connection closed"
        }
    }
}
