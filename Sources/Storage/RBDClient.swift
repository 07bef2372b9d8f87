import CRBD
import Foundation

/// How to reach a Ceph cluster as a client: monitors, cephx user and keyring
/// (storage.cfg `monhost`, `username`, `keyring`); nil values fall back to the
/// local ceph.conf (CEPH_CONF or /etc/ceph/ceph.conf), as librados does.
public struct RBDClientConfig: Sendable, Equatable {
    public var monhost: String?
    public var username: String
    public var keyring: String?

    public init(monhost: String?, username: String?, keyring: String?) {
        self.monhost = monhost
        self.username = username ?? "admin"
        self.keyring = keyring
    }

    /// `monhost` as librados' mon_host wants it: Proxmox separates monitors by
    /// spaces, commas or semicolons.
    var monHostOption: String? {
        monhost.map { $0.split(whereSeparator: { " ,;".contains($0) }).joined(separator: ",") }
    }
}

/// A negative errno from librbd/librados, with the call that returned it.
struct RBDCallError: Error {
    var call: String
    var errno: Int32
    var text: String { String(cString: strerror(errno)) }
}

/// librbd and librados, opened on first use (CRBD's shim): most runs never
/// talk to Ceph, and loading them at start was half of every run's start-up.
enum LibRBD {
    private static let loaded: Result<sd_rbd_api, RBDCallError> = {
        var error: UnsafePointer<CChar>?
        guard let api = sd_rbd_load(&error) else {
            return .failure(RBDCallError(call: "dlopen(librbd.so.1): \(error.map { String(cString: $0) } ?? "unknown error")", errno: ENOENT))
        }
        return .success(api.pointee)
    }()

    /// The entry points, or why librbd cannot be used (not installed).
    static func load() throws -> sd_rbd_api { try loaded.get() }
}

/// The entry points; only called once an `RBDConnection` exists (its init loaded them).
private var librbd: sd_rbd_api { try! LibRBD.load() }

/// One connection to a cluster and an I/O context on one pool. Closed by
/// `close()` (or deinit); not shared between threads except for image I/O,
/// which librbd allows.
final class RBDConnection: @unchecked Sendable {
    // @unchecked: the handles are set in init and released once in close().
    private var cluster: rados_t?
    private(set) var io: rados_ioctx_t?
    let pool: String

    /// Connects; librbd's own cache is off so that a write that returned is on the
    /// OSDs (what another client's snapshot sees), as QEMU's cache=none has it.
    init(_ config: RBDClientConfig, pool: String, timeout: Int = 20) throws {
        self.pool = pool
        _ = try LibRBD.load()
        var c: rados_t?
        try Self.check("rados_create2", librbd.rados_create2!(&c, "ceph", "client.\(config.username)", 0))
        cluster = c
        do {
            if config.monhost == nil || config.keyring == nil {
                // Whatever the local configuration provides (CEPH_CONF, /etc/ceph/ceph.conf).
                _ = librbd.rados_conf_read_file!(c, nil)
            }
            if let m = config.monHostOption { try set("mon_host", m) }
            if let k = config.keyring { try set("keyring", k) }
            try set("rbd_cache", "false")
            try set("client_mount_timeout", String(timeout))
            try set("rados_mon_op_timeout", String(timeout))
            try set("rados_osd_op_timeout", String(timeout))
            try set("log_to_stderr", "false")
            try set("err_to_stderr", "false")
            try Self.check("rados_connect", librbd.rados_connect!(c))
            var ioctx: rados_ioctx_t?
            try Self.check("rados_ioctx_create(\(pool))", librbd.rados_ioctx_create!(c, pool, &ioctx))
            io = ioctx
        } catch {
            close()
            throw error
        }
    }

    private func set(_ key: String, _ value: String) throws {
        try Self.check("rados_conf_set(\(key))", librbd.rados_conf_set!(cluster, key, value))
    }

    static func check(_ call: String, _ r: Int32) throws {
        if r < 0 { throw RBDCallError(call: call, errno: -r) }
    }

    /// A monitor command (`{"prefix": "df", "format": "json"}`); returns its output.
    func monCommand(_ json: String) throws -> Data {
        var out: UnsafeMutablePointer<CChar>?
        var outLen = 0
        var status: UnsafeMutablePointer<CChar>?
        var statusLen = 0
        let r = json.withCString { cmd -> Int32 in
            var cmds: [UnsafePointer<CChar>?] = [cmd]
            return librbd.rados_mon_command!(cluster, &cmds, 1, nil, 0, &out, &outLen, &status, &statusLen)
        }
        defer {
            if out != nil { librbd.rados_buffer_free!(out) }
            if status != nil { librbd.rados_buffer_free!(status) }
        }
        try Self.check("mon command \(json)", r)
        guard let out else { return Data() }
        return Data(bytes: out, count: outLen)
    }

