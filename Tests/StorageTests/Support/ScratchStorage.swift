import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// Fixture lookup for tests: the value, or — when the fixture is missing — a
/// failure under SNAPDUMP_INTEGRATION=1 and a cancelled (skipped) test otherwise.
enum Fixture {
    static func need(_ name: String) throws -> String {
        try Integration.need(name)[0]
    }

    /// A fixture that is a directory (mount point): it must exist when it is configured.
    static func directory(_ name: String) throws -> String {
        let v = try need(name)
        guard FileSystem.isDirectory(v) else { throw TestFailure("fixture \(name)=\(v) is configured but is not a directory (run scripts/fixtures/setup.sh)") }
        return v
    }

    static func short() -> String { String(UUID().uuidString.prefix(8)).lowercased() }
}

/// A storage of its own for one test: a fresh directory inside a fixture
/// filesystem (dir, btrfs) or a fresh dataset inside the test pool (zfspool).
/// `leftovers()` lists anything the storage layer left behind;
/// `destroy()` removes everything the test made, whatever state it is in.
final class ScratchStorage: @unchecked Sendable {
    // @unchecked: used by one test at a time; immutable after init.
    let definition: StorageDefinition
    let plugin: any StoragePlugin
    /// Directory holding the storage's files (dir/btrfs path, or the zfs dataset's mountpoint).
    let root: String
    /// The zfs dataset used as the storage's `pool`, for zfspool.
    let dataset: String?
    /// Mount point of the btrfs filesystem under `root`, for subvolume checks.
    let btrfsMount: String?
    /// The Ceph pool made for this test (rbd), and the cluster's config for the CLI.
    let cephPool: String?
    let cephConf: String?
    /// The volume group (lvm, lvmthin), the thin pool made for this test, and the LVs there before it.
    let lvmVG: String?
    let lvmThinPool: String?
    let lvmBefore: Set<String>

    init(type: StorageType, fixtureDir: String? = nil, zpool: String? = nil, reflink: Bool = false, format: VolumeFormat? = nil) throws {
        let tag = Fixture.short()
        let id = "t\(tag)"
        cephPool = nil
        cephConf = nil
        lvmVG = nil
        lvmThinPool = nil
        lvmBefore = []
        switch type {
        case .dir, .btrfs, .repo:
            precondition(type != .repo, "a repo storage holds no images")
            let base = fixtureDir!
            root = base + "/snapdump-test-" + tag
            try FileSystem.createDirectory(root)
            dataset = nil
            btrfsMount = FileSystem.filesystemType(base) == "btrfs" ? base : nil
            definition = StorageDefinition(type: type, id: id, path: root, reflink: reflink, format: format)
        case .zfspool:
            let ds = "\(zpool!)/snapdump-test-\(tag)"
            try Command.run(["zfs", "create", ds])
            dataset = ds
            btrfsMount = nil
            root = try Command.run(["zfs", "get", "-H", "-o", "value", "mountpoint", ds]).trimmingCharacters(in: .whitespacesAndNewlines)
            definition = StorageDefinition(type: .zfspool, id: id, pool: ds, format: format)
        case .rbd, .lvm, .lvmthin:
            preconditionFailure("use init(ceph:) or init(lvm:vg:)")
        }
        plugin = StorageRegistry.plugin(for: definition)
    }

    /// An rbd storage on a pool of its own in the fixture cluster (scripts/fixtures/ceph.sh),
    /// reached by monhost + keyring as storage.cfg configures it (no ceph.conf).
    init(ceph: CephFixture) throws {
        // A missing cluster: skipped, or a failure under SNAPDUMP_INTEGRATION=1.
        _ = try Fixture.need("SNAPDUMP_TEST_CEPH_CONF")
        let tag = Fixture.short()
        let pool = "snapdump-test-\(tag)"
        try ceph.createPool(pool)
        cephPool = pool
        cephConf = ceph.conf
        lvmVG = nil
        lvmThinPool = nil
        lvmBefore = []
        dataset = nil
        btrfsMount = nil
        root = ""
        definition = StorageDefinition(type: .rbd, id: "t\(tag)", pool: pool, monhost: ceph.monhost, username: "admin", keyring: ceph.keyring)
        plugin = StorageRegistry.plugin(for: definition)
    }

