import Archive
import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

// Shared by HookScriptTests and FailureInjectionTests: a guest harness that can
// prefill disks before boot, a recording hook script, in-process backup jobs,
// a `snapdump backup` running in the background (for signals), and the
// invariant check that runs after every injected failure.

/// HookScriptTests and FailureInjectionTests, one after the other: each boots
/// the test guest, and only one QEMU of ours may run at a time.
@Suite("Nothing lost", .serialized)
struct NothingLostTests {}

extension GuestHarness {
    /// Creates VM `vmid` (not started): the test guest with disk `disk`, and with
    /// `fsDisk` an ext4 disk mounted in the guest, so fs-freeze has something to freeze.
    func createGuest(_ vmid: Int, disk: String, fsDisk: String? = nil, intervalMs: Int = 10) throws {
        var append = "console=ttyS0 quiet panic=-1 snapdump.interval_ms=\(intervalMs)"
        var args = ["vm", "create", "\(vmid)", "--name", "guest\(vmid)", "--memory", "256", "--scsi0", disk, "--agent", "1",
                    "--kernel", guestDir + "/vmlinuz", "--initrd", guestDir + "/initramfs.gz"]
        if let fsDisk {
            args += ["--scsi1", fsDisk]
            append += " snapdump.fsdisk=/dev/sdb"
        }
        try must(args + ["--append", append])
    }

    func bootGuest(_ vmid: Int) async throws {
        try must(["vm", "start", "\(vmid)"])
        _ = try await waitForHeartbeat(vmid, above: 0, timeout: .seconds(90))
    }

    /// The volume id of a disk (`scsi0`) in the VM config.
    func volume(_ vmid: Int, _ key: String = "scsi0") throws -> String {
        let config = try FileSystem.readText(paths.vmConfig(vmid))
        let line = try #require(config.split(separator: "\n").first { $0.hasPrefix(key + ":") })
        return String(line.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces).split(separator: ",")[0])
    }

    /// Writes `mib` MiB of random data at `offsetMiB` into a stopped VM's disk
    /// (raw: the file; qcow2: through qemu-io), so reading it takes time and space.
    func prefill(_ vmid: Int, mib: Int, atMiB offsetMiB: Int) throws {
        let path = try volumePath(try volume(vmid))
        if path.hasSuffix(".qcow2") {
            let raw = configDir + "/prefill.raw"
            try Command.run(["dd", "if=/dev/urandom", "of=\(raw)", "bs=1M", "count=\(mib)", "status=none"])
            defer { try? FileSystem.remove(raw) }
            // qemu-img dd cannot seek in the output; write the random block with qemu-io's `write -s FILE`.
            try Command.run(["qemu-io", "-f", "qcow2", "-c", "write -s \(raw) \(offsetMiB)M \(mib)M", path])
        } else {
            try Command.run(["dd", "if=/dev/urandom", "of=\(path)", "bs=1M", "seek=\(offsetMiB)", "count=\(mib)",
                             "conv=notrunc,fsync", "status=none"])
        }
    }

    /// Storage paths from our storage.cfg (`id → path`), zfspools as `id → pool`.
    func storageLocations() throws -> [String: (type: String, location: String)] {
        let text = (try? FileSystem.readText(paths.storageConfig)) ?? ""
        var result: [String: (String, String)] = [:]
        var current: (type: String, id: String)?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if let colon = line.firstIndex(of: ":"), !line.hasPrefix("\t"), !line.hasPrefix(" ") {
                current = (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            } else if let c = current {
                let parts = line.trimmingCharacters(in: .whitespaces).split(separator: " ", maxSplits: 1).map(String.init)
                if parts.count == 2 && (parts[0] == "path" || parts[0] == "pool") { result[c.id] = (c.type, parts[1]) }
            }
        }
        return result
    }

    /// The newest `.log` of `vmid` in `dumpdir`.
    func newestLog(_ vmid: Int, in dumpdir: String) -> String {
        let logs = ((try? FileSystem.list(dumpdir)) ?? []).filter { $0.hasPrefix("vzdump-qemu-\(vmid)-") && $0.hasSuffix(".log") }.sorted()
        guard let last = logs.last else { return "" }
        return (try? FileSystem.readText(dumpdir + "/" + last)) ?? ""
    }
}