    /// Bytes the pool's objects hold (librados pool stats).
    func poolBytesUsed() throws -> UInt64 {
        var st = rados_pool_stat_t()
        try Self.check("rados_ioctx_pool_stat(\(pool))", librbd.rados_ioctx_pool_stat!(io, &st))
        return st.num_bytes
    }

    /// Image names in the pool.
    func imageNames() throws -> [String] {
        var max = 64
        while true {
            var specs = [rbd_image_spec_t](repeating: rbd_image_spec_t(), count: max)
            var n = max
            let r = librbd.rbd_list2!(io, &specs, &n)
            if r == -ERANGE { max = n + 16; continue }
            try Self.check("rbd_list2(\(pool))", r)
            defer { librbd.rbd_image_spec_list_cleanup!(&specs, n) }
            return (0..<n).map { String(cString: specs[$0].name) }
        }
    }

    func create(_ name: String, size: UInt64) throws {
        var order: Int32 = 0
        try Self.check("rbd_create(\(pool)/\(name))", librbd.rbd_create!(io, name, size, &order))
    }

    func remove(_ name: String) throws {
        try Self.check("rbd_remove(\(pool)/\(name))", librbd.rbd_remove!(io, name))
    }

    // MARK: Groups (RBD "consistency groups": one snapshot of all their images at once)

    /// Group names in the pool.
    func groupNames() throws -> [String] {
        var size = 1024
        while true {
            var buf = [CChar](repeating: 0, count: size)
            var n = size
            let r = librbd.rbd_group_list!(io, &buf, &n)
            if r == -ERANGE { size = n + 256; continue }
            try Self.check("rbd_group_list(\(pool))", r)
            // NUL-separated names; `r` is the bytes used.
            return buf.prefix(Int(r)).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        }
    }

    func createGroup(_ group: String) throws {
        try Self.check("rbd_group_create(\(pool)/\(group))", librbd.rbd_group_create!(io, group))
    }

    /// Removes the group (its snapshots and memberships with it).
    func removeGroup(_ group: String) throws {
        try Self.check("rbd_group_remove(\(pool)/\(group))", librbd.rbd_group_remove!(io, group))
    }

    func addToGroup(_ group: String, image: String) throws {
        try Self.check("rbd_group_image_add(\(pool)/\(group), \(image))", librbd.rbd_group_image_add!(io, group, io, image))
    }

    func removeFromGroup(_ group: String, image: String) throws {
        try Self.check("rbd_group_image_remove(\(pool)/\(group), \(image))", librbd.rbd_group_image_remove!(io, group, io, image))
    }

    /// Names of the group's images.
    func groupImages(_ group: String) throws -> [String] {
        var max = 16
        while true {
            var infos = [rbd_group_image_info_t](repeating: rbd_group_image_info_t(), count: max)
            var n = max
            let r = librbd.rbd_group_image_list!(io, group, &infos, MemoryLayout<rbd_group_image_info_t>.size, &n)
            if r == -ERANGE { max = n + 16; continue }
            try Self.check("rbd_group_image_list(\(pool)/\(group))", r)
            defer { _ = librbd.rbd_group_image_list_cleanup!(&infos, MemoryLayout<rbd_group_image_info_t>.size, n) }
            return (0..<n).map { String(cString: infos[$0].name) }
        }
    }

    /// Names of the group's snapshots (complete or not: an incomplete one is what a failed create left).
    func groupSnapshots(_ group: String) throws -> [String] {
        var max = 16
        while true {
            var infos = [rbd_group_snap_info_t](repeating: rbd_group_snap_info_t(), count: max)
            var n = max
            let r = librbd.rbd_group_snap_list!(io, group, &infos, MemoryLayout<rbd_group_snap_info_t>.size, &n)
            if r == -ERANGE { max = n + 16; continue }
            try Self.check("rbd_group_snap_list(\(pool)/\(group))", r)
            defer { _ = librbd.rbd_group_snap_list_cleanup!(&infos, MemoryLayout<rbd_group_snap_info_t>.size, n) }
            return (0..<n).map { String(cString: infos[$0].name) }
        }
    }

