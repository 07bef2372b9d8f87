/// What `VMLifecycle.status` reports.
public struct VMStatus: Sendable, Equatable {
    public enum State: String, Sendable, Equatable {
        case running, paused, stopped
    }

    public var vmid: Int
    public var state: State
    /// The QEMU process id, verified against /proc/<pid>/cmdline.
    public var pid: Int32?
    /// Seconds since the QEMU process started.
    public var uptime: Double?
    /// QEMU's own run state from `query-status` (`running`, `paused`,
    /// `prelaunch`, `shutdown`, `io-error`, …); nil when stopped or when QMP
    /// did not answer (another client holds the socket).
    public var qmpStatus: String?
    /// The config's `lock:`, if any.
    public var lock: String?
    public var name: String?

    public init(vmid: Int, state: State, pid: Int32? = nil, uptime: Double? = nil, qmpStatus: String? = nil,
                lock: String? = nil, name: String? = nil) {
        self.vmid = vmid
        self.state = state
        self.pid = pid
        self.uptime = uptime
        self.qmpStatus = qmpStatus
        self.lock = lock
        self.name = name
    }
}