    /// An lvm storage on the fixture VG, or an lvmthin one on a thin pool of its own in it.
    init(lvm type: StorageType, vg: String) throws {
        let tag = Fixture.short()
        lvmVG = vg
        lvmBefore = Set(Self.lvNames(vg))
        if type == .lvmthin {
            let pool = "tp\(tag)"
            try Command.run(["lvm", "lvcreate", "-q", "-L", "192M", "-T", "\(vg)/\(pool)"])
            lvmThinPool = pool
        } else {
            lvmThinPool = nil
        }
        cephPool = nil
        cephConf = nil
        dataset = nil
        btrfsMount = nil
        root = ""
        definition = StorageDefinition(type: type, id: "t\(tag)", vgname: vg, thinpool: lvmThinPool, saferemove: type == .lvm)
        plugin = StorageRegistry.plugin(for: definition)
    }

    static func lvNames(_ vg: String) -> [String] {
        ((try? Command.run(["lvm", "lvs", "--noheadings", "-o", "lv_name", vg])) ?? "")
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// LVs this test made (beside its thin pool and the pool's hidden parts).
    func lvmEntries() -> [String: FileTree.Entry] {
        guard let vg = lvmVG else { return [:] }
        var entries: [String: FileTree.Entry] = [:]
        for n in Self.lvNames(vg) where !lvmBefore.contains(n) && n != lvmThinPool {
            entries[n] = FileTree.Entry(kind: "f", size: 0, digest: "")
        }
        return entries
    }

    var id: String { definition.id }

    /// btrfs subvolumes below `root` (paths relative to the filesystem).
    func subvolumes() -> [String] {
        guard let mount = btrfsMount, let out = try? Command.run(["btrfs", "subvolume", "list", mount]) else { return [] }
        let rel = String(root.dropFirst(mount.count + 1)) + "/"
        return out.split(separator: "\n").compactMap { line in
            guard let r = line.range(of: " path ") else { return nil }
            let p = String(line[r.upperBound...])
            return p.hasPrefix(rel) ? p : nil
        }
    }

    /// zfs datasets, snapshots and clones below the test dataset (not the dataset itself).
    func zfsChildren() -> [String] {
        guard let ds = dataset, let out = try? Command.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", ds]) else { return [] }
        return out.split(separator: "\n").map(String.init).filter { $0 != ds }
    }

    /// Live processes (qemu-nbd) whose command line names something of this storage.
    func processes() -> [Processes.Entry] {
        if let vg = lvmVG { return Processes.matching("/dev/\(vg)/") }
        return cephPool.map { Processes.matching("rbd:\($0)/") } ?? Processes.matching(root + "/")
    }

    /// RBD images and snapshots of the test pool (`rbd ls -l`), its groups, and what is in its trash.
    func rbdEntries() -> [String: FileTree.Entry] {
        guard let pool = cephPool, let conf = cephConf else { return [:] }
        var entries: [String: FileTree.Entry] = [:]
        struct Image: Decodable { var image: String; var snapshot: String?; var size: UInt64 }
        if let out = try? Command.run(["rbd", "--conf", conf, "ls", "-l", "--format", "json", pool]),
           let images = try? JSONDecoder().decode([Image].self, from: Data(out.utf8)) {
            for i in images { entries[i.image + (i.snapshot.map { "@" + $0 } ?? "")] = FileTree.Entry(kind: "f", size: i.size, digest: "") }
        }
        // RBD groups (a group snapshot of several images) with their snapshots.
        if let groups = try? Command.run(["rbd", "--conf", conf, "group", "ls", pool]) {
            for g in groups.split(separator: "\n") {
                entries["group " + g] = FileTree.Entry(kind: "g", size: 0, digest: "")
                let snaps = (try? Command.run(["rbd", "--conf", conf, "group", "snap", "ls", "\(pool)/\(g)", "--format", "json"])) ?? ""
                let listed = snaps.trimmingCharacters(in: .whitespacesAndNewlines)
                if listed != "[]" { entries["group \(g) snapshots \(listed)"] = FileTree.Entry(kind: "?", size: 0, digest: "") }
            }
        }
        if let trash = try? Command.run(["rbd", "--conf", conf, "trash", "ls", pool]) {
            for line in trash.split(separator: "\n") { entries["trash " + line] = FileTree.Entry(kind: "?", size: 0, digest: "") }
        }
        return entries
    }

    /// What the storage holds now: its directory tree, or its RBD images and snapshots.
    func capture() throws -> FileTree {
        if let vg = lvmVG { return FileTree(root: "lvm:" + vg, entries: lvmEntries()) }
        return cephPool == nil ? try FileTree.capture(root) : FileTree(root: "rbd:" + cephPool!, entries: rbdEntries())
    }

    /// Everything the storage layer left behind once all volumes and snapshots are gone:
    /// files, snapshot directories, `@` subvolumes, `.part` and probe files, btrfs
    /// subvolumes, zfs snapshots and clones, qemu-nbd processes. Empty directories
    /// (`images`, `images/<vmid>`) are allowed, as Proxmox leaves them too.
    func leftovers() -> [String] {
        var found: [String] = []
        if cephPool == nil, lvmVG == nil, let tree = try? FileTree.capture(root) {
            for (path, e) in tree.entries {
                let parts = path.split(separator: "/")
                let allowed = e.kind == "d" && parts[0] == "images" && (parts.count == 1 || parts.count == 2 && Int(parts[1]) != nil)
                if !allowed { found.append("\(e.kind == "d" ? "directory" : "file") \(path)") }
            }
        }
        found += subvolumes().map { "btrfs subvolume \($0)" }
        found += zfsChildren().map { "zfs \($0)" }
        found += rbdEntries().keys.map { "rbd \(cephPool!)/\($0)" }
        found += lvmEntries().keys.map { "lv \(lvmVG!)/\($0)" }
        found += processes().map { "process \($0.pid): \($0.commandLine)" }
        return found.sorted()
    }

    /// Removes everything this test made (helpers it started, subvolumes, datasets, files).
    func destroy() {
        Processes.terminate(processes().map(\.pid))
        if let vg = lvmVG {
            for n in lvmEntries().keys.sorted(by: >) { _ = try? Command.capture(["lvm", "lvremove", "-f", "\(vg)/\(n)"]) }
            if let pool = lvmThinPool { _ = try? Command.capture(["lvm", "lvremove", "-f", "\(vg)/\(pool)"]) }
            return
        }
        if let pool = cephPool, let conf = cephConf {
            CephFixture(conf: conf, monhost: "", keyring: "").removePool(pool)
            for f in (try? FileSystem.list(RBDPlugin.clientConfigDir)) ?? [] where f.hasPrefix(id + "-") {
                try? FileSystem.remove("\(RBDPlugin.clientConfigDir)/\(f)")
            }
            return
        }
        if let ds = dataset {
            for attempt in 0..<40 {
                let o = try? Command.capture(["zfs", "destroy", "-R", ds])
                if o?.status == 0 || !((o?.stderr ?? "").contains("busy")) || attempt == 39 { break }
                usleep(250_000)
            }
            return
        }
        // Deepest subvolumes first.
        for sv in subvolumes().sorted(by: { $0.count > $1.count }) {
            _ = try? Command.capture(["btrfs", "-q", "subvolume", "delete", btrfsMount! + "/" + sv])
        }
        _ = try? Command.capture(["rm", "-rf", "--one-file-system", root])
    }
}

