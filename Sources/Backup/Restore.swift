import Archive
import Foundation
import Guest
import Repository
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// `qmrestore`: a VMA archive, or a repository snapshot, back into a VM.
///
/// Disks go to the `#qmdump#map` storages unless `--storage` names one. The
/// volumes are written sparsely (zero blocks are never written into a freshly
/// allocated, zeroed volume), every device's SHA-256 is checked against the
/// archive's `snapdump.json`, and the VM config is written last. A truncated
/// or corrupt archive fails with nothing left behind: the volumes this restore
/// allocated are freed and no config is written. An existing VM is replaced
/// only with `--force`, and only after the new disks are complete; then, as
/// qmrestore does, only the old volumes owned by the VMID whose drives the
/// archive restored are freed, its other own volumes become `unusedN`, and
/// nothing else is touched (`RestoredConfig`).
public final class Restore {
    public struct Options: Sendable {
        public var archive: String
        public var vmid: Int
        public var storage: String?
        public var force = false
        public var start = false
        public var unique = false
        /// KiB/s, 0 = unlimited (qmrestore's `--bwlimit`).
        public var bwlimit = 0
        /// Set instead of `archive`: a repository snapshot (`repo1:backup/vm/100/…`).
        public var repositoryBackup: RepositoryVolume?

        public init(archive: String, vmid: Int) {
            self.archive = archive
            self.vmid = vmid
        }

        public init(repositoryBackup: RepositoryVolume, vmid: Int) {
            self.archive = repositoryBackup.description
            self.repositoryBackup = repositoryBackup
            self.vmid = vmid
        }
    }

    public struct Result: Sendable {
        public var vmid: Int
        public var volumes: [String]
        public var digestsChecked: Bool
        public var bytes: UInt64
        public var seconds: Double
    }

    let options: Options
    let paths: SnapdumpPaths
    let log: TaskLog

    public init(options: Options, paths: SnapdumpPaths, log: TaskLog) {
        self.options = options
        self.paths = paths
        self.log = log
    }

    private struct Target {
        var deviceID: UInt8
        var key: String
        var volume: VolumeID
        var plugin: any StoragePlugin
        var format: VolumeFormat
        /// Where the raw content is written: the volume itself, or a raw temp file converted to qcow2 at the end.
        var writePath: String
        var file: (any VolumeWriter)?
        var volumePath: String
    }

