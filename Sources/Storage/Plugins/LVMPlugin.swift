import Foundation
import SnapdumpSystem

/// `lvm` and `lvmthin`: logical volumes `vm-<vmid>-disk-<n>` in volume group
/// `vgname`, named and tagged as pvesm does (`pve-vm-<vmid>`); volume ids are
/// `storeid:vm-100-disk-0`. `lvm` LVs are thick and cannot be snapshotted
/// (snapshot mode falls back or refuses, as for raw `dir`); `saferemove 1`
/// zeroes an LV before removing it. `lvmthin` LVs live in `thinpool`; a
/// snapshot is a thin snapshot `snap_<volname>_<snapname>` (created with
/// the activation-skip flag, so it is activated with `-K` only to be read).
public struct LVMPlugin: StoragePlugin {
    public let definition: StorageDefinition

    public init(_ definition: StorageDefinition) { self.definition = definition }

    var thin: Bool { definition.type == .lvmthin }
    var vg: String { definition.vgname ?? "" }
    var thinpool: String { definition.thinpool ?? "data" }

    /// One LV as `lvs` reports it.
    struct LV {
        var name: String
        var size: UInt64
        var origin: String
        var created: Date
        var pool: String
        var tags: [String]
        var active: Bool
    }

    func lvm(_ args: [String]) throws -> String {
        do {
            // Foundation's Process leaks a socket into children (not close-on-exec); LVM would warn about it.
            return try Command.run(["lvm"] + args, environment: ["LVM_SUPPRESS_FD_WARNINGS": "1"])
        } catch let e as CommandError {
            let detail = e.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            if detail.contains("Insufficient free space") || detail.contains("not enough free space") || detail.contains("exceeds the size of thin pool") {
                throw StorageError(.noSpace, "storage '\(id)': lvm \(args.joined(separator: " ")): \(detail)")
            }
            throw StorageError(.backend, "storage '\(id)': lvm \(args.joined(separator: " ")) failed: \(detail)")
        }
    }

    /// The VG's LVs, sizes in bytes, times in seconds since the epoch.
    func lvs() throws -> [LV] {
        let out = try lvm(["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|",
                           "--config", "report { time_format = \"%s\" }",
                           "-o", "lv_name,lv_size,origin,lv_time,pool_lv,lv_tags,lv_active", vg])
        return out.split(separator: "\n").compactMap { line in
            let f = line.trimmingCharacters(in: .whitespaces).split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 7 else { return nil }
            return LV(name: f[0], size: UInt64(f[1]) ?? 0, origin: f[2], created: Date(timeIntervalSince1970: Double(f[3]) ?? 0),
                      pool: f[4], tags: f[5].split(separator: ",").map(String.init), active: f[6] == "active")
        }
    }

    func parseDisk(_ volume: VolumeID) throws -> DiskName {
        try checkOwnership(volume)
        guard let d = DiskName(volume.volname) else {
            throw StorageError(.invalidArgument, "invalid volume name '\(volume.volname)' on storage '\(id)': expected 'vm-<vmid>-disk-<n>'")
        }
        return d
    }

    /// The disks of this storage: LVs named `vm-<vmid>-disk-<n>` (in the thin pool, for lvmthin).
    func disks(_ all: [LV]) -> [LV] {
        all.filter { DiskName($0.name) != nil && $0.origin.isEmpty && (thin ? $0.pool == thinpool : $0.pool.isEmpty) }
    }

    func lv(_ volume: VolumeID, in all: [LV]) throws -> LV {
        _ = try parseDisk(volume)
        guard let l = disks(all).first(where: { $0.name == volume.volname }) else {
            throw StorageError(.notFound, "volume '\(volume)' does not exist (no logical volume \(vg)/\(volume.volname))")
        }
        return l
    }

    static func snapshotLV(_ volname: String, _ snap: String) -> String { "snap_\(volname)_\(snap)" }

    public func activate() throws {
        let vgs = (try? lvm(["vgs", "--noheadings", "-o", "vg_name", vg])) ?? ""
        guard vgs.trimmingCharacters(in: .whitespacesAndNewlines) == vg else {
            throw StorageError(.backend, "storage '\(id)': volume group '\(vg)' not found")
        }
        if thin {
            guard try lvs().contains(where: { $0.name == thinpool }) else {
                throw StorageError(.backend, "storage '\(id)': thin pool '\(vg)/\(thinpool)' not found")
            }
        }
    }

