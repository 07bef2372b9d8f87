import Foundation
import SnapdumpConfig
import SnapdumpSystem
import Storage
import Testing
import TestSupport

@Suite("storage.cfg: section config, definitions, atomic save")
struct StorageConfigTests {
    /// A storage.cfg as Proxmox writes it, plus comments and odd spacing a user may add.
    static let handWritten = """
    # storages of this host
    dir: local
    \tpath /var/lib/vz
    \tcontent images,backup
    \tprune-backups keep-last=3,keep-daily=7

    btrfs: fast
    \tpath /mnt/btrfs
    \tcontent images
    \tdisable 1
      # a comment inside a section

    zfspool: tank\t
    \tpool tank/vm   
    \tcontent images
    \tsparse
    """

    static let canonical = """
    dir: local
    \tpath /var/lib/vz
    \tcontent images,backup
    \tprune-backups keep-last=3,keep-daily=7

    btrfs: fast
    \tpath /mnt/btrfs
    \tcontent images
    \tdisable 1

    zfspool: tank
    \tpool tank/vm
    \tcontent images
    \tsparse


    """

    @Test func sectionConfigRoundTrip() throws {
        let cfg = try SectionConfig.parse(Self.handWritten, file: "storage.cfg", schema: StorageDefinition.schema)
        #expect(cfg.sections.map(\.id) == ["local", "fast", "tank"])
        #expect(cfg.sections.map(\.line) == [2, 7, 13])
        #expect(cfg[id: "local"]?["prune-backups"] == "keep-last=3,keep-daily=7")
        #expect(cfg[id: "tank"]?["pool"] == "tank/vm")
        #expect(cfg[id: "tank"]?["sparse"] == "")
        let text = cfg.serialized()
        #expect(text == Self.canonical, "\(text.debugDescription)")
        let again = try SectionConfig.parse(text, file: "storage.cfg", schema: StorageDefinition.schema)
        #expect(again == cfg)
        #expect(again.serialized() == text)
    }

    @Test(arguments: [
        ("dir local\n", 1, "section header"),
        ("dir: local\n\tpath /x\n\ncontent images\n", 4, "section header"),
        ("\tpath /x\n", 1, "outside a section"),
        ("dir: local\n\tpath /x\n\n\tcontent images\n", 4, "outside a section"),
        ("dir: local\n\tpath /x\n\tfoo bar\n", 3, "unknown key 'foo' for dir 'local'"),
        ("dir: local\n\tpath /x\n\tpool tank\n", 3, "unknown key 'pool' for dir 'local'"),
        ("btrfs: a\n\tpath /x\n\treflink 1\n", 3, "unknown key 'reflink' for btrfs 'a'"),
        ("iscsi: vg\n", 1, "unknown section type 'iscsi'"),
        ("rbd: c\n\tpath /x\n", 2, "unknown key 'path' for rbd 'c'"),
        ("d!r: local\n", 1, "invalid section type"),
        ("dir: 1local\n", 1, "invalid dir id '1local'"),
        ("dir: lo cal\n", 1, "invalid dir id"),
        ("dir: \n", 1, "invalid dir id ''"),
        ("dir: a\n\tpath /x\n\ndir: a\n\tpath /y\n", 4, "duplicate id 'a'"),
        ("dir: a\n\tpath /x\n\tpath /y\n", 3, "duplicate key 'path'"),
        ("dir: a\n\tpa/th /x\n", 2, "invalid key 'pa/th'"),
    ] as [(String, Int, String)])
    func sectionConfigErrors(text: String, line: Int, message: String) throws {
        do {
            _ = try StorageConfigFile.parseForTest(text)
            Issue.record("parsed: \(text.debugDescription)")
        } catch let e as ConfigError {
            #expect(e.file == "/etc/snapdump/storage.cfg" && e.line == line, "\(e)")
            #expect(e.description.hasPrefix("/etc/snapdump/storage.cfg:\(line): "), "\(e)")
            #expect(e.message.contains(message), "\(e)")
        }
    }

