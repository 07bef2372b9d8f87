import Foundation
import SnapdumpSystem
import Synchronization

/// `zfspool`: ZFS volumes under `pool`.
///
/// With kernel ZFS a disk is a zvol `pool/vm-<vmid>-disk-N`. zfs-fuse has no
/// zvols, so there a disk is a raw file `vm-<vmid>-disk-N.raw` in the dataset
/// `pool/vm-<vmid>` — detected, not configured. Either way one
/// `zfs snapshot a@s b@s …` command snapshots all volumes atomically.
public struct ZFSPoolPlugin: StoragePlugin {
    public let definition: StorageDefinition

    public init(_ definition: StorageDefinition) { self.definition = definition }

    var pool: String { definition.pool ?? "" }

    /// Kernel ZFS provides zvols; zfs-fuse (userspace) does not.
    var usesZvols: Bool {
        if let forced = ProcessInfo.processInfo.environment["SNAPDUMP_ZFS_ZVOLS"] { return forced == "1" }
        return FileSystem.isDirectory("/sys/module/zfs")
    }

    func zfs(_ args: String...) throws -> String { try zfs(args) }
    func zfs(_ args: [String]) throws -> String {
        do {
            return try Command.run(["zfs"] + args)
        } catch let e as CommandError {
            let detail = e.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            if detail.contains("out of space") || detail.contains("No space left") {
                throw StorageError(.noSpace, "storage '\(id)': zfs \(args.joined(separator: " ")): \(detail)")
            }
            throw StorageError(.backend, "storage '\(id)': zfs \(args.joined(separator: " ")) failed: \(detail)")
        }
    }

