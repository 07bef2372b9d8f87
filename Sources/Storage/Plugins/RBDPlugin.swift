import Foundation
import SnapdumpSystem

/// `rbd`: Ceph RBD images `vm-<vmid>-disk-<n>` in `pool`, reached through
/// userspace librbd (these hosts have no kernel rbd or nbd module; `krbd 1`
/// is refused when the config is read). Volume ids are `storeid:vm-100-disk-0`.
///
/// QEMU opens an image with its own rbd driver: `path(of:)` is the legacy QEMU
/// filename `rbd:<pool>/<image>:conf=<file>:id=<user>`, where the file is a
/// client config snapdump writes (mon_host + keyring, root-only) because
/// `-blockdev driver=rbd` takes the keyring only from a config file.
///
/// Snapshots are `atomic`: one image gets an `rbd snap create`; several images
/// of one guest get one group snapshot of the RBD group `vm-<vmid>` (see
/// `RBDGroupSnapshot`), so the engine need not pause the guest around them;
/// a base snapshot of several images adds a change-tracking mark on each.
public struct RBDPlugin: StoragePlugin {
    public let definition: StorageDefinition

    public init(_ definition: StorageDefinition) { self.definition = definition }

    var pool: String { definition.pool ?? "rbd" }
    var client: RBDClientConfig {
        RBDClientConfig(monhost: definition.monhost, username: definition.username, keyring: definition.keyring)
    }

    /// Where the QEMU client configs live (one per storage, rewritten when it changes).
    public static var clientConfigDir: String {
        ProcessInfo.processInfo.environment["SNAPDUMP_RBD_CONF_DIR"] ?? "/run/snapdump/ceph"
    }

    /// Runs `body` on a fresh connection to the pool; librbd errors become StorageErrors naming the storage.
    func withConnection<T>(_ what: String, _ body: (RBDConnection) throws -> T) throws -> T {
        let c = try connect()
        defer { c.close() }
        do {
            return try body(c)
        } catch let e as RBDCallError {
            throw mapError(e, what)
        }
    }

    /// A connection to the pool; the caller closes it.
    func connect() throws -> RBDConnection {
        do {
            return try RBDConnection(client, pool: pool)
        } catch let e as RBDCallError {
            let hint = e.errno == ENOENT && e.call.hasPrefix("rados_ioctx_create") ? "pool '\(pool)' does not exist"
                : "cannot connect to the Ceph cluster (monhost \(definition.monhost ?? "from ceph.conf"), user \(client.username)): \(e.text)"
            throw StorageError(.backend, "storage '\(id)': \(hint)")
        }
    }

    func mapError(_ e: RBDCallError, _ what: String) -> StorageError {
        let code: StorageError.Code
        switch e.errno {
        case ENOENT: code = .notFound
        case EEXIST: code = .alreadyExists
        case EBUSY: code = .busy
        case ENOSPC, EDQUOT: code = .noSpace
        default: code = .backend
        }
        return StorageError(code, "storage '\(id)': \(what): \(e.call): \(e.text)")
    }

    func image(_ volume: VolumeID) throws -> String {
        try checkOwnership(volume)
        guard DiskName(volume.volname) != nil else {
            throw StorageError(.invalidArgument, "invalid volume name '\(volume.volname)' on storage '\(id)': expected 'vm-<vmid>-disk-<n>'")
        }
        return volume.volname
    }

    public func activate() throws {
        try withConnection("activate") { _ in }
    }