    /// A file with CRLF line ends is either read as the same file with LF ends or
    /// refused with an error naming the file — never misread.
    @Test func crlfLineEnds() throws {
        let lf = "dir: local\n\tpath /var/lib/vz\n\tcontent images\n\nzfspool: tank\n\tpool tank/vm\n"
        let crlf = lf.replacingOccurrences(of: "\n", with: "\r\n")
        do {
            #expect(try StorageConfigFile.parseForTest(crlf) == (try StorageConfigFile.parseForTest(lf)))
        } catch let e as ConfigError {
            #expect(e.file == "/etc/snapdump/storage.cfg" && e.line != nil, "\(e)")
        }
    }

    @Test(arguments: [
        ("dir: a\n\tcontent images\n", "needs an absolute 'path'"),
        ("dir: a\n\tpath relative/dir\n", "needs an absolute 'path'"),
        ("btrfs: a\n", "needs an absolute 'path'"),
        ("zfspool: a\n\tcontent images\n", "zfspool needs 'pool'"),
        ("zfspool: a\n\tpool tank\n\tcontent backup\n", "cannot hold content 'backup'"),
        ("dir: a\n\tpath /x\n\treflink maybe\n", "reflink must be 0 or 1, got 'maybe'"),
        ("dir: a\n\tpath /x\n\tis_mountpoint mnt/backup\n", "is_mountpoint must be yes, no or an absolute path"),
        ("dir: a\n\tpath /x\n\tcreate-base-path 2\n", "create-base-path must be 0 or 1"),
        ("dir: a\n\tpath /x\n\tdisable 2\n", "disable must be 0 or 1"),
        ("dir: a\n\tpath /x\n\tcontent images,iso\n", "unknown content type 'iso'"),
        ("dir: a\n\tpath /x\n\tformat vmdk\n", "unknown format 'vmdk'"),
        ("rbd: a\n\tpool p\n\tkrbd 1\n", "krbd 1 maps images with the kernel rbd module"),
        ("rbd: a\n\tkrbd 2\n", "krbd must be 0 or 1"),
        ("rbd: a\n\tcontent images,backup\n", "rbd cannot hold content 'backup'"),
        ("rbd: a\n\tkeyring ceph.keyring\n", "keyring must be an absolute path, got 'ceph.keyring'"),
        ("lvm: a\n\tcontent images\n", "lvm needs 'vgname'"),
        ("lvmthin: a\n\tvgname pve\n", "lvmthin needs 'thinpool'"),
        ("lvm: a\n\tvgname pve\n\tsaferemove sure\n", "saferemove must be 0 or 1"),
        ("lvm: a\n\tvgname pve\n\tbase iscsi:0.0.1.scsi-x\n", "'base' (a VG on an iSCSI LUN) is not supported"),
        ("lvmthin: a\n\tvgname pve\n\tthinpool data\n\tcontent backup\n", "lvmthin cannot hold content 'backup'"),
    ] as [(String, String)])
    func definitionErrors(text: String, message: String) throws {
        // Value errors name the section's header line; here every section starts on line 1.
        do {
            _ = try StorageConfigFile.parseForTest(text)
            Issue.record("accepted: \(text.debugDescription)")
        } catch let e as ConfigError {
            #expect(e.line == 1 && e.message.contains(message), "\(e)")
            #expect(e.message.contains("'a'") || e.message.contains("key"), "names the storage: \(e)")
        }
    }

    /// An rbd section as Proxmox writes it (plus snapdump's keyring path): the
    /// values arrive in the definition, the pool defaults to `rbd`, and it writes back the same.
    @Test func rbdDefinition() throws {
        let text = "rbd: ceph\n\tcontent images\n\tkrbd 0\n\tmonhost 10.0.0.1 10.0.0.2;10.0.0.3:6789\n\tpool vms\n\tusername backup\n\tkeyring /etc/pve/priv/ceph/ceph.keyring\n"
        let d = try #require(try StorageConfigFile.parseForTest(text).first)
        #expect(d.type == .rbd && d.pool == "vms" && d.username == "backup")
        #expect(d.monhost == "10.0.0.1 10.0.0.2;10.0.0.3:6789" && d.keyring == "/etc/pve/priv/ceph/ceph.keyring")
        let again = try StorageDefinition(section: d.section, file: "x")
        #expect(again == d)
        let bare = try #require(try StorageConfigFile.parseForTest("rbd: c\n").first)
        #expect(bare.pool == "rbd" && bare.monhost == nil && bare.content == [.images])
    }