    public func run() async throws -> Result {
        let started = Date()
        let vmid = options.vmid
        guard VMConfig.isValidVMID(vmid) else { throw BackupError("invalid VMID \(vmid): must be between 100 and 999999999") }
        let storages = try StorageRegistry(paths: paths)
        let lifecycle = VMLifecycle(paths: paths)
        var oldConfig: VMConfig?
        if VMConfig.exists(vmid: vmid, paths: paths) {
            guard options.force else {
                throw BackupError("unable to restore VM \(vmid) - VM \(vmid) already exists (use --force to overwrite it)")
            }
            let old = try VMConfig.load(vmid: vmid, paths: paths)
            if let lock = old.lock { throw BackupError("unable to restore VM \(vmid) - VM is locked (\(lock))") }
            if try await lifecycle.status(vmid: vmid).state != .stopped {
                throw BackupError("unable to restore VM \(vmid) - VM is running")
            }
            oldConfig = old
        }

        // A snapdump.json that does not match the header, or a manifest that does not match its
        // indexes, fails now, before anything is allocated.
        let input = try RestoreInput.open(options, storages: storages)
        let (confText, maps) = VMAConfigFile.parse(try input.configText())
        let config = try VMConfig.parse(confText, vmid: vmid, file: "\(input.label):qemu-server.conf")
        log.info(input.logLine)

        var targets: [Target] = []
        var done = false
        defer {
            if !done {
                // Leave nothing half-restored: close and free what this restore allocated.
                for t in targets {
                    try? t.file?.close()
                    if t.writePath != t.volumePath { try? FileSystem.remove(t.writePath) }
                    do { try t.plugin.free(t.volume) } catch { log.error("cannot free \(t.volume): \(error)") }
                }
            }
        }

        let devices = try input.devices
        for device in devices {
            guard let map = maps.first(where: { $0.device == device.name }) else {
                throw BackupError("archive '\(input.label)': device \(device.name) has no #qmdump#map line")
            }
            let storeID = options.storage ?? ((try? storages.config.storage(map.storage)) != nil ? map.storage : "local")
            let plugin = try storages.plugin(storeID)
            var format = VolumeFormat(rawValue: map.format) ?? .raw
            if [.zfspool, .rbd, .lvm, .lvmthin].contains(plugin.definition.type) { format = .raw }
            // Allocation runs zfs/btrfs/lvm/qemu-img: off the cooperative pool, as the writing below.
            let vol = try await Blocking.run("allocate") { [format] in try plugin.allocate(vmid: vmid, size: device.size, format: format) }
            let (path, fmt) = try plugin.path(of: vol)
            var t = Target(deviceID: device.id, key: map.key, volume: vol, plugin: plugin, format: fmt,
                           writePath: path, file: nil, volumePath: path)
            targets.append(t)
            if fmt == .qcow2 {
                t.writePath = path + ".restore-raw"
                let f = try File.open(t.writePath, O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
                try f.truncate(to: device.size)
                t.file = FileVolumeWriter(file: f, name: t.writePath)
            } else {
                if FileSystem.exists(path) {
                    // Readable too: chunks that come too far out of order are hashed from the volume afterwards.
                    t.file = FileVolumeWriter(file: try File.open(path, O_RDWR), name: vol.description)
                } else {
                    // No local path (an RBD image): written through the storage, librbd; out-of-order chunks spill.
                    t.file = try plugin.openForWriting(vol)
                }
            }
            targets[targets.count - 1] = t
            log.info("map '\(map.key)' to '\(vol)' (write zeros = 0)")
        }

        let files = Dictionary(uniqueKeysWithValues: targets.map { ($0.deviceID, $0.file!) })
        // Decompressing, hashing and writing block: run them on their own thread, not the cooperative pool.
        let job = InputBox(input)
        let total = devices.reduce(UInt64(0)) { $0 + $1.size }
        let progress = ReadProgress(total: total) { [log] in log.info($0) }
        let bwlimit = options.bwlimit
        if bwlimit > 0 { log.info("restore limited to \(bwlimit) KiB/s") }
        let (checked, bytes) = try await Blocking.run("restore") {
            try job.input.write(files: files, progress: progress, bwlimitKiB: bwlimit)
        }
        if case .repository = input {
            log.info("verified SHA-256 of every chunk of \(targets.count) device(s)")
        } else if checked {
            log.info("verified SHA-256 of \(targets.count) device(s)")
        } else {
            log.warn("archive has no snapdump.json: content digests not checked (not written by snapdump?)")
        }
        // fsync and qemu-img convert take minutes on big disks: on their own thread too.
        let written = targets
        try await Blocking.run("restore-finish") {
            for t in written {
                try t.file?.sync()
                try t.file?.close()
                if t.writePath != t.volumePath {
                    try Command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", t.writePath, t.volumePath])
                    try FileSystem.remove(t.writePath)
                }
            }
        }
        for i in targets.indices { targets[i].file = nil }

        // Point the config's disks at the new volumes; drop what the archive does not restore.
        let restored = Dictionary(targets.map { ($0.key, $0.volume) }, uniquingKeysWith: { a, _ in a })
        var (newConfig, warnings) = RestoredConfig.rewrite(config, vmid: vmid, restored: restored)
        for t in targets where newConfig.disk(t.key) == nil {
            // A device whose drive the archived config lacks: keep the data reachable, never orphaned.
            newConfig.addUnused(t.volume.description)
            warnings.append("archived config has no drive \(t.key): restored volume '\(t.volume)' is listed as unused")
        }
        var freeOld: [VolumeID] = []
        if let old = oldConfig {
            let (free, keep) = RestoredConfig.replacement(old: old, new: newConfig, restoredKeys: Set(restored.keys))
            freeOld = free
            for volid in keep {
                if let key = newConfig.addUnused(volid) { log.info("old volume '\(volid)' of VM \(vmid) kept as \(key)") }
            }
        }
        for w in warnings { log.warn(w) }
        try FileSystem.createDirectory(paths.vmConfigDir)
        try newConfig.save(paths: paths)
        done = true

        // Only now, with the new config in place: the old volumes the archive replaced (qmrestore frees them too).
        for vol in freeOld {
            do {
                try storages.plugin(for: vol).free(vol)
                log.info("removed old volume '\(vol)' of VM \(vmid)")
            } catch {
                log.warn("cannot remove old volume '\(vol)': \(error)")
            }
        }
        let secs = Date().timeIntervalSince(started)
        log.info("restore of VM \(vmid) finished: \(Formatting.bytes(bytes)) written in \(String(format: "%.1f", secs)) s")
        if options.start {
            _ = try await lifecycle.start(vmid: vmid, disks: try GuestDrives.resolve(newConfig, storages: storages).map(\.resolved))
            log.info("started VM \(vmid)")
        }
        return Result(vmid: vmid, volumes: targets.map(\.volume.description), digestsChecked: checked,
                      bytes: bytes, seconds: secs)
    }
}

/// Hands the input (a VMA reader) to the one thread that reads it.
private final class InputBox: @unchecked Sendable {
    // @unchecked: the input is used by exactly one thread (Blocking.run's) while the caller awaits it.
    let input: RestoreInput
    init(_ input: RestoreInput) { self.input = input }
}
