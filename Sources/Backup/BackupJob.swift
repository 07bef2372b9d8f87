import Archive
import Foundation
import Guest
import Notify
import Repository
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// One `snapdump backup` run over one or more guests (vzdump's job):
/// takes the global lock, resolves the dump directory, backs up each guest,
/// and reports a summary. A failed guest does not stop the others.
public final class BackupJob {
    public let options: BackupOptions
    public let paths: SnapdumpPaths
    public let log: TaskLog
    public let interrupt: Interrupt
    /// Minutes to wait for the global lock (vzdump's `lockwait`).
    public var lockwait: Double = 180
    /// vzdump options beyond BackupOptions: retention, notes, protection, hook script.
    public var settings = BackupSettings()
    /// The scheduled job this run belongs to (`job-id` for notification matchers).
    public var jobID: String?
    /// `--stdout`: the one guest's archive is written to this stream (the
    /// job owns it from now on) — no archive file, no `.log` beside it, no
    /// prune, notes or protection; the task log goes to stderr only.
    public var stream: File?

    public init(options: BackupOptions, paths: SnapdumpPaths, log: TaskLog, interrupt: Interrupt = Interrupt()) {
        self.options = options
        self.paths = paths
        self.log = log
        self.interrupt = interrupt
    }

    /// The directory archives go to: `--dumpdir`, or `<path>/dump` of the
    /// backup storage (`--storage`, default `local`).
    public static func dumpDirectory(options: BackupOptions, storages: StorageRegistry) throws -> String {
        try options.target.directory(storages: storages)
    }

    /// The global lock, waited for up to `lockwait` minutes — in slices, so
    /// SIGINT/SIGTERM end the wait at once instead of after up to three hours.
    /// The wait sleeps, so it runs on a thread of its own: on the cooperative
    /// pool (two threads here) it would stall snapdumpd's scheduler.
    private func acquireGlobalLock(hook: HookScript?) async throws -> FileLock {
        let path = paths.backupLock, lockwait = self.lockwait, interrupt = self.interrupt
        do {
            return try await Blocking.run("global-lock") {
                try Self.waitForLock(path, minutes: lockwait, interrupt: interrupt)
            }
        } catch let e as Interrupt.Interrupted {
            log.error("Backup job aborted while waiting for lock '\(path)': \(e)")
            try? await hook?.run(.jobAbort, log: log)
            throw e
        }
    }

    static func waitForLock(_ path: String, minutes: Double, interrupt: Interrupt) throws -> FileLock {
        let deadline = Date().addingTimeInterval(minutes * 60)
        while true {
            do {
                return try FileLock.acquire(path, timeout: min(1, max(0, deadline.timeIntervalSinceNow)))
            } catch let e as FileLock.Timeout {
                if let sig = interrupt.received { throw Interrupt.Interrupted(signal: sig) }
                if Date() >= deadline {
                    throw BackupError("can't acquire lock '\(e.path)' (wait = \(Int(minutes)) minutes) - got timeout")
                }
            }
        }
    }

    /// Names a guest's backup after the first second from now whose names
    /// are all free, and claims it by creating the `.log` (O_EXCL) for `log`.
    /// Names have one-second resolution: a second backup of the guest within
    /// the same second (two jobs due in the same minute, run one after the
    /// other) waits for the next second instead of writing a whole archive
    /// that cannot be committed and appending to the first one's log.
    static func claimName(vmid: Int, dumpdir: String, compression: Compression.Kind, log: TaskLog,
                          clock: () -> Date = Date.init) async -> (ArchiveName, Date) {
        var attempts = 0
        while true {
            let now = clock()
            let name = ArchiveName(vmid: UInt32(vmid), date: now, compression: compression)
            // Any compression: vzdump-qemu-100-T.vma.gz and ….vma.zst would share the log.
            let taken = Compression.Kind.allCases.contains { kind in
                var n = name
                n.compression = kind
                return FileSystem.exists("\(dumpdir)/\(n.fileName)") || FileSystem.exists("\(dumpdir)/\(n.temporaryName)")
            }
            if !taken {
                do {
                    try log.attach(file: "\(dumpdir)/\(name.logName)")
                    return (name, now)
                } catch let e as SystemError where e.errno == EEXIST && attempts < 60 {
                    // Another backup's log (or something planted there): never shared.
                } catch {
                    log.warn("cannot write log file: \(error)")
                    return (name, now)
                }
            } else if attempts >= 60 {
                // Cannot happen one second after another for a minute unless something keeps creating the names:
                // go on, and the commit refuses to replace the archive.
                return (name, now)
            }
            attempts += 1
            let wait = (now.timeIntervalSince1970 + 1).rounded(.down) - now.timeIntervalSince1970
            try? await Task.sleep(nanoseconds: UInt64(max(wait, 0.001) * 1e9))
        }
    }

    private enum OpenedDestination {
        case dumpDirectory(String, storage: String?)
        case repository(RepositoryStore)

        var dumpdir: String? {
            if case .dumpDirectory(let d, _) = self { return d }
            return nil
        }
    }