    /// `local-lvm` as a Proxmox installer writes it, and a thick lvm storage: they read and write back the same.
    @Test func lvmDefinitions() throws {
        let text = "lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent images\n\nlvm: thick\n\tvgname vg0\n\tcontent images\n\tsaferemove 1\n"
        let defs = try StorageConfigFile.parseForTest(text)
        #expect(defs.map(\.type) == [.lvmthin, .lvm])
        #expect(defs[0].vgname == "pve" && defs[0].thinpool == "data" && !defs[0].saferemove)
        #expect(defs[1].vgname == "vg0" && defs[1].thinpool == nil && defs[1].saferemove)
        for d in defs { #expect(try StorageDefinition(section: d.section, file: "x") == d) }
    }

    /// Booleans as Proxmox writes them (`yes`, `on`, `true`), and the dir
    /// activation keys: `mkdir` is the old name of `create-base-path`.
    @Test func proxmoxBooleansAndDirActivationKeys() throws {
        let text = "dir: a\n\tpath /x\n\treflink yes\n\tmkdir 0\n\tis_mountpoint yes\n\ndir: b\n\tpath /y\n\tis_mountpoint /mnt/usb\n\tcreate-base-path off\n\tmkdir 1\n"
        let defs = try StorageConfigFile.parseForTest(text)
        #expect(defs[0].reflink && !defs[0].createBasePath && defs[0].requiredMountPoint == "/x")
        #expect(!defs[1].createBasePath && defs[1].requiredMountPoint == "/mnt/usb")
        let plain = try #require(try StorageConfigFile.parseForTest("dir: c\n\tpath /z\n\tis_mountpoint no\n").first)
        #expect(plain.createBasePath && plain.requiredMountPoint == nil)
        for d in defs + [plain] { #expect(try StorageDefinition(section: d.section, file: "x") == d) }
    }

    /// A missing path is created on activation (as pvesm does) unless
    /// `create-base-path 0`; `is_mountpoint` keeps a storage whose disk is not
    /// mounted inactive, and then nothing is created under the mount point.
    @Test func dirActivationCreatesPathOrRefuses() throws {
        let dir = try Integration.scratchDirectory("dir-activate")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = "\(dir)/new/store"
        try DirectoryPlugin(StorageDefinition(type: .dir, id: "a", path: made)).activate()
        #expect(FileSystem.isDirectory(made))

        let refused = "\(dir)/missing"
        #expect(throws: StorageError.self) {
            try DirectoryPlugin(StorageDefinition(type: .dir, id: "b", path: refused, createBasePath: false)).activate()
        }
        #expect(!FileSystem.exists(refused))

        let notMounted = "\(dir)/usb"
        let d = StorageDefinition(type: .dir, id: "usb", path: "\(notMounted)/dump", isMountpoint: notMounted)
        do {
            try DirectoryPlugin(d).activate()
            Issue.record("a storage on an unmounted mount point was activated")
        } catch let e as StorageError {
            #expect(e.message.contains("storage 'usb'") && e.message.contains("not mounted"), "\(e)")
        }
        #expect(!FileSystem.exists(notMounted))
        #expect(try DirectoryPlugin(d).status().active == false)
        // `/` is a mount point: the same storage below it is active.
        #expect(FileSystem.isMountPoint("/") && !FileSystem.isMountPoint(dir))
    }

    @Test func loadSaveRoundTrip() throws {
        let dir = try Integration.scratchDirectory("cfg-roundtrip")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/sub/storage.cfg"
        var file = try StorageConfigFile.load(path)
        #expect(file.storages.isEmpty, "a missing file is an empty configuration")
        let defs = [
            StorageDefinition(type: .dir, id: "local", path: "/var/lib/vz", content: [.images, .backup], pruneBackups: "keep-last=3"),
            StorageDefinition(type: .dir, id: "xfs.1", path: "/mnt/xfs", reflink: true, format: .qcow2),
            StorageDefinition(type: .btrfs, id: "fast_2", path: "/mnt/btrfs", disabled: true),
            StorageDefinition(type: .zfspool, id: "tank", pool: "tank/vm"),
        ]
        for d in defs { try file.add(d) }
        try file.save()
        #expect(try FileSystem.list(dir + "/sub") == ["storage.cfg"], "no temp file left")
        let text = try FileSystem.readText(path)
        #expect(text == """
        dir: local
        \tpath /var/lib/vz
        \tcontent images,backup
        \tprune-backups keep-last=3

        dir: xfs.1
        \tpath /mnt/xfs
        \tcontent images
        \treflink 1
        \tformat qcow2

        btrfs: fast_2
        \tpath /mnt/btrfs
        \tcontent images
        \tdisable 1

        zfspool: tank
        \tpool tank/vm
        \tcontent images


        """, "\(text)")
        let loaded = try StorageConfigFile.load(path)
        #expect(loaded.storages == defs)

        // Duplicate and invalid ids, unknown storages: errors naming the id and the file.
        var f2 = loaded
        let dup = #expect(throws: StorageError.self) { try f2.add(StorageDefinition(type: .dir, id: "local", path: "/x")) }
        #expect(dup?.code == .duplicateStorage && dup?.message.contains(path) == true)
        let bad = #expect(throws: StorageError.self) { try f2.add(StorageDefinition(type: .dir, id: "-x", path: "/x")) }
        #expect(bad?.code == .invalidArgument)
        // A key the type does not take would make a file that cannot be loaded again.
        let foreign = #expect(throws: StorageError.self) { try f2.add(StorageDefinition(type: .zfspool, id: "z", path: "/x", pool: "tank")) }
        #expect(foreign?.code == .invalidArgument && foreign?.message.contains("'path'") == true)
        let unknown = #expect(throws: StorageError.self) { try f2.remove("nosuch") }
        #expect(unknown?.code == .unknownStorage && unknown?.message.contains("'nosuch'") == true)
        try f2.remove("xfs.1")
        try f2.save()
        #expect(try StorageConfigFile.load(path).storages.map(\.id) == ["local", "fast_2", "tank"])
    }

    /// A save that cannot complete leaves the old file exactly as it was. Root ignores
    /// permissions, so the directory is made immutable (chattr +i) to make writing fail.
    @Test func failedSaveKeepsOldFile() throws {
        let dir = try Integration.scratchDirectory("cfg-atomic")
        defer { _ = try? Command.capture(["chattr", "-i", dir]); try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/storage.cfg"
        var file = try StorageConfigFile.load(path)
        try file.add(StorageDefinition(type: .dir, id: "local", path: "/var/lib/vz"))
        try file.save()
        let before = try FileSystem.readText(path)
        guard (try? Command.capture(["chattr", "+i", dir]))?.status == 0 else {
            try Test.cancel("chattr +i does not work on \(FileSystem.filesystemType(dir) ?? "this filesystem")")
        }
        try file.add(StorageDefinition(type: .dir, id: "second", path: "/srv"))
        let e = #expect(throws: StorageError.self) { try file.save() }
        #expect(e?.message.hasPrefix("cannot save \(path) (left unchanged): ") == true, "\(String(describing: e))")
        _ = try Command.run(["chattr", "-i", dir])
        #expect(try FileSystem.readText(path) == before)
        #expect(try FileSystem.list(dir) == ["storage.cfg"], "no temp file left")
        #expect(try StorageConfigFile.load(path).storages.map(\.id) == ["local"])
    }
}

extension StorageConfigFile {
    /// Parses text as if it were /etc/snapdump/storage.cfg, through the same steps as `load`.
    static func parseForTest(_ text: String) throws -> [StorageDefinition] {
        let file = "/etc/snapdump/storage.cfg"
        let cfg = try SectionConfig.parse(text, file: file, schema: StorageDefinition.schema)
        return try cfg.sections.map { try StorageDefinition(section: $0, file: file) }
    }
}
