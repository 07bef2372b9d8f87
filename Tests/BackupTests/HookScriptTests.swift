import Foundation
import Guest
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

extension NothingLostTests {
    /// vzdump's hook script against the running test guest: phase order and
    /// signals through the real `snapdump backup` (`--script`, vzdump.conf's
    /// `script:`); the many failure cases through the engine in-process
    /// (`BackupJob`, as the CLI builds it), which is faster. The guest lives on a
    /// `reflink 1` XFS dir storage with a second, ext4-formatted disk, so snapshot
    /// mode really pauses it and really freezes a filesystem — the hardest case for
    /// "resumed and thawed on every path".
    @Suite("Hook scripts", .serialized, .enabled(if: Integration.available("SNAPDUMP_TEST_XFS")))
    struct HookScriptTests {
        static let vmid = 400

        /// A booted guest on XFS with the recording hook; the dump dir is the storage's `dump/`.
        func setUp(_ label: String, vmid: Int = vmid) async throws -> (GuestHarness, RecordingHook, String) {
            let xfs = try Integration.require("SNAPDUMP_TEST_XFS")
            let h = try GuestHarness(label: label)
            do {
                try h.addStorage("dir", "xfs", under: xfs, extra: ["--content", "images,backup", "--reflink", "1"])
                try h.createGuest(vmid, disk: "xfs:128M", fsDisk: "xfs:32M")
                try await h.bootGuest(vmid)
                let hook = try RecordingHook(h)
                let dumpdir = try #require(h.storageLocations()["xfs"]).location + "/dump"
                return (h, hook, dumpdir)
            } catch {
                h.tearDown()
                throw error
            }
        }