/// A hook script that appends every call (`phase mode vmid`, the vzdump
/// environment, its parent's pid and name) to `calls`; fails (exit 3) in the
/// phases listed in `fail`; in the phase named in `signal` (`<phase> <SIG>`)
/// sends that signal to its parent — snapdump itself — and gives it a moment
/// to arrive before returning; with `status` present it also records `snapdump
/// vm status` of the guest at each guest phase (`state=`) and how long it took
/// (`statusms=`: 3 s or more when QEMU's monitor was held by someone else).
struct RecordingHook {
    let dir: String
    var path: String { dir + "/hook.sh" }

    init(_ h: GuestHarness) throws {
        dir = h.configDir + "/hook"
        try FileSystem.createDirectory(dir)
        let script = """
        #!/bin/bash
        d='\(dir)'
        phase=$1
        state=
        if [ -e "$d/status" ] && [ -n "$3" ]; then
            t0=$(date +%s%N)
            state=" state=$('\(SnapdumpBinary.binary)' vm status "$3" --config-dir '\(h.configDir)' 2>&1 | head -1 | sed 's/^status: //')"
            state="$state statusms=$(( ($(date +%s%N) - t0) / 1000000 ))"
        fi
        echo "$* STOREID=$STOREID DUMPDIR=$DUMPDIR VMTYPE=$VMTYPE HOSTNAME=$HOSTNAME TARGET=$TARGET LOGFILE=$LOGFILE PPID=$PPID PCOMM=$(cat /proc/$PPID/comm)$state" >>"$d/calls"
        if [ -e "$d/signal" ] && [ "$(cut -d' ' -f1 "$d/signal")" = "$phase" ]; then
            kill -s "$(cut -d' ' -f2 "$d/signal")" "$PPID"
            sleep 0.3
        fi
        if [ -e "$d/fail" ] && grep -qx -- "$phase" "$d/fail"; then
            echo "failing in phase $phase on purpose" >&2
            exit 3
        fi
        exit 0

        """
        try FileSystem.writeAtomically(path, script, mode: 0o755)
    }

    /// `signal`: phase and signal name (`INT`, `TERM`).
    func reset(fail: [String] = [], signal: (phase: String, name: String)? = nil, recordStatus: Bool = false) throws {
        for f in ["calls", "fail", "signal", "status"] { try? FileSystem.remove(dir + "/" + f) }
        if !fail.isEmpty { try FileSystem.writeAtomically(dir + "/fail", fail.joined(separator: "\n") + "\n") }
        if let signal { try FileSystem.writeAtomically(dir + "/signal", "\(signal.phase) \(signal.name)\n") }
        if recordStatus { try FileSystem.writeAtomically(dir + "/status", "") }
    }

    /// Each call: the words of its line (phase, mode, vmid, KEY=value…).
    var calls: [[String]] {
        ((try? FileSystem.readText(dir + "/calls")) ?? "").split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
    }

    var phases: [String] { calls.map { $0[0] } }

    func env(_ call: [String], _ key: String) -> String? {
        call.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
    }
}

/// One in-process backup job (the engine API, as `snapdump backup` builds it).
struct JobOutcome {
    var summaries: [BackupSummary]
    /// Thrown by `BackupJob.run()` (job-init/job-start failures, an interrupted job).
    var error: (any Error)?
    var lines: [String]
    var text: String { lines.joined(separator: "\n") }
    var ok: Bool { error == nil && !summaries.isEmpty && summaries.allSatisfy(\.ok) }
}

