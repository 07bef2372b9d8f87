#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// Decides between KVM and TCG.
///
/// `/dev/kvm` existing is not enough: on nested hosts it opens, but guests
/// crawl (SeaBIOS's option ROMs take seconds, a Linux kernel never prints).
/// The probe therefore boots a 46-byte multiboot image that writes to QEMU's
/// `isa-debug-exit` port at once, under `-accel kvm` and, beside it, under
/// TCG: QEMU exits with status 133 in about 0.1 s where KVM works (and under
/// TCG). A broken KVM takes seconds: killed after `timeout` (2 s), or, where
/// it finishes just inside it, far slower than the same image under TCG
/// (measured on the project's machines: KVM 1.8–2.0 s against TCG 0.1 s,
/// and a Linux guest under that KVM printed nothing in 60 s), so TCG is
/// chosen. The answer is cached in `<runDir>/accel` (runtime state, gone on
/// reboot); `SNAPDUMP_ACCEL=kvm|tcg` overrides probe and cache.
public enum AcceleratorProbe {
    public struct Result: Sendable, Equatable {
        public var accelerator: Accelerator
        /// Why: "SNAPDUMP_ACCEL", "cached", "probe: …".
        public var reason: String
    }

    public static let environmentVariable = "SNAPDUMP_ACCEL"
    public static func cacheFile(_ paths: SnapdumpPaths) -> String { paths.runDir + "/accel" }

    /// The accelerator to use: override, cache, or a fresh probe (cached).
    public static func resolve(paths: SnapdumpPaths, environment: [String: String] = ProcessInfo.processInfo.environment,
                               qemuBinary: String = "qemu-system-x86_64", timeout: Duration = .seconds(2)) async throws -> Result {
        if let forced = environment[environmentVariable], !forced.isEmpty {
            guard let a = Accelerator(rawValue: forced) else {
                throw ConfigError(file: environmentVariable, "unknown accelerator '\(forced)' (kvm or tcg)")
            }
            return Result(accelerator: a, reason: environmentVariable)
        }
        let cache = cacheFile(paths)
        if let text = try? FileSystem.readText(cache),
           let a = Accelerator(rawValue: text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return Result(accelerator: a, reason: "cached in \(cache)")
        }
        try FileSystem.createDirectory(paths.runDir)
        let probe = await probeKVM(qemuBinary: qemuBinary, workDirectory: paths.runDir, timeout: timeout)
        let result = Result(accelerator: probe.works ? .kvm : .tcg, reason: "probe: \(probe.detail)")
        try? FileSystem.writeAtomically(cache, result.accelerator.rawValue + "\n")
        return result
    }

    /// Whether KVM runs a guest promptly. Never takes much longer than
    /// `timeout`; the probe QEMUs are killed by pid on every path.
    public static func probeKVM(qemuBinary: String = "qemu-system-x86_64", workDirectory: String,
                                timeout: Duration = .seconds(2)) async -> (works: Bool, detail: String) {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return (false, "/dev/kvm: \(String(cString: strerror(errno)))") }
        close(fd)

        let image = "\(workDirectory)/accel-probe.\(getpid()).\(UInt32.random(in: 0...UInt32.max)).img"
        do {
            let f = try File.createNew(image)
            try f.writeAll(multibootImage)
            try f.close()
        } catch {
            return (false, "cannot write probe image: \(error)")
        }
        defer { try? FileSystem.remove(image) }

        // Both at once: the TCG run is the yardstick of this machine's speed, at no cost in time.
        async let tcg = run(qemuBinary, accel: "tcg", image: image, timeout: timeout)
        let kvm = await run(qemuBinary, accel: "kvm", image: image, timeout: timeout)
        return decide(kvm: kvm, tcg: await tcg, timeout: timeout)
    }

    /// How one probe QEMU ended: its exit and how long it took, nil if killed at `timeout`; or why it did not start.
    typealias Run = Swift.Result<(exit: Spawn.Exit, elapsed: Duration)?, any Error>

    private static func run(_ qemuBinary: String, accel: String, image: String, timeout: Duration) async -> Run {
        let argv = [qemuBinary, "-accel", accel, "-machine", "q35", "-m", "32", "-nodefaults", "-display", "none",
                    "-monitor", "none", "-no-user-config", "-kernel", image, "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
        let pid: pid_t
        do {
            pid = try Spawn.start(argv, environment: ProcessInfo.processInfo.environment)
        } catch {
            return .failure(error)
        }
        let started = ContinuousClock.now
        guard let exit = await Spawn.wait(pid, until: started + timeout) else {
            await Spawn.killAndReap(pid)
            return .success(nil)
        }
        return .success((exit, ContinuousClock.now - started))
    }

    /// KVM, unless its guest did not finish, failed, or took more than `slowerThanTCG` times
    /// as long as the same guest under TCG (and more than `floor`: QEMU's own start-up
    /// on a loaded host is no sign of a broken KVM).
    static let slowerThanTCG = 4
    static let floor: Duration = .milliseconds(500)

    static func decide(kvm: Run, tcg: Run, timeout: Duration) -> (works: Bool, detail: String) {
        let k: (exit: Spawn.Exit, elapsed: Duration)?
        switch kvm {
        case .failure(let e): return (false, "\(e)")
        case .success(let r): k = r
        }
        guard let k else { return (false, "a KVM guest made no progress within \(timeout.shortDescription) (KVM unusable here)") }
        guard k.exit == .exited(133) else { return (false, "KVM probe ended with \(k.exit) after \(k.elapsed.shortDescription)") }
        if case .success(let t?) = tcg, t.exit == .exited(133), k.elapsed > floor, k.elapsed > t.elapsed * slowerThanTCG {
            return (false, "a KVM guest ran in \(k.elapsed.shortDescription), the same under TCG in \(t.elapsed.shortDescription):"
                    + " KVM is too slow here to run guests (nested, without hardware assist?)")
        }
        return (true, "a KVM guest ran in \(k.elapsed.shortDescription)")
    }

    /// A multiboot (a.out kludge) image loaded at 1 MiB whose code writes
    /// 'K' to COM1 and 0x42 to the isa-debug-exit port (QEMU exits with
    /// (0x42 << 1) | 1 = 133), then halts.
    static let multibootImage: [UInt8] = {
        let code: [UInt8] = [
            0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
            0xB0, 0x4B,             // mov al, 'K'
            0xEE,                   // out dx, al
            0xB0, 0x42,             // mov al, 0x42
            0xE6, 0xF4,             // out 0xf4, al
            0xF4,                   // hlt
            0xEB, 0xFD,             // jmp hlt
        ]
        return MultibootImage.make(code: code)
    }()
}