    public func status() throws -> StorageStatus {
        let snaps = thin ? "yes (thin snapshots; guest paused for several)" : "no (thick LVs)"
        guard (try? activate()) != nil else {
            return StorageStatus(id: id, type: definition.type, active: false, total: 0, used: 0, available: 0, snapshots: snaps)
        }
        if thin {
            // The pool's size and the share of its data space in use, as pvesm reports lvmthin.
            let f = try lvm(["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "-o", "lv_size,data_percent", "\(vg)/\(thinpool)"])
                .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "|")
            let total = UInt64(f.first ?? "0") ?? 0
            let used = UInt64(Double(total) * (Double(f.dropFirst().first ?? "0") ?? 0) / 100)
            return StorageStatus(id: id, type: .lvmthin, active: true, total: total, used: used, available: total - min(used, total), snapshots: snaps)
        }
        let f = try lvm(["vgs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "-o", "vg_size,vg_free", vg])
            .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "|")
        let total = UInt64(f.first ?? "0") ?? 0, free = UInt64(f.dropFirst().first ?? "0") ?? 0
        return StorageStatus(id: id, type: .lvm, active: true, total: total, used: total - min(free, total), available: free, snapshots: snaps)
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID {
        try NameRules.validateVMID(vmid)
        if let format, format != .raw {
            throw StorageError(.invalidArgument, "storage '\(id)': \(definition.type.rawValue) volumes are raw, not \(format.rawValue)")
        }
        try activate()
        let size = try roundedSize(size)
        // Every LV of the VG counts, not only this storage's: LV names are unique per VG, and an
        // lvm and an lvmthin storage (or two thin pools) may share one (as pve-storage's find_free_diskname).
        let used = Set(try lvs().compactMap { DiskName($0.name) }.filter { $0.vmid == vmid }.map(\.index))
        var n = 0
        while used.contains(n) { n += 1 }
        let name = DiskName(vmid: vmid, index: n).description
        if thin {
            _ = try lvm(["lvcreate", "-aly", "-V", "\(size)b", "--name", name, "--thinpool", "\(vg)/\(thinpool)"])
        } else {
            // -Wy: wipe old signatures; the extents are zeroed on first use by nobody, so zero the LV
            // ourselves below: a new volume reads as zeros (storage contract).
            _ = try lvm(["lvcreate", "-aly", "-Wy", "--yes", "-L", "\(size)b", "-n", name, "--addtag", "pve-vm-\(vmid)", vg])
            try zero("/dev/\(vg)/\(name)")
        }
        return VolumeID(storage: id, volname: name)
    }

    /// Writes zeros over a whole block device (saferemove, and a new thick LV).
    func zero(_ device: String) throws {
        do {
            _ = try Command.run(["blkdiscard", "-z", device])
        } catch {
            _ = try Command.capture(["dd", "if=/dev/zero", "of=\(device)", "bs=1M", "oflag=direct", "conv=fsync"])
        }
    }

    public func free(_ volume: VolumeID) throws {
        let all = try lvs()
        let l = try lv(volume, in: all)
        let snaps = all.filter { $0.origin == l.name && $0.name.hasPrefix("snap_\(l.name)_") }.map { String($0.name.dropFirst("snap_\(l.name)_".count)) }
        guard snaps.isEmpty else {
            throw StorageError(.busy, "volume '\(volume)' has snapshots (\(snaps.joined(separator: ", "))): delete them first")
        }
        if definition.saferemove && !thin {
            _ = try lvm(["lvchange", "-aly", "\(vg)/\(l.name)"])
            try zero("/dev/\(vg)/\(l.name)")
        }
        _ = try lvm(["lvremove", "-f", "\(vg)/\(l.name)"])
    }

    public func list(vmid: Int?) throws -> [VolumeInfo] {
        try activate()
        return disks(try lvs()).compactMap { l in
            guard let d = DiskName(l.name), vmid == nil || d.vmid == vmid else { return nil }
            return VolumeInfo(volume: VolumeID(storage: id, volname: l.name), format: .raw, size: l.size, vmid: d.vmid)
        }.sorted { $0.volume < $1.volume }
    }

    /// The LV's device, activated if it is not.
    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        let l = try lv(volume, in: try lvs())
        if !l.active { _ = try lvm(["lvchange", "-aly", "\(vg)/\(l.name)"]) }
        return ("/dev/\(vg)/\(l.name)", .raw)
    }

    public func size(of volume: VolumeID) throws -> UInt64 { try lv(volume, in: try lvs()).size }

    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability {
        guard format == .raw else { return .unsupported(reason: "\(definition.type.rawValue) holds raw volumes only") }
        return thin ? .perVolume : .unsupported(reason: "thick LVM volumes have no snapshots here (use lvmthin)")
    }

    /// One `lvcreate -s` per volume; a failure removes the snapshots made so far.
    public func createSnapshot(_ volumes: [VolumeID], name: String) throws {
        try prepareSnapshot(volumes, name: name).take()
    }

    /// The checks (an `lvs` process: a second or more under TCG) before a guest's
    /// pause; only the `lvcreate -s` calls are left for the window.
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        if let e = snapshotUnsupported(.raw) { throw e }
        try NameRules.validateSnapshotName(name)
        let all = try lvs()
        for v in volumes {
            _ = try lv(v, in: all)
            let s = Self.snapshotLV(v.volname, name)
            if all.contains(where: { $0.name == s }) {
                throw StorageError(.alreadyExists, "snapshot '\(vg)/\(s)' already exists on storage '\(id)'")
            }
        }
        return PreparedSnapshot { [self] in
            var made: [String] = []
            do {
                for v in volumes {
                    let s = Self.snapshotLV(v.volname, name)
                    _ = try lvm(["lvcreate", "-s", "-n", s, "\(vg)/\(v.volname)"])
                    made.append(s)
                }
            } catch {
                for s in made { _ = try? lvm(["lvremove", "-f", "\(vg)/\(s)"]) }
                throw error
            }
        }
    }

    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws {
        if let e = snapshotUnsupported(.raw) { throw StorageError(.notFound, "\(e.message); no snapshot '\(name)'") }
        try NameRules.validateSnapshotName(name)
        let all = try lvs()
        for v in volumes {
            _ = try parseDisk(v)
            let s = Self.snapshotLV(v.volname, name)
            guard all.contains(where: { $0.name == s && $0.origin == v.volname }) else {
                throw StorageError(.notFound, "snapshot '\(vg)/\(s)' does not exist on storage '\(id)'")
            }
        }
        for v in volumes { _ = try lvm(["lvremove", "-f", "\(vg)/\(Self.snapshotLV(v.volname, name))"]) }
    }

    public func listSnapshots() throws -> [SnapshotInfo] {
        guard thin else { return [] }
        try activate()
        let all = try lvs()
        var result: [SnapshotInfo] = []
        for l in all where !l.origin.isEmpty && DiskName(l.origin) != nil && l.name.hasPrefix("snap_\(l.origin)_") {
            let snap = String(l.name.dropFirst("snap_\(l.origin)_".count))
            result.append(SnapshotInfo(volume: VolumeID(storage: id, volname: l.origin), name: snap, created: l.created, used: nil))
        }
        return result.sorted { ($0.volume, $0.name) < ($1.volume, $1.name) }
    }

    /// A thin snapshot is read through its own device: activated with `-K`
    /// (it carries the activation-skip flag), deactivated again on close.
    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource {
        guard let snapshot else {
            let (p, _) = try path(of: volume)
            return try FileBlockSource(path: p, name: volume.description)
        }
        _ = try parseDisk(volume)
        let s = Self.snapshotLV(volume.volname, snapshot)
        guard thin, try lvs().contains(where: { $0.name == s && $0.origin == volume.volname }) else {
            throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
        }
        _ = try lvm(["lvchange", "-ay", "-K", "\(vg)/\(s)"])
        let plugin = self
        do {
            return try FileBlockSource(path: "/dev/\(vg)/\(s)", name: "\(volume)@\(snapshot)", dropBehind: true, onClose: {
                _ = try plugin.lvm(["lvchange", "-an", "\(plugin.vg)/\(s)"])
            })
        } catch {
            _ = try? lvm(["lvchange", "-an", "\(vg)/\(s)"])
            throw error
        }
    }

    /// lvmthin: `thin_delta` between the two thin snapshots' device ids, read
    /// from a metadata snapshot of the live pool (reserved with a dm message
    /// and released after, as the pool's metadata may change meanwhile).
    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        guard thin else {
            return .unknown(reason: "storage '\(id)' (lvm) has no snapshots to compare")
        }
        _ = try parseDisk(volume)
        let all = try lvs()
        let newLV = Self.snapshotLV(volume.volname, snapshot), baseLV = Self.snapshotLV(volume.volname, base)
        guard let new = all.first(where: { $0.name == newLV && $0.origin == volume.volname }) else {
            throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
        }
        guard let old = all.first(where: { $0.name == baseLV && $0.origin == volume.volname }) else {
            return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' does not exist (deleted by hand?)")
        }
        var ids: [String: String] = [:]
        for line in try lvm(["lvs", "--noheadings", "--separator", "|", "-o", "lv_name,thin_id", vg]).split(separator: "\n") {
            let f = line.trimmingCharacters(in: .whitespaces).split(separator: "|").map(String.init)
            if f.count == 2 { ids[f[0]] = f[1] }
        }
        guard let a = ids[baseLV], let b = ids[newLV], !a.isEmpty, !b.isEmpty else {
            return .unknown(reason: "lvs shows no thin device ids for \(vg)/\(baseLV) and \(vg)/\(newLV)")
        }
        // device-mapper names double the dashes inside VG and LV names.
        func dm(_ s: String) -> String { s.replacingOccurrences(of: "-", with: "--") }
        let pool = "\(dm(vg))-\(dm(thinpool))"
        do {
            try Command.run(["dmsetup", "message", "\(pool)-tpool", "0", "reserve_metadata_snap"])
        } catch let e as CommandError {
            return .unknown(reason: "cannot reserve a metadata snapshot of thin pool \(vg)/\(thinpool): \(e.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        defer { _ = try? Command.run(["dmsetup", "message", "\(pool)-tpool", "0", "release_metadata_snap"]) }
        let xml: String
        do {
            xml = try Command.run(["thin_delta", "--metadata-snap", "--snap1", a, "--snap2", b, "/dev/mapper/\(pool)_tmeta"])
        } catch let e as CommandError {
            return .unknown(reason: "thin_delta of \(vg)/\(baseLV) and \(vg)/\(newLV) failed: \(e.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        var result = ChangedChunks(chunkSize: chunkSize, baseSize: old.size, size: new.size, method: "thin_delta")
        return ThinDelta.changes(xml: xml, into: &result)
    }
}