func runJob(_ h: GuestHarness, _ vmid: Int, mode: BackupMode = .snapshot, storage: String, script: String? = nil,
            interrupt: Interrupt = Interrupt(), compression: Compression = .none) async -> JobOutcome {
    var o = BackupOptions()
    o.vmids = [vmid]
    o.mode = mode
    o.target = .storage(storage)
    o.stopwait = 1
    o.compression = compression
    o.quiet = true
    let log = TaskLog(echo: false)
    let job = BackupJob(options: o, paths: h.paths, log: log, interrupt: interrupt)
    job.settings.script = script
    job.lockwait = 1
    do {
        let s = try await job.run()
        return JobOutcome(summaries: s, error: nil, lines: log.lines)
    } catch {
        log.error("job error: \(error)")
        return JobOutcome(summaries: [], error: error, lines: log.lines)
    }
}

/// `snapdump backup …` running in the background, so a test can signal it.
final class BackgroundBackup: @unchecked Sendable {
    // @unchecked: used from one test at a time.
    let process = Process()
    let stdoutPath: String
    let stderrPath: String

    init(_ h: GuestHarness, _ args: [String]) throws {
        let tag = UUID().uuidString.prefix(6)
        stdoutPath = h.configDir + "/bg-\(tag).out"
        stderrPath = h.configDir + "/bg-\(tag).err"
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: SnapdumpBinary.binary)
        process.arguments = ["backup"] + args + ["--config-dir", h.configDir]
        var env = ProcessInfo.processInfo.environment
        env["SNAPDUMP_CONFIG_DIR"] = ""
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var stderr: String { (try? FileSystem.readText(stderrPath)) ?? "" }

    /// Waits until `condition` holds (polling every 50 ms) or the process ends; true when it holds.
    func wait(until condition: () -> Bool, timeout: TimeInterval = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            if !process.isRunning { return condition() }
            usleep(50_000)
        }
        return false
    }

    func signal(_ sig: Int32) { kill(pid, sig) }

    /// Exit status (or the signal number when killed), after waiting up to `timeout`; kills it when it does not end.
    func finish(timeout: TimeInterval = 120) -> (status: Int32, signaled: Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        return (process.terminationStatus, process.terminationReason == .uncaughtSignal)
    }
}

