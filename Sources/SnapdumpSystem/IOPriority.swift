import CShims
import Synchronization

/// The I/O scheduling priority of backup I/O, as vzdump's `ionice` sets it:
/// 0–7 best-effort levels (7 lowest, the default), 8 the idle class.
///
/// Linux keeps the I/O priority per thread, and Swift's pool threads exist
/// before a job starts, so the value is remembered here and applied by each
/// thread that does the I/O (the archive reader and writer) when it starts.
public enum IOPriority {
    private static let configured = Mutex<Int?>(nil)

    /// Remembers `ionice` for backup threads and applies it to the calling thread.
    public static func set(ionice: Int) throws {
        configured.withLock { $0 = ionice }
        try applyToCurrentThread()
    }

    /// The calling thread's priority as `ionice` spells it (0–7 best effort, 8 idle), nil for another class.
    public static func currentThread() throws -> Int? {
        let raw = snapdump_ioprio_get_self()
        if raw < 0 { throw SystemError("ioprio_get", "current thread") }
        switch raw >> 13 {
        case 3: return 8
        case 2: return Int(raw & 7)
        default: return nil
        }
    }

    /// Applies the remembered priority (if any) to the calling thread.
    public static func applyToCurrentThread() throws {
        guard let ionice = configured.withLock({ $0 }) else { return }
        let idle = ionice >= 8
        if snapdump_ioprio_set_self(idle ? 1 : 0, Int32(max(0, min(7, ionice)))) != 0 {
            throw SystemError("ioprio_set", "ionice \(ionice)")
        }
    }
}