    /// Names a guest's repository backup after the first second from now
    /// that no finished snapshot of it has, and attaches `log` to
    /// `<logDir>/qemu-<vmid>.log` (vzdump's log for PBS backups: replaced
    /// by each backup of the guest; the global lock keeps backups of one
    /// host apart). A snapshot must be newer than the guest's last one.
    static func claimSnapshot(vmid: Int, store: RepositoryStore, logDir: String, log: TaskLog,
                              clock: () -> Date = Date.init) async -> (SnapshotName, Date, String) {
        let last = (try? store.snapshots(vmid: vmid).first?.time) ?? Int64.min
        var now = clock()
        for _ in 0..<60 {
            let s = SnapshotName(vmid: vmid, time: now)
            if s.time > last && !store.repository.exists(s) { break }
            let wait = (now.timeIntervalSince1970 + 1).rounded(.down) - now.timeIntervalSince1970
            try? await Task.sleep(nanoseconds: UInt64(max(wait, 0.001) * 1e9))
            now = clock()
        }
        let logFile = "\(logDir)/qemu-\(vmid).log"
        do {
            try FileSystem.createDirectory(logDir, mode: 0o700)
            try? FileSystem.remove(logFile)
            try log.attach(file: logFile)
        } catch {
            log.warn("cannot write log file: \(error)")
        }
        return (SnapshotName(vmid: vmid, time: now), now, logFile)
    }

    /// The effective command, as vzdump logs it when a job starts: the guests,
    /// mode, target and compression always, then every other option whose
    /// value in effect differs from `VzdumpOption.table`'s default —
    /// wherever it came from (command line, job, vzdump.conf, storage).
    public func commandLine(vmids: [Int]) -> String {
        var words = ["snapdump", "backup"] + vmids.map(String.init)
        func add(_ key: String, _ value: String) { words += ["--\(key)", Self.quoted(value)] }
        func addIfSet(_ key: String, _ value: String?) {
            guard let value, value != VzdumpOption.named(key)?.defaultValue else { return }
            add(key, value)
        }
        add("mode", options.mode.rawValue)
        switch options.target {
        case .storage(let id): add("storage", id)
        case .dumpdir(let d): add("dumpdir", d)
        }
        add("compress", options.compression.kind == .none ? "0" : options.compression.kind.rawValue)
        if options.compression.kind == .zstd { addIfSet("zstd", String(options.zstdThreads)) }
        addIfSet("bwlimit", String(options.bwlimit))
        addIfSet("stopwait", String(options.stopwait))
        addIfSet("snapshot-fallback", options.snapshotFallback.rawValue)
        addIfSet("tmpdir", options.tmpdir)
        addIfSet("fleecing", options.fleecing.enabled ? options.fleecing.description : nil)
        addIfSet("full", options.full ? "1" : "0")
        addIfSet("full-every", String(options.fullEvery))
        addIfSet("prune-backups", settings.pruneBackups.propertyString)
        addIfSet("remove", settings.pruneBackups.keepsEverything ? nil : (settings.remove ? "1" : "0"))
        addIfSet("notes-template", settings.notesTemplate)
        addIfSet("protected", settings.protected ? "1" : "0")
        addIfSet("script", settings.script)
        addIfSet("ionice", String(settings.ionice))
        addIfSet("lockwait", VzdumpOption.format(lockwait))
        addIfSet("pigz", String(settings.pigz))
        addIfSet("performance", settings.performance)
        addIfSet("quiet", options.quiet ? "1" : "0")
        if stream != nil { add("stdout", "1") }
        return words.joined(separator: " ")
    }