    /// Usage as Proxmox reports it for rbd (`ceph df`): used = the pool's stored
    /// bytes, available = its max_avail, total = the two together. A pool created
    /// moments ago is not in `ceph df` until its placement groups report: then
    /// librados' pool stats and the cluster's free space stand in.
    public func status() throws -> StorageStatus {
        let inactive = StorageStatus(id: id, type: .rbd, active: false, total: 0, used: 0, available: 0, snapshots: "yes (per image)")
        guard let (data, poolBytes) = try? withConnection("status", { c in
            (try c.monCommand(#"{"prefix": "df", "format": "json"}"#), try c.poolBytesUsed())
        }) else {
            return inactive
        }
        struct DF: Decodable {
            struct Pool: Decodable {
                struct Stats: Decodable { var stored: UInt64?; var bytes_used: UInt64; var max_avail: UInt64 }
                var name: String
                var stats: Stats
            }
            struct Cluster: Decodable { var total_avail_bytes: UInt64 }
            var stats: Cluster
            var pools: [Pool]
        }
        let df: DF
        do { df = try JSONDecoder().decode(DF.self, from: data) } catch {
            throw StorageError(.backend, "storage '\(id)': cannot read `ceph df` output: \(error)")
        }
        let used: UInt64, available: UInt64
        if let p = df.pools.first(where: { $0.name == pool }) {
            used = p.stats.stored ?? p.stats.bytes_used
            available = p.stats.max_avail
        } else {
            used = poolBytes
            available = df.stats.total_avail_bytes
        }
        return StorageStatus(id: id, type: .rbd, active: true, total: used + available, used: used,
                             available: available, snapshots: "yes (per image; a group snapshot for several of a guest)")
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID {
        try NameRules.validateVMID(vmid)
        if let format, format != .raw {
            throw StorageError(.invalidArgument, "storage '\(id)': rbd volumes are raw, not \(format.rawValue)")
        }
        let size = try roundedSize(size)
        return try withConnection("allocate a disk for VM \(vmid)") { c in
            let used = Set(try c.imageNames().compactMap { n -> Int? in
                guard let d = DiskName(n), d.vmid == vmid else { return nil }
                return d.index
            })
            var n = 0
            while used.contains(n) { n += 1 }
            let name = DiskName(vmid: vmid, index: n).description
            try c.create(name, size: size)
            return VolumeID(storage: id, volname: name)
        }
    }

    public func free(_ volume: VolumeID) throws {
        let name = try image(volume)
        try withConnection("free \(volume)") { c in
            let img = try RBDImage(c, name: name, readOnly: true)
            let snaps = try img.snapshots().map(\.name)
            let group = try img.group()
            img.close()
            guard snaps.isEmpty else {
                throw StorageError(.busy, "volume '\(volume)' has snapshots (\(snaps.joined(separator: ", "))): delete them first")
            }
            // librbd removes no image that is in a group (EMLINK): leave it, and the group if it is empty now.
            if let group { try RBDGroupSnapshot.leave(c, group: group, images: [name]) }
            do {
                try c.remove(name)
            } catch let e as RBDCallError where e.errno == EBUSY {
                throw StorageError(.busy, "volume '\(volume)' is in use (a client such as a running QEMU still has image \(pool)/\(name) open)")
            }
        }
    }

    public func list(vmid: Int?) throws -> [VolumeInfo] {
        try withConnection("list") { c in
            var result: [VolumeInfo] = []
            for n in try c.imageNames() {
                guard let d = DiskName(n), vmid == nil || d.vmid == vmid else { continue }
                let img: RBDImage
                do { img = try RBDImage(c, name: n, readOnly: true) } catch let e as RBDCallError where e.errno == ENOENT { continue }
                result.append(VolumeInfo(volume: VolumeID(storage: id, volname: n), format: .raw, size: try img.size(), vmid: d.vmid))
                img.close()
            }
            return result.sorted { $0.volume < $1.volume }
        }
    }

    public func size(of volume: VolumeID) throws -> UInt64 {
        let name = try image(volume)
        return try withConnection("size of \(volume)") { c in
            do {
                let img = try RBDImage(c, name: name, readOnly: true)
                defer { img.close() }
                return try img.size()
            } catch let e as RBDCallError where e.errno == ENOENT {
                throw StorageError(.notFound, "volume '\(volume)' does not exist (no image \(pool)/\(name))")
            }
        }
    }

    /// Checks the image exists, then returns the QEMU filename (see the type's comment).
    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        _ = try size(of: volume)
        var qemu = "rbd:\(Self.escape(pool))/\(Self.escape(volume.volname))"
        if let conf = try clientConfigFile() { qemu += ":conf=\(Self.escape(conf))" }
        qemu += ":id=\(Self.escape(client.username))"
        return (qemu, .raw)
    }

    /// `:` and `\` are special in QEMU's rbd filenames.
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ":", with: "\\:")
    }