    /// `properties` of each of `datasets` that exists, in one `zfs get` (missing datasets have no entry).
    func snapshotProperties(_ datasets: [String], _ properties: [String]) -> [String: [String: String]] {
        guard let out = try? Command.capture(["zfs", "get", "-H", "-p", "-o", "name,property,value", properties.joined(separator: ",")] + datasets)
        else { return [:] }
        var result: [String: [String: String]] = [:]
        for line in out.stdout.split(separator: "\n") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard f.count == 3, datasets.contains(String(f[0])) else { continue }
            result[String(f[0]), default: [:]][String(f[1])] = String(f[2])
        }
        return result
    }

    func datasetExists(_ name: String) -> Bool {
        (try? Command.capture(["zfs", "list", "-H", "-o", "name", name]))?.status == 0
    }

    /// Whether a `zfs` command failed because a dataset or snapshot it named does not exist
    /// ("cannot open '…': dataset does not exist"; OpenZFS's `zfs destroy` of a missing snapshot:
    /// "could not find any snapshots to destroy"). Lets one command both check and act: every
    /// `zfs` is a process and, on zfs-fuse, a round trip to its daemon.
    static func isMissing(_ error: StorageError) -> Bool {
        error.message.contains("dataset does not exist") || error.message.contains("could not find any snapshots to destroy")
    }

    public func activate() throws {
        guard datasetExists(pool) else {
            throw StorageError(.backend, "storage '\(id)': ZFS pool or dataset '\(pool)' not found (is the pool imported and zfs-fuse or the zfs module running?)")
        }
    }

    public func status() throws -> StorageStatus {
        guard (try? activate()) != nil else {
            return StorageStatus(id: id, type: .zfspool, active: false, total: 0, used: 0, available: 0, snapshots: "yes (atomic)")
        }
        // `zfs get -p`, not `zfs list -p`: zfs-fuse's `zfs list` has no -p.
        let f = try zfs("get", "-H", "-p", "-o", "value", "used,available", pool).split(separator: "\n")
        let used = UInt64(f.first ?? "0") ?? 0, avail = UInt64(f.dropFirst().first ?? "0") ?? 0
        return StorageStatus(id: id, type: .zfspool, active: true, total: used + avail, used: used, available: avail,
                             snapshots: "yes (atomic, \(usesZvols ? "zvols" : "raw files in datasets: no zvols here"))")
    }

    func parseDisk(_ volume: VolumeID) throws -> DiskName {
        guard let d = DiskName(volume.volname) else {
            throw StorageError(.invalidArgument, "invalid volume name '\(volume.volname)' on storage '\(id)': expected 'vm-<vmid>-disk-<n>'")
        }
        return d
    }

    func vmDataset(_ vmid: Int) -> String { "\(pool)/vm-\(vmid)" }

    func mountpoint(_ dataset: String) throws -> String {
        if let mounted = Self.mounted(dataset) { return mounted }
        return try zfs("get", "-H", "-o", "value", "mountpoint", dataset).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The dataset holding the volume and the name a snapshot of it is taken on.
    func snapshotTarget(_ volume: VolumeID) throws -> String {
        let d = try parseDisk(volume)
        return usesZvols ? "\(pool)/\(volume.volname)" : vmDataset(d.vmid)
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID {
        try NameRules.validateVMID(vmid)
        if let format, format != .raw {
            throw StorageError(.invalidArgument, "storage '\(id)': zfspool volumes are raw, not \(format.rawValue)")
        }
        try activate()
        let size = try roundedSize(size)
        let used = Set(try list(vmid: vmid).compactMap { DiskName($0.volume.volname)?.index })
        var n = 0
        while used.contains(n) { n += 1 }
        let name = DiskName(vmid: vmid, index: n).description
        if usesZvols {
            _ = try zfs("create", "-s", "-V", "\(size)", "\(pool)/\(name)")
        } else {
            if !datasetExists(vmDataset(vmid)) { _ = try zfs("create", vmDataset(vmid)) }
            let path = "\(try mountpoint(vmDataset(vmid)))/\(name).raw"
            try ImageDirectory.createImage(path: path, size: size, format: .raw)
        }
        return VolumeID(storage: id, volname: name)
    }

    public func free(_ volume: VolumeID) throws {
        try checkOwnership(volume)
        let (path, _) = try self.path(of: volume)
        let d = try parseDisk(volume)
        let target = try snapshotTarget(volume)
        let snaps = try listSnapshots().filter { $0.volume == volume }.map(\.name)
        guard snaps.isEmpty else {
            throw StorageError(.busy, "volume '\(volume)' has snapshots (\(snaps.joined(separator: ", "))): delete them first")
        }
        if usesZvols {
            try retryingBusy { _ = try zfs("destroy", target) }
        } else {
            try FileSystem.remove(path)
            if try list(vmid: d.vmid).isEmpty { try retryingBusy { _ = try zfs("destroy", target) } }
        }
    }

    public func list(vmid: Int?) throws -> [VolumeInfo] {
        try activate()
        return try volumes(vmid: vmid)
    }

    /// `list` once the pool is known to be there.
    func volumes(vmid: Int?) throws -> [VolumeInfo] {
        var result: [VolumeInfo] = []
        // Exact volsize (-p) matters for zvols only; zfs-fuse's `zfs list` has no -p.
        let out = try zfs(["list", "-H"] + (usesZvols ? ["-p"] : []) + ["-r", "-d", "1", "-t", usesZvols ? "volume" : "filesystem", "-o", "name,volsize,mountpoint", pool])
        for line in out.split(separator: "\n") {
            let f = line.split(separator: "\t").map(String.init)
            guard f.count == 3, f[0] != pool else { continue }
            let child = String(f[0].dropFirst(pool.count + 1))
            if usesZvols {
                guard let d = DiskName(child), vmid == nil || d.vmid == vmid else { continue }
                result.append(VolumeInfo(volume: VolumeID(storage: id, volname: child), format: .raw, size: UInt64(f[1]) ?? 0, vmid: d.vmid))
            } else {
                let parts = child.split(separator: "-")
                guard parts.count == 2, parts[0] == "vm", let owner = Int(parts[1]), vmid == nil || owner == vmid,
                      FileSystem.isDirectory(f[2]) else { continue }
                for file in try FileSystem.list(f[2]) where file.hasSuffix(".raw") {
                    let name = String(file.dropLast(4))
                    guard let d = DiskName(name), d.vmid == owner else { continue }
                    let size = try File.openForReading("\(f[2])/\(file)").size()
                    result.append(VolumeInfo(volume: VolumeID(storage: id, volname: name), format: .raw, size: size, vmid: owner))
                }
            }
        }
        return result.sorted { $0.volume < $1.volume }
    }

    /// Where `dataset` is mounted, from /proc/self/mounts (zfs-fuse: `fuse.zfs`, its source the
    /// dataset), or nil. No `zfs get mountpoint`: on zfs-fuse each is a process and a round trip
    /// to its daemon (~5 ms; a backup looked the mountpoint up twice before its snapshot).
    static func mounted(_ dataset: String) -> String? {
        FileSystem.mounts().last { $0.source == dataset && ($0.type == "zfs" || $0.type == "fuse.zfs") }?.point
    }

    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        try checkOwnership(volume)
        let d = try parseDisk(volume)
        let path: String
        if usesZvols {
            path = "/dev/zvol/\(pool)/\(volume.volname)"
        } else if let mounted = Self.mounted(vmDataset(d.vmid)), FileSystem.exists("\(mounted)/\(volume.volname).raw") {
            return ("\(mounted)/\(volume.volname).raw", .raw)
        } else {
            // Not mounted, or no such file there: `zfs get` says which (the dataset's existence too).
            // The mountpoint and the dataset's existence in one round trip to the daemon.
            let out = try Command.capture(["zfs", "get", "-H", "-o", "value", "mountpoint", vmDataset(d.vmid)])
            guard out.status == 0 else {
                if out.stderr.contains("does not exist") {
                    throw StorageError(.notFound, "volume '\(volume)' does not exist (no dataset \(vmDataset(d.vmid)))")
                }
                throw StorageError(.backend, "storage '\(id)': zfs get mountpoint \(vmDataset(d.vmid)) failed: \(out.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            path = "\(out.stdout.trimmingCharacters(in: .whitespacesAndNewlines))/\(volume.volname).raw"
        }
        guard FileSystem.exists(path) else { throw StorageError(.notFound, "volume '\(volume)' does not exist (no \(path))") }
        return (path, .raw)
    }

    /// A raw file's size, or the zvol's through `path(of:)`'s default.
    public func size(of volume: VolumeID, at path: String, format: VolumeFormat) throws -> UInt64 {
        usesZvols ? try size(of: volume) : try ImageDirectory.virtualSize(path: path, format: format)
    }

    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability {
        format == .raw ? .atomic : .unsupported(reason: "zfspool holds raw volumes only")
    }

    /// One `zfs snapshot` command for all volumes: ZFS makes it atomic.
    /// No freeze window to keep short (a stopped guest, `snapshot create`): one `zfs snapshot`,
    /// without prepareSnapshot's existence check and throwaway flush snapshot (three round trips
    /// to zfs-fuse's daemon, 8–120 ms each under load): the snapshot says itself that its name
    /// is taken, and waits for its transaction group with or without a throwaway one before it.
    public func createSnapshot(_ volumes: [VolumeID], name: String) throws {
        try NameRules.validateSnapshotName(name)
        var targets: [String] = []
        for v in volumes {
            _ = try path(of: v)   // the volume exists (notFound otherwise)
            let t = try snapshotTarget(v)
            if !targets.contains(t) { targets.append(t) }
        }
        do {
            try snapshot(targets, name: name, volumes: volumes)
        } catch let e as StorageError where e.message.contains("dataset already exists") {
            throw StorageError(.alreadyExists, "snapshot '\(name)' already exists on storage '\(id)' (\(e.message))")
        }
    }

    /// The one `zfs snapshot` of every target; zfs-fuse's takes one dataset and creates nothing then.
    private func snapshot(_ targets: [String], name: String, volumes: [VolumeID]) throws {
        do {
            _ = try zfs(["snapshot"] + targets.map { "\($0)@\(name)" })
        } catch let e as StorageError where targets.count > 1 && e.message.contains("too many arguments") {
            let vmids = Set(try volumes.map { try parseDisk($0).vmid }).sorted().map(String.init)
            throw StorageError(.invalidArgument, "storage '\(id)': this zfs (zfs-fuse) snapshots one dataset per command, so volumes of VMs \(vmids.joined(separator: ", ")) cannot be snapshotted atomically together; snapshot each VM separately")
        }
    }

    /// The checks (each a `zfs` process) and the flush before the window; inside it the one
    /// `zfs snapshot` (zfs-fuse's ioctls go through its daemon's socket: no library to call here).
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        try NameRules.validateSnapshotName(name)
        var targets: [String] = [], paths: [String] = []
        for v in volumes {
            try checkOwnership(v)
            paths.append(try path(of: v).path)
            let t = try snapshotTarget(v)
            if !targets.contains(t) { targets.append(t) }
        }
        for t in targets where datasetExists("\(t)@\(name)") {
            throw StorageError(.alreadyExists, "snapshot '\(t)@\(name)' already exists on storage '\(id)'")
        }
        var warnings = PreparedSnapshot.flushHostCaches(paths)
        // A snapshot waits for its transaction group to be written out, and the kernel's syncfs
        // never reaches zfs-fuse's own cache (FUSE): a throwaway snapshot now writes out what the
        // host wrote, so the one in the window has only the moments since. (Named under the
        // backup's prefix: a killed run's leftover is removed with the rest.)
        for t in targets {
            do {
                _ = try zfs("snapshot", "\(t)@\(name)-flush")
                try retryingBusy { _ = try zfs("destroy", "\(t)@\(name)-flush") }
            } catch {
                warnings.append("cannot flush \(t) before the freeze: \(error)")
            }
        }
        return PreparedSnapshot(warnings: warnings) { [self] in try snapshot(targets, name: name, volumes: volumes) }
    }

    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws {
        try NameRules.validateSnapshotName(name)
        var targets: [String] = []
        for v in volumes {
            try checkOwnership(v)
            let t = try snapshotTarget(v)
            if !targets.contains(t) { targets.append(t) }
        }
        for t in targets {
            // No `zfs list` first: the destroy's own error says when the snapshot is not there.
            do {
                try retryingBusy { _ = try zfs("destroy", "\(t)@\(name)") }
            } catch let e as StorageError where Self.isMissing(e) {
                throw StorageError(.notFound, "snapshot '\(t)@\(name)' does not exist on storage '\(id)'")
            }
        }
    }

    /// zfs-fuse reports "dataset is busy" for a moment after a clone was read (or only mounted: the
    /// change tracking's clone, destroyed right away, is busy every time; the kernel hands the
    /// closed file back to the daemon asynchronously). The second try a few milliseconds later
    /// succeeds (measured: 2 ms after), so asked again after 5 ms, then 10, 20, 40, then every
    /// 50 ms, for up to ~5 s (a fixed 50 ms step was a tenth of an incremental run on zfs-fuse).
    func retryingBusy(_ body: () throws -> Void) throws {
        var waited: UInt32 = 0, step: UInt32 = 5_000
        while true {
            do { return try body() } catch let e as StorageError where e.message.contains("busy") && waited < 5_000_000 {
                usleep(step)
                waited += step
                step = min(step * 2, 50_000)
            }
        }
    }

    /// The snapshots of the volume's dataset (zfs-fuse: the VM's, covering every disk file) or zvol,
    /// in one `zfs list` of it: `listSnapshots` asks three times for the whole pool, and a backup
    /// looks its base snapshots up four times (12 of an incremental run's ~46 zfs round trips).
    public func snapshotNames(of volume: VolumeID) throws -> [String] {
        let target = try snapshotTarget(volume)
        let out = try Command.capture(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", "-d", "1", target])
        guard out.status == 0 else {
            if out.stderr.contains("does not exist") { return [] }
            throw StorageError(.backend, "storage '\(id)': zfs list -t snapshot \(target) failed: \(out.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return out.stdout.split(separator: "\n").compactMap { line in
            guard line.hasPrefix(target + "@") else { return nil }
            return String(line.dropFirst(target.count + 1))
        }.sorted()
    }

    public func snapshotNames(of volumes: [VolumeID]) throws -> [VolumeID: [String]] {
        var names: [VolumeID: [String]] = [:]
        for v in Set(volumes) {
            let n = try snapshotNames(of: v)
            if !n.isEmpty { names[v] = n }
        }
        return names
    }

    public func listSnapshots() throws -> [SnapshotInfo] {
        try activate()
        // `zfs get -p -r` lists snapshots with exact numbers on kernel ZFS and zfs-fuse alike
        // (zfs-fuse's `zfs list` has no -p).
        let out = try zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "used,creation", pool)
        var snapshots: [String: (used: UInt64?, created: Date)] = [:]
        for line in out.split(separator: "\n") {
            let f = line.split(separator: "\t").map(String.init)
            guard f.count == 3, f[0].contains("@") else { continue }
            var s = snapshots[f[0]] ?? (nil, Date(timeIntervalSince1970: 0))
            if f[1] == "used" { s.used = UInt64(f[2]) }
            if f[1] == "creation" { s.created = Date(timeIntervalSince1970: Double(f[2]) ?? 0) }
            snapshots[f[0]] = s
        }
        let volumes = try volumes(vmid: nil)
        var result: [SnapshotInfo] = []
        for (full, s) in snapshots.sorted(by: { $0.key < $1.key }) {
            let at = full.firstIndex(of: "@")!
            let dataset = String(full[..<at]), snap = String(full[full.index(after: at)...])
            // A dataset snapshot covers every disk file of that VM.
            for v in volumes where (try? snapshotTarget(v.volume)) == dataset {
                result.append(SnapshotInfo(volume: v.volume, name: snap, created: s.created, used: s.used))
            }
        }
        return result
    }

    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource {
        try checkOwnership(volume)
        guard let snapshot else { return try FileBlockSource(path: try self.path(of: volume).path, name: volume.description) }
        let target = try snapshotTarget(volume)
        let label = "\(volume)@\(snapshot)"
        if usesZvols {
            _ = try self.path(of: volume)
            guard datasetExists("\(target)@\(snapshot)") else {
                throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
            }
            _ = try zfs("set", "snapdev=visible", target)
            let dev = "/dev/zvol/\(target)@\(snapshot)"
            for _ in 0..<100 where !FileSystem.exists(dev) { usleep(50_000) }
            return try FileBlockSource(path: dev, name: label, dropBehind: true)
        }
        return try openReadClone(volume, snapshot: snapshot, recordIdentity: BaseSnapshot.isBase(snapshot))
    }

    /// zfs-fuse, an incremental backup whose change report carried the changed data (`zfs send`'s
    /// WRITE payloads): those ranges are served from memory, anything else through a read clone
    /// made only if it is needed. No clone, no mountpoint lookup, no destroy of a busy clone.
    public func openBlockSource(_ volume: VolumeID, snapshot: String, changes: ChangedChunks) throws -> any BlockSource {
        guard !usesZvols, let data = changes.data else { return try openBlockSource(volume, snapshot: snapshot) }
        try checkOwnership(volume)
        let recorded = record(FileIdentity(object: data.object, size: data.size), of: volume, in: "\(try snapshotTarget(volume))@\(snapshot)")
        return ChangedDataSource(data: data, name: "\(volume)@\(snapshot)",
                                 fallback: { [self] in try openReadClone(volume, snapshot: snapshot, recordIdentity: false) },
                                 onClose: { recorded.wait() })
    }

    /// zfs-fuse has no .zfs/snapshot directory: a snapshot is read through a temporary clone, one per
    /// reader (the disks of one VM share a dataset snapshot and are read at the same time).
    /// `recordIdentity`: a base snapshot gets the file's object and size recorded on it (`FileIdentity`).
    func openReadClone(_ volume: VolumeID, snapshot: String, recordIdentity: Bool) throws -> any BlockSource {
        let target = try snapshotTarget(volume)
        let token = UUID().uuidString.prefix(8).lowercased()
        // No check of the live volume or the snapshot first (each a `zfs` round trip): the clone fails
        // when the snapshot is missing, and the file in the clone is the volume as the snapshot holds it.
        let clone = "\(pool)/\(Self.clonePrefix)\(try parseDisk(volume).vmid)-\(snapshot)-\(getpid())-\(token)"
        try makeClone(of: "\(target)@\(snapshot)", clone, volume: volume)
        do {
            let file = "\(try mountpoint(clone))/\(volume.volname).raw"
            guard FileSystem.exists(file) else {
                throw StorageError(.notFound, "volume '\(volume)' is not in snapshot '\(snapshot)' (no \(volume.volname).raw in \(target)@\(snapshot))")
            }
            let identity = try FileIdentity(of: file)
            let recorded = recordIdentity ? record(identity, of: volume, in: "\(target)@\(snapshot)") : nil
            return try FileBlockSource(path: file, name: "\(volume)@\(snapshot)", dropBehind: true, onClose: { [self] in
                recorded?.wait()
                try retryingBusy { _ = try zfs("destroy", clone) }
            })
        } catch {
            try? retryingBusy { _ = try zfs("destroy", clone) }
            throw error
        }
    }

    /// A read-only clone of `snapshot`; the clone's error says when the snapshot is not there (no `zfs list` first).
    func makeClone(of snapshot: String, _ clone: String, volume: VolumeID) throws {
        do {
            _ = try zfs("clone", "-o", "readonly=on", snapshot, clone)
        } catch let e as StorageError where Self.isMissing(e) {
            throw StorageError(.notFound, "snapshot '\(snapshot.split(separator: "@").last ?? "")' of volume '\(volume)' does not exist")
        }
    }

    /// Clones made to read a snapshot are named with this prefix, so leftovers of a killed run can be found.
    public static let clonePrefix = "snapdump-read-vm-"

    /// Read clones of the VMs' snapshots first (a snapshot with a clone cannot be destroyed), then the
    /// snapshots; both found by one `zfs list` of the pool, which shows the snapshots left too.
    public func removeLeftovers(of volumes: [VolumeID], snapshotPrefix prefix: String) throws -> LeftoverRemoval {
        var removed: [String] = []
        var volumesOf: [String: [VolumeID]] = [:]   // snapshot target → its volumes
        for v in volumes {
            try checkOwnership(v)
            volumesOf[try snapshotTarget(v), default: []].append(v)
        }
        let vmids = Set(try volumes.map { try parseDisk($0).vmid })
        // zfs-fuse: each snapshot's createtxg and recorded file identities come along (`ListedSnapshotFacts`),
        // so the incremental's change tracking need not ask for its base's (a `zfs get` round trip).
        let columns = usesZvols ? ["name"] : ["name", "createtxg"] + Set(volumes.map(FileIdentity.property)).sorted()
        let rows = try zfs("list", "-H", "-o", columns.joined(separator: ","), "-r", "-t", "filesystem,volume,snapshot", pool)
            .split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        let names = rows.compactMap(\.first)
        if !usesZvols {
            ListedSnapshotFacts.replace(pool: pool, with: Dictionary(rows.filter { $0.count == columns.count && $0[0].contains("@") }.map { row in
                (row[0], Dictionary(uniqueKeysWithValues: zip(columns.dropFirst(), row.dropFirst())))
            }, uniquingKeysWith: { a, _ in a }))
        }
        for name in names where !name.contains("@") {
            let child = name.hasPrefix(pool + "/") ? String(name.dropFirst(pool.count + 1)) : ""
            guard child.hasPrefix(Self.clonePrefix) else { continue }
            let rest = child.dropFirst(Self.clonePrefix.count)
            guard let vmid = Int(rest.prefix { $0.isNumber }), vmids.contains(vmid),
                  rest.dropFirst(String(vmid).count).hasPrefix("-" + prefix) else { continue }
            try retryingBusy { _ = try zfs("destroy", name) }
            removed.append("read clone '\(name)'")
        }
        var byName: [String: [VolumeID]] = [:]
        var listed: [VolumeID: [String]] = [:]
        for name in names {
            guard let at = name.firstIndex(of: "@"), let vols = volumesOf[String(name[..<at])] else { continue }
            let snapshot = String(name[name.index(after: at)...])
            for v in vols { listed[v, default: []].append(snapshot) }
            if snapshot.hasPrefix(prefix) { byName[snapshot, default: []] += vols }
        }
        for (name, vols) in byName.sorted(by: { $0.key < $1.key }) {
            try deleteSnapshot(vols, name: name)
            removed.append("snapshot '\(name)' of \(vols.map(\.description).sorted().joined(separator: ", "))")
        }
        return LeftoverRemoval(removed: removed, volumes: volumes, listed: listed.mapValues { $0.sorted() }, prefix: prefix)
    }

    /// The WRITE and FREE records of `zfs send -i <base> <new>` for the
    /// volume's object (`ZFSSendStream`): a zvol's data object 1, or on
    /// zfs-fuse the raw file's object. On zfs-fuse the file's object in the
    /// new snapshot is the one the base records (`FileIdentity`) when the
    /// stream shows no directory written since; otherwise it is looked up in
    /// a temporary clone of the new snapshot (the live file may have been
    /// replaced since). There the changed data is kept from the stream
    /// (`ChangedChunks.data`, up to `captureLimit`), so the backup need not
    /// read the snapshot at all.
    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        try checkOwnership(volume)
        let target = try snapshotTarget(volume)
        let new = "\(target)@\(snapshot)", old = "\(target)@\(base)"
        let property = FileIdentity.property(volume)
        // The base's createtxg and recorded file identity as this backup's leftover listing saw them
        // moments ago; else both snapshots' createtxg, volsize and identity in one round trip to the
        // daemon (tens of ms on zfs-fuse), where a snapshot that does not exist has no line.
        let listed = usesZvols ? nil : ListedSnapshotFacts.take(old)
        let props = listed.map { [old: $0] } ?? snapshotProperties([new, old], ["createtxg", usesZvols ? "volsize" : property])
        guard listed != nil || props[new] != nil else {
            throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
        }
        let newProps = props[new] ?? [:]
        guard let oldProps = props[old] else {
            return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' does not exist (deleted by hand?)")
        }
        func changes(_ stream: ZFSSendStream, baseSize: UInt64, size: UInt64) -> ChangeTracking {
            let result = stream.finish(into: ChangedChunks(chunkSize: chunkSize, baseSize: baseSize, size: size, method: "zfs send"))
            guard case .changed(var c) = result else { return result }
            c.data = stream.capturedData(size: size)
            return .changed(c)
        }
        if usesZvols {
            // ZVOL_OBJ: a zvol's data is object 1 of its dataset; a zvol cannot be replaced under its snapshots.
            let size = newProps["volsize"].flatMap(UInt64.init) ?? 0
            let baseSize = oldProps["volsize"].flatMap(UInt64.init) ?? 0
            // The snapshot's device is read directly (no clone to avoid): the data is not kept.
            switch sendStream(from: old, to: new, object: 1, baseTXG: nil, capture: false) {
            case .failure(let f): return .unknown(reason: f.message)
            case .success(let stream): return changes(stream, baseSize: baseSize, size: size)
            }
        }
        guard let baseTXG = oldProps["createtxg"].flatMap(UInt64.init) else {
            return .unknown(reason: "zfs: no createtxg for '\(old)' ('\(oldProps["createtxg"] ?? "")')")
        }
        // The base's file: as recorded on the base, else (a base recorded by nothing: an older snapdump,
        // or the `zfs set` failed) looked up in a clone of it.
        let recorded = try oldProps[property].flatMap(FileIdentity.init(property:)) ?? fileIdentity(volume, in: old)
        let stream: ZFSSendStream
        switch sendStream(from: old, to: new, object: recorded.object, baseTXG: baseTXG, capture: true) {
        case .failure(let f): return .unknown(reason: f.message)
        case .success(let s): stream = s
        }
        if stream.nameChange == nil {
            // Every name still names what it named at the base: the file is still the recorded object.
            return changes(stream, baseSize: recorded.size, size: stream.newSize ?? recorded.size)
        }
        // A directory was written: which object the name names now, from a clone of the new snapshot.
        let current = try fileIdentity(volume, in: new)
        guard current.object == recorded.object else {
            // Another object's changes since the base say nothing about what changed from the base's file.
            return .unknown(reason: "\(volume.volname).raw is object \(current.object) in '\(snapshot)' but was object \(recorded.object) in the base '\(base)' (replaced or renamed)")
        }
        return changes(stream, baseSize: recorded.size, size: current.size)
    }

    /// The changed data kept from a stream at most: beyond it, the changed ranges are read from the snapshot.
    static let captureLimit = min(UInt64(512) << 20, ProcessInfo.processInfo.physicalMemory / 16)

    struct StreamFailure: Error { let message: String }

    /// `zfs send -i old new` parsed for `object`.
    func sendStream(from old: String, to new: String, object: UInt64, baseTXG: UInt64?, capture: Bool) -> Result<ZFSSendStream, StreamFailure> {
        var parser = ZFSSendStream(object: object, baseTXG: baseTXG, captureLimit: capture ? Self.captureLimit : 0)
        do {
            try Command.stream(["zfs", "send", "-i", old, new]) { parser.feed($0) }
        } catch let e as CommandError {
            return .failure(StreamFailure(message: "zfs send -i \(old) \(new) failed: \(e.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"))
        } catch {
            return .failure(StreamFailure(message: "zfs send -i \(old) \(new): \(error)"))
        }
        return .success(parser)
    }

    /// zfs-fuse: the object number (inode) and size of the volume's raw file in `snapshot`
    /// (`dataset@name`; the live file may have been replaced since), read in a temporary clone.
    func fileIdentity(_ volume: VolumeID, in snapshot: String) throws -> FileIdentity {
        // Named like a read clone of a leftover `snapdump-` snapshot, so a killed run's clone is found and removed.
        let clone = "\(pool)/\(Self.clonePrefix)\(try parseDisk(volume).vmid)-snapdump-track-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
        try makeClone(of: snapshot, clone, volume: volume)
        defer { try? retryingBusy { _ = try zfs("destroy", clone) } }
        return try FileIdentity(of: "\(try mountpoint(clone))/\(volume.volname).raw")
    }

    /// Records `identity` on `snapshot` in the background (a `zfs set` is a transaction-group
    /// wait on zfs-fuse, which need not hold up the backup); the caller waits before it is done.
    /// If it fails, the next backup looks the file up in a clone instead.
    func record(_ identity: FileIdentity, of volume: VolumeID, in snapshot: String) -> Command.Pending {
        Command.start(["zfs", "set", "\(FileIdentity.property(volume))=\(identity.propertyValue)", snapshot])
    }
}

/// zfs-fuse: which object a disk's raw file is in a snapshot, and its size, recorded on each
/// base snapshot as a user property (`snapdump:object:vm-100-disk-0` = "5/8589934592") so the
/// next backup can follow the file through the `zfs send` stream without a clone. Recorded only
/// from a clone of that snapshot or from a stream that proves it (`ZFSSendStream.nameChange`);
/// it lives and dies with the snapshot it describes.
struct FileIdentity: Equatable {
    var object: UInt64
    var size: UInt64

    static func property(_ volume: VolumeID) -> String { "snapdump:object:\(volume.volname)" }

    var propertyValue: String { "\(object)/\(size)" }

    init(object: UInt64, size: UInt64) {
        self.object = object
        self.size = size
    }

    /// From a recorded value; nil for anything else ("-": not recorded).
    init?(property value: String) {
        let f = value.split(separator: "/")
        guard f.count == 2, let o = UInt64(f[0]), let s = UInt64(f[1]) else { return nil }
        self.init(object: o, size: s)
    }

    /// Of the file at `path` (ZFS: the inode number is the object number).
    init(of path: String) throws {
        let file = try File.openForReading(path)
        var st = stat()
        guard fstat(file.fd, &st) == 0 else { throw SystemError("stat", file.path) }
        // Closed before the clone can be destroyed: an open file makes zfs-fuse's destroy fail "busy".
        try file.close()
        self.init(object: UInt64(st.st_ino), size: UInt64(st.st_size))
    }
}

/// zfs-fuse: what the leftover removal's `zfs list` of a pool showed of each snapshot
/// (`createtxg`, and the `snapdump:object:<disk>` identities, "-" when unset), so that the
/// incremental's change tracking moments later need not ask the daemon for its base's again.
/// Both are fixed once the snapshot exists (the identity is set only by the backup that took
/// it). Each listing replaces its pool's entries, and an entry is taken once: a base looked
/// up without a listing before it is asked with `zfs get`, as before.
enum ListedSnapshotFacts {
    private static let facts = Mutex<[String: [String: String]]>([:])

    static func replace(pool: String, with listed: [String: [String: String]]) {
        facts.withLock { f in
            f = f.filter { !$0.key.hasPrefix(pool + "/") && !$0.key.hasPrefix(pool + "@") }
            f.merge(listed) { _, new in new }
        }
    }

    /// `dataset@snapshot`'s listed properties, removed; nil when no listing showed it.
    static func take(_ snapshot: String) -> [String: String]? {
        facts.withLock { $0.removeValue(forKey: snapshot) }
    }
}