    /// One snapshot of every image in the group, taken while librbd holds all their
    /// exclusive locks: the lock owner (QEMU) hands each over after its in-flight
    /// writes, and its next writes wait (`-EBUSY`, retried) until the snapshot is done.
    /// Without librbd's quiesce round, as `createSnapshotSkippingQuiesce`.
    func createGroupSnapshot(_ group: String, _ snap: String) throws {
        try Self.check("rbd_group_snap_create2(\(pool)/\(group)@\(snap))",
                       librbd.rbd_group_snap_create2!(io, group, snap, UInt32(RBD_SNAP_CREATE_SKIP_QUIESCE)))
    }

    func removeGroupSnapshot(_ group: String, _ snap: String) throws {
        try Self.check("rbd_group_snap_remove(\(pool)/\(group)@\(snap))", librbd.rbd_group_snap_remove!(io, group, snap))
    }

    func close() {
        if let io { librbd.rados_ioctx_destroy!(io) }
        io = nil
        if let cluster { librbd.rados_shutdown!(cluster) }
        cluster = nil
    }

    deinit { close() }
}

/// An open RBD image (or snapshot of one, read-only).
final class RBDImage: @unchecked Sendable {
    // @unchecked: `image` is set in init and released once in close(); librbd
    // image handles are safe for concurrent I/O.
    private var image: rbd_image_t?
    let name: String

    init(_ connection: RBDConnection, name: String, snapshot: String? = nil, readOnly: Bool) throws {
        self.name = name
        var img: rbd_image_t?
        if readOnly {
            try RBDConnection.check("rbd_open_read_only(\(name)\(snapshot.map { "@" + $0 } ?? ""))",
                                    librbd.rbd_open_read_only!(connection.io, name, &img, snapshot))
        } else {
            try RBDConnection.check("rbd_open(\(name))", librbd.rbd_open!(connection.io, name, &img, nil))
        }
        image = img
    }