    /// The client config QEMU reads: mon_host and keyring of this storage.
    /// nil when neither is configured (QEMU then reads /etc/ceph/ceph.conf itself).
    func clientConfigFile() throws -> String? {
        guard definition.monhost != nil || definition.keyring != nil else { return nil }
        var text = "# written by snapdump for storage '\(id)'\n[global]\n"
        if let m = client.monHostOption { text += "mon_host = \(m)\n" }
        if let k = definition.keyring { text += "keyring = \(k)\n" }
        // Named by content too: two snapdump configs may give one storage id different clusters.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        let dir = Self.clientConfigDir, file = "\(dir)/\(id)-\(String(hash, radix: 16)).conf"
        if (try? String(contentsOfFile: file, encoding: .utf8)) == text { return file }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // Written aside and renamed: a QEMU starting now reads the old or the new file, never half of one.
        let tmp = "\(file).\(getpid()).tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]),
              rename(tmp, file) == 0 else {
            try? FileSystem.remove(tmp)
            throw StorageError(.backend, "storage '\(id)': cannot write the QEMU client config \(file)")
        }
        return file
    }

    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability {
        format == .raw ? .atomic : .unsupported(reason: "rbd holds raw images only")
    }

    /// One image: `rbd snap create`; several (of one guest): a group snapshot.
    /// If it fails, nothing is left.
    public func createSnapshot(_ volumes: [VolumeID], name: String) throws {
        let prepared = try prepareSnapshot(volumes, name: name)
        defer { prepared.release() }
        try prepared.take()
    }