/// Invariants after a backup, failed or not (DESIGN.md): the guest runs and
/// writes (unless `expectRunning` is false), is thawed, has no lock; no
/// snapdump snapshot, read clone or overlay is left on any of our storages;
/// no `.dat` in `dumpdir`, and no `.vma*` unless `archiveKept`; no qemu-nbd
/// left on our images.
func expectInvariants(_ h: GuestHarness, _ vmid: Int, dumpdir: String, expectRunning: Bool = true, archiveKept: String? = nil,
                      sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let status = try h.must(["vm", "status", "\(vmid)"]).stdout
    if expectRunning {
        #expect(status.contains("status: running"), "guest not running: \(status)", sourceLocation: sourceLocation)
        let hb = h.lastHeartbeat(vmid)
        do {
            _ = try await h.waitForHeartbeat(vmid, above: hb, timeout: .seconds(20))
        } catch {
            Issue.record("guest writes no more heartbeats: \(error)", sourceLocation: sourceLocation)
        }
        let agent = VMLifecycle(paths: h.paths).guestAgent(vmid: vmid)
        let freeze = try? await agent.fsfreezeStatus(timeout: .seconds(5))
        await agent.close()
        #expect(freeze == .thawed, "guest filesystems not thawed: \(String(describing: freeze))", sourceLocation: sourceLocation)
    } else {
        #expect(status.contains("status: stopped"), "guest should still be stopped: \(status)", sourceLocation: sourceLocation)
    }
    #expect(!status.contains("lock:"), "lock left: \(status)", sourceLocation: sourceLocation)

    // A repository backup keeps its snapshot as the next one's base (`snapdump_base_<time>_<repository>`, one per
    // volume and repository).
    let lines = try h.must(["snapshot", "list"]).stdout.split(separator: "\n").dropFirst()
    let snaps = lines.filter { !$0.contains("snapdump_base_") }
    #expect(snaps.isEmpty, "snapshots left: \(snaps)", sourceLocation: sourceLocation)
    let bases = lines.filter { $0.contains("snapdump_base_") }.map { line -> String in
        let words = line.split(separator: " ")
        let name = words.first { $0.hasPrefix("snapdump_base_") } ?? ""
        return "\(words.first ?? "") \(name.dropFirst("snapdump_base_yyyyMMddTHHmmssZ".count))"
    }
    #expect(Set(bases).count == bases.count, "more than one base snapshot of a volume for one repository: \(lines)",
            sourceLocation: sourceLocation)
    for (id, s) in try h.storageLocations() {
        if s.type == "zfspool" {
            let all = try Command.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", s.location])
            // Names below the pool (the pool's own name may contain "snapdump"): snapshots `…@snapdump-…`, read clones `snapdump-read-vm-<vmid>-…`.
            let left = all.split(separator: "\n").map { $0.dropFirst(s.location.count) }
                .filter { ($0.contains("@snapdump-") || $0.contains("/snapdump-read-vm-")) && $0.contains("\(vmid)") }
            #expect(left.isEmpty, "zfs snapshots or read clones left on '\(id)': \(left)", sourceLocation: sourceLocation)
        } else {
            // btrfs images/<vmid>@snapdump-…, reflink images/<vmid>/.snapshots/snapdump-…, qcow2 overlays.
            let found = (try? Command.run(["find", s.location + "/images", "-name", "*snapdump-*"])) ?? ""
            #expect(found.isEmpty, "snapshots or overlays left on '\(id)': \(found)", sourceLocation: sourceLocation)
            let qcow2 = (try? Command.run(["find", s.location + "/images", "-name", "*.qcow2"])) ?? ""
            for image in qcow2.split(separator: "\n") {
                let snapshots = (try? Command.run(["qemu-img", "snapshot", "-U", "-l", String(image)])) ?? ""
                #expect(!snapshots.contains("snapdump-"), "qcow2 snapshot left in \(image): \(snapshots)", sourceLocation: sourceLocation)
            }
        }
        let nbd = Processes.matching(s.location).filter { $0.arguments.first?.hasSuffix("qemu-nbd") == true }
        #expect(nbd.isEmpty, "qemu-nbd left: \(nbd.map(\.commandLine))", sourceLocation: sourceLocation)
    }
    let files = (try? FileSystem.list(dumpdir)) ?? []
    let dat = files.filter { $0.hasSuffix(".dat") }
    #expect(dat.isEmpty, "temporary archives left in \(dumpdir): \(dat)", sourceLocation: sourceLocation)
    let archives = files.filter { $0.hasPrefix("vzdump-qemu-\(vmid)-") && $0.contains(".vma") && !$0.hasSuffix(".dat") }
    if let kept = archiveKept {
        #expect(archives == [(kept as NSString).lastPathComponent], "archives in \(dumpdir): \(archives), expected only \(kept)",
                sourceLocation: sourceLocation)
    } else {
        #expect(archives.isEmpty, "archives left by a failed run in \(dumpdir): \(archives)", sourceLocation: sourceLocation)
    }
}

/// Sleeps into the next wall-clock second: archive names and snapshot names carry seconds.
func nextSecond() {
    let now = Date().timeIntervalSince1970
    usleep(useconds_t((floor(now) + 1.05 - now) * 1_000_000))
}

/// Removes the archives of `vmid` (and their logs) so the next case starts empty.
func clearDumpdir(_ dumpdir: String, _ vmid: Int) {
    for f in (try? FileSystem.list(dumpdir)) ?? [] where f.hasPrefix("vzdump-qemu-\(vmid)-") {
        try? FileSystem.remove(dumpdir + "/" + f)
    }
}