    func size() throws -> UInt64 {
        var s: UInt64 = 0
        try RBDConnection.check("rbd_get_size(\(name))", librbd.rbd_get_size!(image, &s))
        return s
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let r = librbd.rbd_read!(image, offset + UInt64(done), buffer.count - done,
                             buffer.baseAddress!.advanced(by: done).assumingMemoryBound(to: CChar.self))
            if r < 0 { throw RBDCallError(call: "rbd_read(\(name), offset \(offset + UInt64(done)))", errno: Int32(-r)) }
            if r == 0 { break }
            done += r
        }
        return done
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let r = librbd.rbd_write!(image, offset + UInt64(done), buffer.count - done,
                              buffer.baseAddress!.advanced(by: done).assumingMemoryBound(to: CChar.self))
            if r < 0 { throw RBDCallError(call: "rbd_write(\(name), offset \(offset + UInt64(done)))", errno: Int32(-r)) }
            done += r
        }
    }

    func flush() throws {
        try RBDConnection.check("rbd_flush(\(name))", librbd.rbd_flush!(image))
    }

    /// Reads from now on see `snapshot` (nil: the image head).
    func setSnapshot(_ snapshot: String?) throws {
        try RBDConnection.check("rbd_snap_set(\(name)@\(snapshot ?? "-"))", librbd.rbd_snap_set!(image, snapshot))
    }

    /// Allocated extents in `offset..<offset+length` (those written since `from`,
    /// a snapshot, when given), from the object map (fast-diff) where the image
    /// has one: whole objects, never a byte read.
    func allocatedExtents(offset: UInt64, length: UInt64, from: String? = nil) throws -> [(offset: UInt64, length: UInt64)] {
        final class Box { var extents: [(offset: UInt64, length: UInt64)] = [] }
        let box = Box()
        let r = librbd.rbd_diff_iterate2!(image, from, offset, length, 1, 1, { off, len, exists, arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue()
            if exists != 0 { b.extents.append((off, UInt64(len))) }
            return 0
        }, Unmanaged.passUnretained(box).toOpaque())
        try RBDConnection.check("rbd_diff_iterate2(\(name))", r)
        return box.extents.sorted { $0.offset < $1.offset }
    }

    /// Extents written or discarded since snapshot `from` (`rbd_diff_iterate2`;
    /// the object map narrows the objects asked when the image has fast-diff):
    /// discarded ones (exists == 0) included, they read as zeros now.
    func changedExtents(since from: String, length: UInt64) throws -> [(offset: UInt64, length: UInt64, exists: Bool)] {
        final class Box { var extents: [(offset: UInt64, length: UInt64, exists: Bool)] = [] }
        let box = Box()
        // whole_object 0: the extents written, not whole 4 MiB objects (what `rbd diff` prints), so a
        // backup reads only those; `exists` false: discarded or gone, reads as zeros.
        let r = librbd.rbd_diff_iterate2!(image, from, 0, length, 1, 0, { off, len, exists, arg in
            Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue().extents.append((off, UInt64(len), exists != 0))
            return 0
        }, Unmanaged.passUnretained(box).toOpaque())
        try RBDConnection.check("rbd_diff_iterate2(\(name), from \(from))", r)
        return box.extents
    }

    /// A snapshot of the image: a user snapshot (`rbd snap create`), or its part of a
    /// group snapshot, which librbd names `.group.<pool>_<group id>_<snap id>` in the
    /// group namespace; `name` is then the group snapshot's name and `group` its group.
    struct Snapshot {
        var id: UInt64
        var name: String
        var created: Date
        var group: String?
        /// The image's size at the snapshot.
        var size: UInt64
    }

    /// User and group snapshots, oldest first (trash and mirror snapshots are librbd's own).
    func snapshots() throws -> [Snapshot] {
        var max: Int32 = 16
        while true {
            var infos = [rbd_snap_info_t](repeating: rbd_snap_info_t(), count: Int(max))
            var n = max
            let r = librbd.rbd_snap_list!(image, &infos, &n)
            if r == -ERANGE { max = n + 16; continue }
            try RBDConnection.check("rbd_snap_list(\(name))", r)
            defer { librbd.rbd_snap_list_end!(&infos) }
            return try (0..<Int(r)).compactMap { i in
                let id = infos[i].id
                var kind = RBD_SNAP_NAMESPACE_TYPE_USER
                try RBDConnection.check("rbd_snap_get_namespace_type(\(name))", librbd.rbd_snap_get_namespace_type!(image, id, &kind))
                var snapName = String(cString: infos[i].name), group: String?
                switch kind {
                case RBD_SNAP_NAMESPACE_TYPE_USER: break
                case RBD_SNAP_NAMESPACE_TYPE_GROUP:
                    var ns = rbd_snap_group_namespace_t()
                    try RBDConnection.check("rbd_snap_get_group_namespace(\(name))",
                                            librbd.rbd_snap_get_group_namespace!(image, id, &ns, MemoryLayout<rbd_snap_group_namespace_t>.size))
                    defer { _ = librbd.rbd_snap_group_namespace_cleanup!(&ns, MemoryLayout<rbd_snap_group_namespace_t>.size) }
                    snapName = String(cString: ns.group_snap_name)
                    group = String(cString: ns.group_name)
                default: return nil
                }
                var ts = timespec()
                try RBDConnection.check("rbd_snap_get_timestamp(\(name))", librbd.rbd_snap_get_timestamp!(image, id, &ts))
                return Snapshot(id: id, name: snapName,
                                created: Date(timeIntervalSince1970: Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9), group: group,
                                size: infos[i].size)
            }
        }
    }

    /// Reads from now on see snapshot `id` (a group snapshot has no name `rbd_snap_set` finds).
    func setSnapshot(id: UInt64) throws {
        try RBDConnection.check("rbd_snap_set_by_id(\(name)@\(id))", librbd.rbd_snap_set_by_id!(image, id))
    }

    /// The group the image belongs to, if any.
    func group() throws -> String? {
        var info = rbd_group_info_t()
        try RBDConnection.check("rbd_get_group(\(name))", librbd.rbd_get_group!(image, &info, MemoryLayout<rbd_group_info_t>.size))
        defer { _ = librbd.rbd_group_info_cleanup!(&info, MemoryLayout<rbd_group_info_t>.size) }
        guard info.pool != -1, let n = info.name else { return nil }
        let g = String(cString: n)
        return g.isEmpty ? nil : g
    }

    func createSnapshot(_ snap: String) throws {
        try RBDConnection.check("rbd_snap_create(\(name)@\(snap))", librbd.rbd_snap_create!(image, snap))
    }

    /// A snapshot without librbd's quiesce round (RBD_SNAP_CREATE_SKIP_QUIESCE = 1): a notify
    /// to every client of the image, waited for, so that clients with a quiesce hook (rbd-nbd)
    /// can pause their I/O. QEMU, the only client here, has none, and a backup has stopped the
    /// guest's I/O already (fs-freeze through the agent, QEMU paused): it was window time only.
    func createSnapshotSkippingQuiesce(_ snap: String) throws {
        try RBDConnection.check("rbd_snap_create2(\(name)@\(snap))", librbd.rbd_snap_create2!(image, snap, 1, nil, nil))
    }

    func removeSnapshot(_ snap: String) throws {
        try RBDConnection.check("rbd_snap_remove(\(name)@\(snap))", librbd.rbd_snap_remove!(image, snap))
    }

    func close() {
        if let image { _ = librbd.rbd_close!(image) }
        image = nil
    }

    deinit { close() }
}