    /// Connected, the images opened and checked before the window (and for several
    /// images, their group made: `RBDGroupSnapshot.prepare`); inside it one
    /// rbd_snap_create, or one rbd_group_snap_create (no connect in the window;
    /// librbd has the image's lock owner, QEMU, flush its cache before the snapshot).
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        try NameRules.validateSnapshotName(name)
        guard !volumes.isEmpty else { return PreparedSnapshot(take: {}) }
        let names = try volumes.map { try image($0) }
        let vmids = Set(names.compactMap { DiskName($0)?.vmid })
        if vmids.count > 1 {
            throw StorageError(.invalidArgument, "storage '\(id)': several rbd images are snapshotted at once as one group snapshot per VM; volumes of VMs \(vmids.sorted().map(String.init).joined(separator: ", ")) cannot be snapshotted together, snapshot each VM separately")
        }
        let c = try connect()
        var images: [RBDImage] = []
        let release = { for i in images { i.close() }; c.close() }
        do {
            for (v, n) in zip(volumes, names) {
                do {
                    images.append(try RBDImage(c, name: n, readOnly: false))
                } catch let e as RBDCallError where e.errno == ENOENT {
                    throw StorageError(.notFound, "volume '\(v)' does not exist (no image \(pool)/\(n))")
                }
                if try images.last!.snapshots().contains(where: { $0.name == name }) {
                    throw StorageError(.alreadyExists, "snapshot '\(pool)/\(n)@\(name)' already exists on storage '\(id)'")
                }
            }
            if images.count > 1, let vmid = vmids.first {
                let group = try RBDGroupSnapshot.prepare(c, storage: id, vmid: vmid, images: images, name: name)
                // A base gets its change-tracking marks now, before the window (see RBDGroupSnapshot).
                var marked: [String] = []
                do {
                    if BaseSnapshot.isBase(name) {
                        for i in images {
                            try i.createSnapshotSkippingQuiesce(name)
                            marked.append(i.name)
                        }
                    }
                } catch {
                    for i in images { i.close() }
                    RBDGroupSnapshot.removeMarks(c, images: marked, name: name)
                    try? RBDGroupSnapshot.dismantleIfUnused(c, group: group)
                    throw error
                }
                for i in images { i.close() }
                let taken = Flag(), marks = marked
                return PreparedSnapshot(take: { [self] in
                    do { try c.createGroupSnapshot(group, name) } catch let e as RBDCallError { throw mapError(e, "group snapshot '\(pool)/\(group)@\(name)'") }
                    taken.set()
                }, release: {
                    // A group made, and marks taken, for a snapshot that was never taken go again.
                    if !taken.isSet { RBDGroupSnapshot.removeMarks(c, images: marks, name: name) }
                    try? RBDGroupSnapshot.dismantleIfUnused(c, group: group)
                    c.close()
                })
            }
        } catch let e as RBDCallError {
            release()
            throw mapError(e, "snapshot '\(name)'")
        } catch {
            release()
            throw error
        }
        let opened = images
        return PreparedSnapshot(take: { [self] in
            do { try opened[0].createSnapshotSkippingQuiesce(name) } catch let e as RBDCallError { throw mapError(e, "snapshot '\(name)'") }
        }, release: { for i in opened { i.close() }; c.close() })
    }

    /// Removes the named snapshot of each image: a user snapshot, or the group
    /// snapshot it is part of (of all the group's images at once), after which a
    /// group without snapshots is dismantled; a base's change-tracking marks
    /// (user snapshots of the group snapshot's name) go after their group snapshot.
    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws {
        try NameRules.validateSnapshotName(name)
        let names = try volumes.map { try image($0) }
        try withConnection("delete snapshot '\(name)'") { c in
            // Every snapshot found before any is removed: a missing one changes nothing.
            var found: [(image: String, snapshots: [RBDImage.Snapshot])] = []
            for n in names {
                let img = try RBDImage(c, name: n, readOnly: true)
                defer { img.close() }
                let named = try img.snapshots().filter { $0.name == name }
                guard !named.isEmpty else {
                    throw StorageError(.notFound, "snapshot '\(pool)/\(n)@\(name)' does not exist on storage '\(id)'")
                }
                found.append((n, named))
            }
            // The group snapshots first: a mark left alone (killed in between) is still a correct base, since
            // it is older than what was read, while a group snapshot without its marks cannot be diffed from.
            var groups: [String] = []
            for g in found.flatMap({ $0.snapshots.compactMap(\.group) }) where !groups.contains(g) { groups.append(g) }
            for g in groups {
                do { try c.removeGroupSnapshot(g, name) } catch let e as RBDCallError where e.errno == ENOENT {}
            }
            for (n, named) in found where named.contains(where: { $0.group == nil }) {
                let img = try RBDImage(c, name: n, readOnly: false)
                defer { img.close() }
                try img.removeSnapshot(name)
            }
            for g in groups { try RBDGroupSnapshot.dismantleIfUnused(c, group: g) }
        }
    }

    /// Creation times from librbd; `used` as `rbd du` reports it: the data
    /// written between the previous snapshot (or the image's creation) and this
    /// one, from the object map — whole 4 MiB objects. A base of several images
    /// (a group snapshot and its marks of the same name) is listed once, as its
    /// group snapshot. `used` is unknown after a group snapshot without a mark:
    /// librbd 16 diffs only from user snapshots (after a mark it counts from the mark).
    public func listSnapshots() throws -> [SnapshotInfo] {
        try withConnection("list snapshots") { c in
            var result: [SnapshotInfo] = []
            for n in try c.imageNames().sorted() where DiskName(n) != nil {
                let img: RBDImage
                do { img = try RBDImage(c, name: n, readOnly: true) } catch let e as RBDCallError where e.errno == ENOENT { continue }
                defer { img.close() }
                let all = try img.snapshots()
                let userNames = Set(all.filter { $0.group == nil }.map(\.name))
                let groupNames = Set(all.compactMap { $0.group == nil ? nil : $0.name })
                var previous: RBDImage.Snapshot?
                for s in all where s.group != nil || !groupNames.contains(s.name) {
                    try img.setSnapshot(id: s.id)
                    let used = previous.map { !userNames.contains($0.name) } ?? false ? nil
                        : try? img.allocatedExtents(offset: 0, length: img.size(), from: previous?.name).reduce(UInt64(0)) { $0 + $1.length }
                    result.append(SnapshotInfo(volume: VolumeID(storage: id, volname: n), name: s.name, created: s.created, used: used))
                    previous = s
                }
            }
            return result
        }
    }

    /// Opens the image read-only at `snapshot`, by its id on the image: a group
    /// snapshot (librbd opens it by no name) before a user snapshot of the same
    /// name (a base's change-tracking mark, taken before it: not what was read).
    func openImage(_ c: RBDConnection, _ volume: VolumeID, snapshot: String?) throws -> RBDImage {
        let name = try image(volume)
        let img: RBDImage
        do { img = try RBDImage(c, name: name, readOnly: true) } catch let e as RBDCallError where e.errno == ENOENT {
            throw StorageError(.notFound, "volume '\(volume)' does not exist (no image \(pool)/\(name))")
        }
        guard let snapshot else { return img }
        do {
            let named = try img.snapshots().filter { $0.name == snapshot }
            guard let s = named.first(where: { $0.group != nil }) ?? named.last else {
                throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
            }
            try img.setSnapshot(id: s.id)
            return img
        } catch {
            img.close()
            throw error
        }
    }

    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource {
        _ = try image(volume)
        let label = "\(volume)\(snapshot.map { "@" + $0 } ?? "")"
        let c: RBDConnection
        do { c = try RBDConnection(client, pool: pool) } catch let e as RBDCallError { throw mapError(e, "open \(label)") }
        do {
            let img = try openImage(c, volume, snapshot: snapshot)
            return try RBDBlockSource(connection: c, image: img, name: label)
        } catch let e as RBDCallError {
            c.close()
            throw mapError(e, "open \(label)")
        } catch {
            c.close()
            throw error
        }
    }

    /// `rbd_diff_iterate2` on the new snapshot from the base snapshot: what
    /// `rbd diff --from-snap` lists, the extents written (discarded ones read as zeros).
    /// librbd 16 diffs only from a user snapshot: a base that is a group snapshot is
    /// diffed from its change-tracking mark, the user snapshot of the same name taken
    /// just before it, which lists every write since the group snapshot and the few
    /// between the two (a superset; `RBDGroupSnapshot`). A group snapshot without a
    /// mark (made before marks were) cannot be diffed from: `.unknown`, read everything.
    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        try withConnection("changes of \(volume) from \(base) to \(snapshot)") { c in
            let img = try openImage(c, volume, snapshot: snapshot)
            defer { img.close() }
            let named = try img.snapshots().filter { $0.name == base }
            guard !named.isEmpty else {
                return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' does not exist (deleted by hand?)")
            }
            guard let from = named.last(where: { $0.group == nil }) else {
                let g = named.compactMap(\.group).first ?? "?"
                return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' is a snapshot of rbd group '\(g)' without the image snapshot that marks it (a base made before snapdump kept one): librbd 16 diffs only from image snapshots")
            }
            // The size of what the previous backup read: the group snapshot where there is one.
            let read = named.first(where: { $0.group != nil }) ?? from
            let size = try img.size()
            var result = ChangedChunks(chunkSize: chunkSize, baseSize: min(read.size, from.size), size: size, method: "rbd diff")
            for e in try img.changedExtents(since: from.name, length: size) {
                result.insert(offset: e.offset, length: e.length, kind: e.exists ? .data : .zero)
            }
            return .changed(result)
        }
    }

    /// Snapshots named `prefix…` (group snapshots too), then the groups of these
    /// volumes' images that hold no snapshot: a run killed between making the group
    /// and its snapshot, or before its cleanup, left them.
    public func removeLeftovers(of volumes: [VolumeID], snapshotPrefix prefix: String) throws -> LeftoverRemoval {
        var result = try removeLeftoverSnapshots(of: volumes, snapshotPrefix: prefix)
        let names = try volumes.map { try image($0) }
        try withConnection("remove leftovers") { c in
            var groups: Set<String> = []
            for n in names {
                guard let img = try? RBDImage(c, name: n, readOnly: true) else { continue }
                defer { img.close() }
                if let g = try img.group(), g == RBDGroupSnapshot.groupName(vmid: DiskName(n)?.vmid ?? -1) { groups.insert(g) }
            }
            for g in groups.sorted() where try RBDGroupSnapshot.dismantleIfUnused(c, group: g) {
                result.removed.append("rbd group '\(pool)/\(g)' (no snapshots)")
            }
        }
        return result
    }

    public func openForWriting(_ volume: VolumeID) throws -> any VolumeWriter {
        let name = try image(volume)
        let c: RBDConnection
        do { c = try RBDConnection(client, pool: pool) } catch let e as RBDCallError { throw mapError(e, "open \(volume)") }
        do {
            return RBDVolumeWriter(connection: c, image: try RBDImage(c, name: name, readOnly: false), name: volume.description)
        } catch let e as RBDCallError {
            c.close()
            throw e.errno == ENOENT ? StorageError(.notFound, "volume '\(volume)' does not exist (no image \(pool)/\(name))")
                : mapError(e, "open \(volume)")
        }
    }
}