    /// Shell-quotes a value that has spaces or quotes, so the logged command can be copied.
    static func quoted(_ s: String) -> String {
        guard s.isEmpty || s.contains(where: { " \t'\"\\$`;&|<>(){}*?#~".contains($0) }) else { return s }
        return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    public func run() async throws -> [BackupSummary] {
        let storages = try StorageRegistry(paths: paths)
        var vmids = options.vmids
        if options.all || !options.exclude.isEmpty {
            vmids = try VMConfig.list(paths: paths).filter { !options.exclude.contains($0) }
        }
        guard !vmids.isEmpty else { throw BackupError("no guests selected: name VMIDs or use --all") }
        for v in vmids where !VMConfig.exists(vmid: v, paths: paths) {
            throw BackupError("unable to find configuration file for VM \(v) (\(paths.vmConfig(v)))")
        }
        if stream != nil && vmids.count != 1 {
            throw BackupError("you can only backup a single VM with option --stdout (selected: \(vmids.map(String.init).joined(separator: ", ")))")
        }
        // A repository is opened once for the job: a missing one, or its key, fails before any guest is touched.
        let opened: OpenedDestination
        if stream != nil {
            // Nothing is written there; it only names where a killed file-mode run may have left a `.dat`.
            opened = .dumpDirectory((try? Self.dumpDirectory(options: options, storages: storages)) ?? "", storage: options.target.storageID)
        } else {
            switch try options.target.destination(storages: storages) {
            case .dumpDirectory(let dir, let storage):
                try FileSystem.createDirectory(dir)
                opened = .dumpDirectory(dir, storage: storage)
            case .repository(let id, let path, let key):
                do { opened = .repository(try RepositoryStore(storage: id, path: path, encryptionKey: key)) } catch {
                    throw BackupError("storage '\(id)': \(error)")
                }
            }
        }
        // DUMPDIR is empty for a repository, as vzdump leaves it for PBS.
        let hook = settings.script.map { HookScript(path: $0, storeID: options.target.storageID, dumpdir: opened.dumpdir ?? "") }
        try await hook?.run(.jobInit, log: log)

        let lock = try await acquireGlobalLock(hook: hook)
        defer { lock.unlock() }

        let jobStarted = Date()
        let commandLine = self.commandLine(vmids: vmids)
        log.info("starting new backup job: \(commandLine)")
        do {
            try await hook?.run(.jobStart, log: log)
        } catch {
            try? await hook?.run(.jobAbort, log: log)
            throw error
        }
        do {
            // Applies to this process and the threads it starts from now on: readers, writers, hashing.
            try IOPriority.set(ionice: settings.ionice)
            log.info("ionice priority: \(settings.ionice)")
        } catch {
            log.warn("cannot set ionice priority \(settings.ionice): \(error)")
        }
        let lifecycle = VMLifecycle(paths: paths)
        var summaries: [BackupSummary] = []
        var reported: [BackupReport.Guest] = []
        var jobError: String?
        defer {
            let report = BackupReport(guests: reported, commandLine: commandLine, jobID: jobID, hostname: Notifier.hostname,
                                      seconds: Date().timeIntervalSince(jobStarted), jobError: jobError)
            BackupNotification.send(report, settings: settings, configFile: paths.notificationsConfig, log: log)
        }
        for vmid in vmids {
            if let sig = interrupt.received {
                log.error("job aborted before VM \(vmid): \(Interrupt.Interrupted(signal: sig))")
                break
            }
            let vmLog = TaskLog(echo: !options.quiet, parent: log)
            let target: GuestTarget
            let now: Date
            switch opened {
            case .dumpDirectory(let dumpdir, let storage):
                if let stream {
                    now = Date()
                    target = .stream(stream, dumpdir: dumpdir, name: ArchiveName(vmid: UInt32(vmid), date: now, compression: options.compression.kind))
                } else {
                    let (name, time) = await Self.claimName(vmid: vmid, dumpdir: dumpdir, compression: options.compression.kind, log: vmLog)
                    target = .archive(dumpdir: dumpdir, storage: storage, name: name)
                    now = time
                }
            case .repository(let store):
                let (snapshot, time, logFile) = await Self.claimSnapshot(vmid: vmid, store: store, logDir: paths.taskLogDir, log: vmLog)
                target = .repository(store, snapshot: snapshot, logFile: logFile)
                now = time
            }
            let backup = VMBackup(vmid: vmid, options: options, paths: paths, storages: storages, lifecycle: lifecycle,
                                  target: target, log: vmLog, interrupt: interrupt, startTime: now,
                                  settings: settings, hook: hook)
            var s = await backup.run()
            if stream == nil { s.log = target.logFile }
            vmLog.detach()
            if s.ok, case .repository(let store, let snapshot, let logFile) = target {
                // PBS keeps the client's log beside the manifest, uploaded once the backup is done.
                do { try store.repository.addLog(snapshot, try FileSystem.readBytes(logFile)) } catch {
                    log.warn("cannot store the task log in backup '\(store.volume(snapshot))': \(error)")
                }
            }
            let guestName = (try? VMConfig.load(vmid: vmid, paths: paths))?.name ?? "VM \(vmid)"
            reported.append(.init(summary: s, name: guestName, logFile: target.logFile, lines: stream == nil ? nil : vmLog.lines))
            if let hook {
                let hostname = guestName
                try? await hook.run(.logEnd, guest: .init(mode: s.mode ?? options.mode, vmid: vmid, hostname: hostname,
                                                    target: s.archive ?? target.location, logfile: target.logFile), log: log)
            }
            summaries.append(s)
        }
        if summaries.allSatisfy(\.ok) && interrupt.received == nil {
            do {
                try await hook?.run(.jobEnd, log: log)
            } catch {
                log.error("\(error)")
                jobError = "\(error)"
                try? await hook?.run(.jobAbort, log: log)
                throw error
            }
            log.info("Backup job finished successfully")
        } else {
            try? await hook?.run(.jobAbort, log: log)
            if let sig = interrupt.received {
                let interrupted = Interrupt.Interrupted(signal: sig)
                log.error("Backup job aborted: \(interrupted)")
                jobError = "Backup job aborted: \(interrupted)"
                // Every summary may say ok (signal before the first guest, or after the last one's backup):
                // the job still did not finish, so it must not exit 0.
                if summaries.allSatisfy(\.ok) { throw interrupted }
            } else {
                log.error("Backup job failed: \(summaries.filter { !$0.ok }.map { "VM \($0.vmid)" }.joined(separator: ", "))")
            }
        }
        return summaries
    }
}