        /// Through the real `snapdump backup`: the hook from vzdump.conf's
        /// `script:` (snapshot mode) and from `--script` (suspend, stop).
        @Test func phasesInOrderWithTheirEnvironmentInEveryMode() async throws {
            let vmid = Self.vmid
            let (h, hook, dumpdir) = try await setUp("hook-order")
            defer { h.tearDown() }
            try FileSystem.writeAtomically(h.paths.vzdumpConfig, "script: \(hook.path)\n")

            // Where the guest is in each phase: `state=` is `snapdump vm status` run from the hook.
            let expected: [(BackupMode, [String], [String: String])] = [
                // Snapshot mode runs pre-restart after its window (as Proxmox does for a VM): no hook in the downtime.
                (.snapshot, [], ["backup-start": "running", "pre-stop": "running", "pre-restart": "running", "post-restart": "running", "backup-end": "running"]),
                (.suspend, ["--script", hook.path], ["backup-start": "running", "pre-stop": "running", "pre-restart": "paused", "post-restart": "running", "backup-end": "running"]),
                (.stop, ["--script", hook.path, "--stopwait", "1"], ["backup-start": "running", "pre-stop": "running", "pre-restart": "stopped", "post-restart": "running", "backup-end": "running"]),
            ]
            for (mode, args, states) in expected {
                try hook.reset(recordStatus: true)
                nextSecond()
                let r = try h.run(["backup", "\(vmid)", "--mode", mode.rawValue, "--storage", "xfs", "--output-format", "json"] + args)
                #expect(r.status == 0, "\(mode): \(r)")
                let summaries = try JSONDecoder().decode([BackupSummary].self, from: Data(r.stdout.utf8))
                #expect(hook.phases == ["job-init", "job-start", "backup-start", "pre-stop", "pre-restart", "post-restart",
                                        "backup-end", "log-end", "job-end"], "\(mode): \(hook.phases)")
                let archive = try #require(summaries.first?.archive, "\(mode): \(r)")
                #expect(summaries.first?.mode == mode)
                for call in hook.calls {
                    let phase = call[0]
                    #expect(hook.env(call, "STOREID") == "xfs", "\(call)")
                    #expect(hook.env(call, "DUMPDIR") == dumpdir, "\(call)")
                    // Run directly, not through a shell: a hook's `kill -INT $PPID` reaches snapdump itself.
                    #expect(hook.env(call, "PCOMM") == "snapdump", "\(call)")
                    if ["job-init", "job-start", "job-end"].contains(phase) {
                        #expect(call[1].hasPrefix("STOREID="), "job phases get no mode and vmid: \(call)")
                        #expect(hook.env(call, "VMTYPE") == "", "\(call)")
                        continue
                    }
                    #expect(call[1] == mode.rawValue && call[2] == "\(vmid)", "\(call)")
                    #expect(hook.env(call, "VMTYPE") == "qemu", "\(call)")
                    #expect(hook.env(call, "HOSTNAME") == "guest\(vmid)", "\(call)")
                    #expect(hook.env(call, "TARGET") == archive, "\(call)")
                    #expect(hook.env(call, "LOGFILE") == archive.replacingOccurrences(of: ".vma", with: ".log"), "\(call)")
                    if let want = states[phase] {
                        #expect(hook.env(call, "state") == want, "\(mode) \(phase): guest \(hook.env(call, "state") ?? "?"), expected \(want)")
                    }
                }
                try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: archive)
                clearDumpdir(dumpdir, vmid)
            }
        }

        /// Phases whose failure fails the guest's backup (snapshot mode, in the order they run).
        static let guestPhases = ["backup-start", "pre-stop", "pre-restart", "post-restart", "backup-end"]

        @Test func aFailingHookInEachPhase() async throws {
            let vmid = Self.vmid
            let (h, hook, dumpdir) = try await setUp("hook-fail")
            defer { h.tearDown() }
            let configBefore = try FileSystem.readText(h.paths.vmConfig(vmid))

            // Job phases before any guest: the job fails, the guest is never touched.
            for (fail, calls) in [("job-init", ["job-init"]), ("job-start", ["job-init", "job-start", "job-abort"])] {
                try hook.reset(fail: [fail, "job-abort"])
                let pid = h.pid(vmid)
                let r = await runJob(h, vmid, storage: "xfs", script: hook.path)
                let error = try #require(r.error, "\(fail): the job must fail: \(r.text)")
                #expect("\(error)".contains("hook script '\(hook.path)' failed in phase '\(fail)' (exit code 3)"), "\(error)")
                #expect(hook.phases == calls, "\(fail): \(hook.phases)")
                #expect(r.summaries.isEmpty && !r.text.contains("Starting Backup of VM"), "\(fail): \(r.text)")
                if fail == "job-start" {
                    #expect(r.text.contains("WARN: hook script '\(hook.path)' failed in phase 'job-abort'"), "job-abort failure is a warning: \(r.text)")
                }
                #expect(h.pid(vmid) == pid)
                #expect(try FileSystem.readText(h.paths.vmConfig(vmid)) == configBefore)
                try await expectInvariants(h, vmid, dumpdir: dumpdir)
            }

            // Guest phases: that guest's backup fails; everything is undone; backup-abort,
            // log-end and job-abort still run. After backup-end the archive is complete
            // (and retention applied): it is kept, as Proxmox does, and the log says so.
            for fail in Self.guestPhases {
                try hook.reset(fail: [fail])
                nextSecond()
                let r = await runJob(h, vmid, storage: "xfs", script: hook.path)
                let s = try #require(r.summaries.first, "\(fail): \(r.text)")
                #expect(!s.ok, "\(fail): backup must fail")
                #expect(s.error?.contains("failed in phase '\(fail)' (exit code 3)") == true, "\(fail): \(s.error ?? "")")
                #expect(r.text.contains("ERROR: Backup of VM \(vmid) failed - hook script '\(hook.path)' failed in phase '\(fail)'"), "\(r.text)")
                #expect(r.text.contains("INFO: hook: failing in phase \(fail) on purpose"), "\(r.text)")
                let ran = hook.phases
                let upTo = Array(ran.prefix { $0 != fail }) + [fail]
                let all = ["job-init", "job-start"] + Self.guestPhases
                #expect(upTo == Array(all.prefix(upTo.count)), "\(fail): \(ran)")
                #expect(Array(ran.suffix(3)) == ["backup-abort", "log-end", "job-abort"], "\(fail): \(ran)")
                #expect(!ran.contains("job-end"))
                let log = h.newestLog(vmid, in: dumpdir)
                #expect(log.contains("failed in phase '\(fail)'"), "the .log file says what happened: \(log)")
                if fail == "backup-end" {
                    let archive = try #require(s.archive)
                    #expect(r.text.contains("archive '\(archive)' is complete and is kept"), "\(r.text)")
                    let verify = try SnapdumpBinary.run(["vma", "verify", archive])
                    #expect(verify.status == 0, "\(verify)")
                    try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: archive)
                } else {
                    try await expectInvariants(h, vmid, dumpdir: dumpdir)
                }
                clearDumpdir(dumpdir, vmid)
            }

            // backup-abort failing as well: a warning; the first error stays the reason.
            try hook.reset(fail: ["post-restart", "backup-abort"])
            nextSecond()
            var r = await runJob(h, vmid, storage: "xfs", script: hook.path)
            #expect(r.summaries.first?.error?.contains("phase 'post-restart'") == true, "\(r.text)")
            #expect(r.text.contains("WARN: hook script '\(hook.path)' failed in phase 'backup-abort' (exit code 3)"), "\(r.text)")
            try await expectInvariants(h, vmid, dumpdir: dumpdir)
            clearDumpdir(dumpdir, vmid)

            // log-end failing: a warning only, the job succeeds.
            try hook.reset(fail: ["log-end"])
            nextSecond()
            r = await runJob(h, vmid, storage: "xfs", script: hook.path)
            #expect(r.ok, "\(r.text)")
            #expect(r.text.contains("WARN: hook script '\(hook.path)' failed in phase 'log-end' (exit code 3)"), "\(r.text)")
            #expect(hook.phases.last == "job-end")
            try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: r.summaries.first?.archive)
            clearDumpdir(dumpdir, vmid)

            // job-end failing: the job fails (after all guests are backed up), job-abort follows.
            try hook.reset(fail: ["job-end"])
            nextSecond()
            r = await runJob(h, vmid, storage: "xfs", script: hook.path)
            #expect(r.error.map { "\($0)".contains("failed in phase 'job-end'") } == true, "\(r.text)")
            #expect(Array(hook.phases.suffix(2)) == ["job-end", "job-abort"], "\(hook.phases)")
            clearDumpdir(dumpdir, vmid)

            // Stop mode, pre-restart failing: the guest is started all the same.
            try hook.reset(fail: ["pre-restart"])
            nextSecond()
            let pidBefore = h.pid(vmid)
            r = await runJob(h, vmid, mode: .stop, storage: "xfs", script: hook.path)
            let s = try #require(r.summaries.first)
            #expect(!s.ok && s.error?.contains("phase 'pre-restart'") == true, "\(r.text)")
            #expect(hook.phases.contains("post-restart"), "post-restart runs once the guest is back: \(hook.phases)")
            let pidAfter = h.pid(vmid)
            #expect(pidAfter != nil && pidAfter != pidBefore, "guest not restarted")
            // In stop mode the archive is committed before the restart: complete, kept.
            try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: s.archive)
        }

        /// SIGINT/SIGTERM to a real `snapdump backup` in each phase: the hook
        /// sends the signal to its parent (snapdump) and returns a moment later.
        /// snapdump must stop right after that phase, undo everything, exit ≠ 0
        /// and say why. (The archive phase: FailureInjectionTests.)
        @Test func sigintAndSigtermInEachPhase() async throws {
            let vmid = Self.vmid
            let (h, hook, dumpdir) = try await setUp("hook-intr")
            defer { h.tearDown() }

            var cases: [(String, String)] = []
            for p in Self.guestPhases { cases += [(p, "INT"), (p, "TERM")] }
            cases += [("job-start", "TERM"), ("log-end", "INT")]
            for (phase, sig) in cases {
                let name = "SIG" + sig
                try hook.reset(signal: (phase, sig))
                nextSecond()
                let r = try h.run(["backup", "\(vmid)", "--mode", "snapshot", "--storage", "xfs", "--script", hook.path])
                #expect(r.status != 0, "\(phase) \(name): must fail: \(r)")
                #expect(r.stderr.contains("interrupted by signal \(name)"), "\(phase) \(name): \(r.stderr)")
                let ran = hook.phases
                #expect(hook.calls.first { $0[0] == phase }.flatMap { hook.env($0, "PCOMM") } == "snapdump", "\(hook.calls)")
                #expect(ran.last == "job-abort" && !ran.contains("job-end"), "\(phase) \(name): \(ran)")
                if phase == "job-start" {
                    #expect(!r.stderr.contains("Starting Backup of VM"), "\(phase): \(r.stderr)")
                    try await expectInvariants(h, vmid, dumpdir: dumpdir)
                    continue
                }
                let log = h.newestLog(vmid, in: dumpdir)
                if phase == "log-end" {
                    // The guest's backup was complete before the signal; the job is not.
                    #expect(r.stderr.contains("ERROR: Backup job aborted: interrupted by signal \(name)"), "\(r.stderr)")
                    let archive = try FileSystem.list(dumpdir).first { $0.hasSuffix(".vma") }
                    try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: archive.map { dumpdir + "/" + $0 })
                    clearDumpdir(dumpdir, vmid)
                    continue
                }
                #expect(r.stderr.contains("ERROR: Backup of VM \(vmid) failed - interrupted by signal \(name)"), "\(phase): \(r.stderr)")
                // The engine stops right after the phase: no later guest phase runs.
                let i = try #require(Self.guestPhases.firstIndex(of: phase))
                for later in Self.guestPhases[(i + 1)...] {
                    #expect(!ran.contains(later), "\(phase) \(name): '\(later)' ran after the interrupt: \(ran)")
                }
                #expect(ran.contains("backup-abort"), "\(phase): \(ran)")
                #expect(log.contains("interrupted by signal \(name)"), "\(phase): .log file")
                var kept: String?
                if phase == "backup-end" {
                    kept = try FileSystem.list(dumpdir).first { $0.hasSuffix(".vma") }.map { dumpdir + "/" + $0 }
                    #expect(kept != nil && log.contains("archive '\(kept ?? "")' is complete and is kept"), "\(log)")
                }
                try await expectInvariants(h, vmid, dumpdir: dumpdir, archiveKept: kept)
                clearDumpdir(dumpdir, vmid)
            }
        }
    }
}