/// Reads an RBD image or snapshot through librbd; allocation from the object map.
public final class RBDBlockSource: BlockSource, @unchecked Sendable {
    // @unchecked: connection and image are released once in close(); librbd I/O is thread-safe.
    public let size: UInt64
    public let name: String
    private let connection: RBDConnection
    private let image: RBDImage

    init(connection: RBDConnection, image: RBDImage, name: String) throws {
        self.connection = connection
        self.image = image
        self.name = name
        size = try image.size()
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard offset < size else { return 0 }
        let want = Int(min(UInt64(buffer.count), size - offset))
        do {
            return try image.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
        } catch let e as RBDCallError {
            throw StorageError(.backend, "\(name): read error at offset \(offset): \(e.text)")
        }
    }

    public func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        let end = min(size, offset + length)
        guard offset < end else { return [] }
        let extents: [(offset: UInt64, length: UInt64)]
        do { extents = try image.allocatedExtents(offset: offset, length: end - offset) } catch let e as RBDCallError {
            throw StorageError(.backend, "\(name): allocation map: \(e.text)")
        }
        var ranges: [AllocationRange] = []
        var pos = offset
        for e in extents {
            let lo = max(e.offset, pos), hi = min(e.offset + e.length, end)
            guard hi > lo else { continue }
            if lo > pos { ranges.append(AllocationRange(offset: pos, length: lo - pos, kind: .zero)) }
            if let last = ranges.last, last.kind == .data, last.offset + last.length == lo {
                ranges[ranges.count - 1].length += hi - lo
            } else {
                ranges.append(AllocationRange(offset: lo, length: hi - lo, kind: .data))
            }
            pos = hi
        }
        if pos < end { ranges.append(AllocationRange(offset: pos, length: end - pos, kind: .zero)) }
        return ranges
    }

    public func close() throws {
        image.close()
        connection.close()
    }
}

/// Writes an RBD image through librbd (restore; tests that play a guest).
final class RBDVolumeWriter: VolumeWriter, @unchecked Sendable {
    // @unchecked: as RBDBlockSource.
    let name: String
    private let connection: RBDConnection
    private let image: RBDImage

    init(connection: RBDConnection, image: RBDImage, name: String) {
        self.connection = connection
        self.image = image
        self.name = name
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        do { try image.write(buffer, at: offset) } catch let e as RBDCallError {
            throw StorageError(e.errno == ENOSPC ? .noSpace : .backend, "\(name): write error at offset \(offset): \(e.text)")
        }
    }

    func sync() throws {
        do { try image.flush() } catch let e as RBDCallError { throw StorageError(.backend, "\(name): flush: \(e.text)") }
    }

    func close() throws {
        image.close()
        connection.close()
    }
}
