import Foundation
import SnapdumpSystem

/// A throw-away snapdump installation (its own `--config-dir`) with storages
/// and test-guest VMs, driven through the real `snapdump` binary as a user
/// would. `tearDown()` stops every QEMU it started — by the PID in its
/// pidfile, never by name — destroys its VMs and removes its storages' data
/// (btrfs subvolumes and read-only snapshots included: `StorageCleanup`).
/// The GuestTests' `VMHarness` shares its binary locator (`SnapdumpBinary`),
/// test guest (`TestGuestImage`), heartbeat parser (`Heartbeats`) and storage
/// cleanup with it.
public final class GuestHarness: @unchecked Sendable {
    // @unchecked: used from one test at a time.
    public let configDir: String
    public let guestDir: String
    private var storageDirs: [String] = []
    private var cephPools: [(CephFixture, String)] = []
    private var vmids: Set<Int> = []

    public init(label: String) throws {
        configDir = try Integration.scratchDirectory("harness-\(label)")
        guestDir = try GuestHarness.buildGuest()
    }

    /// Builds the test guest (idempotent) and returns its directory.
    public static func buildGuest() throws -> String {
        try TestGuestImage.files().directory
    }

    public static var repositoryRoot: String { Repository.root }

    public var checker: String { guestDir + "/snapdump-record-check" }

    /// `snapdump <args> --config-dir <ours>`.
    @discardableResult
    public func run(_ args: [String], environment: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        try SnapdumpBinary.run(args, configDir: configDir, environment: environment)
    }

    /// Like `run`, but a non-zero exit is a thrown error with the output.
    @discardableResult
    public func must(_ args: [String], environment: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        let r = try run(args, environment: environment)
        guard r.status == 0 else { throw HarnessError("snapdump \(args.joined(separator: " ")) failed: \(r)") }
        return r
    }

    /// Adds a storage whose data lives in a fresh directory under `base`.
    public func addStorage(_ type: String, _ id: String, under base: String, extra: [String] = []) throws {
        let dir = base + "/harness-\(id)-\(UUID().uuidString.prefix(6))"
        try FileSystem.createDirectory(dir)
        storageDirs.append(dir)
        try must(["storage", "add", type, id, "--path", dir] + extra)
    }

    /// Adds an rbd storage on a fresh pool of the fixture cluster (removed at teardown); returns the pool.
    @discardableResult
    public func addRBD(_ id: String, ceph: CephFixture) throws -> String {
        let pool = "harness-\(id)-\(UUID().uuidString.prefix(6).lowercased())"
        try ceph.createPool(pool)
        cephPools.append((ceph, pool))
        try must(ceph.storageAddArguments(id, pool: pool))
        return pool
    }

    public func addZFSPool(_ id: String, pool: String) throws {
        try must(["storage", "add", "zfspool", id, "--pool", pool])
    }

    /// Creates VM `vmid` running the test guest with a new disk `storage:size`, and starts it.
    public func startGuest(_ vmid: Int, disk: String, agent: Bool = true, intervalMs: Int = 10) async throws {
        try must(["vm", "create", "\(vmid)", "--name", "guest\(vmid)", "--memory", "256", "--scsi0", disk,
                  "--agent", agent ? "1" : "0", "--kernel", guestDir + "/vmlinuz", "--initrd", guestDir + "/initramfs.gz",
                  "--append", "console=ttyS0 quiet panic=-1 snapdump.interval_ms=\(intervalMs)"])
        vmids.insert(vmid)
        try must(["vm", "start", "\(vmid)"])
        _ = try await waitForHeartbeat(vmid, above: 0, timeout: .seconds(90))
    }

    public func console(_ vmid: Int) -> String { configDir + "/run/qemu/\(vmid).serial.log" }

    /// The last `HB <seq>` in the guest's console, or 0.
    public func lastHeartbeat(_ vmid: Int) -> Int {
        Heartbeats.last(inConsole: console(vmid))
    }

    /// Waits until the guest's heartbeat exceeds `above`.
    public func waitForHeartbeat(_ vmid: Int, above: Int, timeout: Duration) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let hb = lastHeartbeat(vmid)
            if hb > above { return hb }
            try await Task.sleep(for: .milliseconds(100))
        }
        let tail = ((try? FileSystem.readText(console(vmid))) ?? "").split(whereSeparator: \.isNewline).suffix(10).joined(separator: "\n")
        throw HarnessError("VM \(vmid): no heartbeat above \(above) within \(timeout); console tail:\n\(tail)")
    }

    /// The QEMU pid from the VM's pidfile, if that process is alive and is ours.
    public func qemuPID(_ vmid: Int) -> Int32? {
        guard let text = try? FileSystem.readText(configDir + "/run/qemu/\(vmid).pid"),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), Processes.isAlive(pid) else { return nil }
        let cmdline = (try? FileSystem.readText("/proc/\(pid)/cmdline")) ?? ""
        return cmdline.contains(configDir) ? pid : nil
    }

    /// Record checker on a raw image (qcow2 is converted to a temporary raw copy first).
    public func checkRecords(volume: String) throws -> [String: String] {
        var path = try must(["volume", "path", volume]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        var tmp: String?
        if path.hasSuffix(".qcow2") || path.hasPrefix("rbd:") {
            // The checker reads files: a raw copy (an RBD image through QEMU's librbd driver).
            tmp = configDir + "/check-\(UUID().uuidString.prefix(6)).raw"
            try Command.run(["qemu-img", "convert", "-U", "-f", path.hasPrefix("rbd:") ? "raw" : "qcow2", "-O", "raw", path, tmp!])
            path = tmp!
        }
        defer { if let tmp { try? FileSystem.remove(tmp) } }
        let out = try Command.capture([checker, path])
        guard out.status == 0 || out.status == 1 else { throw HarnessError("record checker failed on \(path): \(out.stderr)") }
        var result: [String: String] = [:]
        for line in out.stdout.split(separator: "\n") {
            if let eq = line.firstIndex(of: "=") { result[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
        }
        return result
    }

    public func registerVM(_ vmid: Int) { vmids.insert(vmid) }

    /// Kills every QEMU of this config dir (`GuestCleanup`), destroys our VMs, removes storage data and the config dir.
    public func tearDown() {
        GuestCleanup.killQEMUs(runDir: configDir + "/run")
        for vmid in vmids.sorted() {
            _ = try? run(["vm", "unlock", "\(vmid)"])
            _ = try? run(["vm", "destroy", "\(vmid)"])
        }
        // vm destroy freed the volumes; what is left (a killed run's read-only snapshot) goes too.
        for dir in storageDirs {
            StorageCleanup.remove(dir)
        }
        for (ceph, pool) in cephPools { ceph.removePool(pool) }
        try? FileManager.default.removeItem(atPath: configDir)
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
