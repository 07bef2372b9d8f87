#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// Builds the `qemu-system-x86_64` argv for a VM config.
///
/// Disks are defined with `-blockdev` and stable node names, `drive-<key>`
/// for the format node and `drive-<key>-file` for the protocol node, so
/// block jobs (snapshots, mirror, commit) can name them. The QMP socket,
/// pidfile, serial-console log and guest-agent socket come from
/// `SnapdumpPaths`. With `daemonize` (the default) QEMU forks into the
/// background once it is initialized, so the VM outlives the command that
/// started it and start-up errors come back as the parent's exit status.
public struct QEMUCommandLine: Sendable {
    public var config: VMConfig
    public var disks: [ResolvedDisk]
    public var paths: SnapdumpPaths
    public var accelerator: Accelerator
    public var qemuBinary: String
    public var daemonize: Bool
    /// Whether a disk image accepts O_DIRECT (`cache.direct=on`); zfs-fuse
    /// and tmpfs do not. The default opens the file to find out.
    public var directIOSupported: @Sendable (String) -> Bool

    public init(config: VMConfig, disks: [ResolvedDisk], paths: SnapdumpPaths, accelerator: Accelerator,
                qemuBinary: String = "qemu-system-x86_64", daemonize: Bool = true,
                directIOSupported: @escaping @Sendable (String) -> Bool = QEMUCommandLine.supportsDirectIO) {
        self.config = config
        self.disks = disks
        self.paths = paths
        self.accelerator = accelerator
        self.qemuBinary = qemuBinary
        self.daemonize = daemonize
        self.directIOSupported = directIOSupported
    }

    public static func nodeName(for key: String) -> String { "drive-\(key)" }
    public static func fileNodeName(for key: String) -> String { "drive-\(key)-file" }
    public static let guestAgentPortName = "org.qemu.guest_agent.0"

    /// The full argv, program first. Throws `GuestError(.invalidConfig)`
    /// when the config and the resolved disks do not fit together.
    public func arguments() throws -> [String] {
        let vmid = config.vmid
        func invalid(_ message: String) -> GuestError {
            GuestError(vmid: vmid, .invalidConfig, "VM \(vmid): \(message)")
        }
        if config.kernel == nil && (config.initrd != nil || config.append != nil) {
            throw invalid("'initrd' and 'append' need 'kernel'")
        }
        var resolved: [String: ResolvedDisk] = [:]
        for d in disks {
            guard let disk = config.disk(d.key) else { throw invalid("resolved disk '\(d.key)' is not in the config") }
            guard resolved[d.key] == nil else { throw invalid("disk '\(d.key)' resolved twice") }
            guard ["raw", "qcow2", "vmdk", "qed"].contains(d.format) else {
                throw invalid("\(d.key): unsupported image format '\(d.format)'")
            }
            if let f = disk.format, f != d.format {
                throw invalid("\(d.key): config says format=\(f) but the volume is \(d.format)")
            }
            resolved[d.key] = d
        }
        for disk in config.drives(for: .start) where resolved[disk.key] == nil {
            throw invalid("no path resolved for \(disk.key) (\(disk.volid))")
        }

        let q35 = config.isQ35
        let machine = config.machine.map { String($0.split(separator: "+").first ?? Substring($0)) } ?? "q35"
        let cpus = config.coreCount * config.socketCount
        var argv = [qemuBinary]
        argv += ["-name", config.name ?? "vm\(vmid)"]
        argv += ["-machine", machine, "-accel", accelerator.rawValue]
        argv += ["-m", String(config.memoryMiB)]
        argv += ["-smp", "\(cpus),sockets=\(config.socketCount),cores=\(config.coreCount),maxcpus=\(cpus)"]
        argv += ["-nodefaults", "-display", "none", "-monitor", "none"]
        argv += ["-chardev", "socket,id=qmp,path=\(Self.escape(paths.qmpSocket(vmid))),server=on,wait=off",
                 "-mon", "chardev=qmp,mode=control"]
        // `vm status` asks here: a backup may hold the first monitor for minutes (fleecing's watch).
        argv += ["-chardev", "socket,id=qmp-status,path=\(Self.escape(paths.qmpStatusSocket(vmid))),server=on,wait=off",
                 "-mon", "chardev=qmp-status,mode=control"]
        argv += ["-pidfile", paths.pidFile(vmid)]
        argv += ["-chardev", "file,id=serial0,path=\(Self.escape(paths.consoleLog(vmid)))", "-serial", "chardev:serial0"]
        if daemonize { argv.append("-daemonize") }
        if let kernel = config.kernel {
            argv += ["-kernel", kernel]
            if let initrd = config.initrd { argv += ["-initrd", initrd] }
            if let append = config.append { argv += ["-append", append] }
        }

        // Controllers first, then drives.
        var controllers: [String] = []
        var drives: [String] = []
        let scsihw = config.scsihw ?? "virtio-scsi-pci"
        var addedControllers = Set<String>()
        func controller(_ id: String, _ device: String) {
            if addedControllers.insert(id).inserted { controllers += ["-device", "\(device),id=\(id)"] }
        }
        let bootOrder = config.bootOrder

        for disk in config.disks {
            let key = disk.key
            let node = Self.nodeName(for: key)
            let cdrom = disk.isCDROM
            var device: [String] = []

            if let r = resolved[key] {
                let o = DriveBlockOptions(disk: disk, path: r.path, directIOSupported: directIOSupported)
                drives += ["-blockdev", o.fileArgument(node: Self.fileNodeName(for: key), path: r.path),
                           "-blockdev", o.formatArgument(node: node, format: r.format, fileNode: Self.fileNodeName(for: key))]
                device.append("drive=\(node)")
                if o.writeCacheOff { device.append("write-cache=off") }
            }
            device.append("id=\(key)")
            if let i = bootOrder.firstIndex(of: key) { device.append("bootindex=\(100 + i)") }
            if let serial = disk.options["serial"] { device.append("serial=\(Self.escape(serial))") }
            let ssd = disk.options["ssd"].flatMap(VMConfig.parseBool) ?? false

            switch disk.bus {
            case .virtio:
                drives += ["-device", (["virtio-blk-pci"] + device).joined(separator: ",")]
            case .scsi:
                let bus: [String]
                switch scsihw {
                case "virtio-scsi-pci":
                    controller("scsihw0", "virtio-scsi-pci")
                    bus = ["bus=scsihw0.0", "channel=0", "scsi-id=0", "lun=\(disk.index)"]
                case "virtio-scsi-single":
                    controller("virtioscsi\(disk.index)", "virtio-scsi-pci")
                    bus = ["bus=virtioscsi\(disk.index).0", "channel=0", "scsi-id=0", "lun=\(disk.index)"]
                default:
                    let model = ["lsi": "lsi53c895a", "lsi53c810": "lsi53c810", "megasas": "megasas", "pvscsi": "pvscsi"][scsihw] ?? scsihw
                    let c = disk.index / 7
                    controller("scsihw\(c)", model)
                    bus = ["bus=scsihw\(c).0", "scsi-id=\(disk.index % 7)"]
                }
                let kind = cdrom ? "scsi-cd" : "scsi-hd"
                drives += ["-device", ([kind] + bus + device + (ssd && !cdrom ? ["rotation_rate=1"] : [])).joined(separator: ",")]
            case .sata:
                controller("ahci0", "ahci")
                let kind = cdrom ? "ide-cd" : "ide-hd"
                drives += ["-device", ([kind, "bus=ahci0.\(disk.index)"] + device + (ssd && !cdrom ? ["rotation_rate=1"] : [])).joined(separator: ",")]
            case .ide:
                let kind = cdrom ? "ide-cd" : "ide-hd"
                let bus = q35 ? ["bus=ide.\(disk.index)"] : ["bus=ide.\(disk.index / 2)", "unit=\(disk.index % 2)"]
                drives += ["-device", ([kind] + bus + device + (ssd && !cdrom ? ["rotation_rate=1"] : [])).joined(separator: ",")]
            }
        }
        argv += controllers + drives

        if config.agentEnabled {
            argv += ["-chardev", "socket,id=qga0,path=\(Self.escape(paths.guestAgentSocket(vmid))),server=on,wait=off"]
            if config.agent?["type"] == "isa" {
                argv += ["-device", "isa-serial,chardev=qga0"]
            } else {
                argv += ["-device", "virtio-serial,id=qga0-bus",
                         "-device", "virtserialport,chardev=qga0,name=\(Self.guestAgentPortName)"]
            }
        }
        return argv
    }

    /// QEMU's option syntax: a comma inside a value is written twice.
    public static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }

    /// Whether `path` can be opened and read with O_DIRECT. Filesystems
    /// without direct I/O (zfs-fuse, tmpfs) fail with EINVAL, at open or at
    /// the first aligned read. A file that cannot be opened at all counts as
    /// supporting it: QEMU then reports the real problem.
    public static func supportsDirectIO(_ path: String) -> Bool {
        let fd = Glibc.open(path, O_RDONLY | oDirect | O_CLOEXEC)
        if fd < 0 { return errno != EINVAL }
        defer { Glibc.close(fd) }
        var buffer: UnsafeMutableRawPointer?
        guard posix_memalign(&buffer, 4096, 4096) == 0, let buffer else { return true }
        defer { free(buffer) }
        let n = pread(fd, buffer, 4096, 0)
        return !(n < 0 && errno == EINVAL)
    }
}

/// The `-blockdev` options of one drive (protocol node and format node),
/// from its config options: `cache` (default `none`: `cache.direct=on` unless
/// the image's filesystem rejects O_DIRECT; `unsafe`: `cache.no-flush=on`),
/// `aio`, `ro`/CD-ROM, `discard`. The command line and `DiskMove`'s
/// `blockdev-add` use the same values, so a moved disk behaves as a started one.
public struct DriveBlockOptions: Sendable, Equatable {
    /// `file`, or `host_device` for a block device.
    public var driver: String
    public var direct: Bool
    public var noFlush: Bool
    public var aio: String?
    public var readOnly: Bool
    public var discard: Bool
    /// `writethrough` / `directsync`: the guest device gets `write-cache=off`.
    public var writeCacheOff: Bool

    public init(disk: VMDisk, path: String, directIOSupported: (String) -> Bool = QEMUCommandLine.supportsDirectIO) {
        let cache = disk.cache ?? "none"
        let rbd = RBDImageSpec(path)
        // librbd has no O_DIRECT: cache.direct turns its cache off, which is what cache=none means there.
        let direct = (cache == "none" || cache == "directsync") && (rbd != nil || directIOSupported(path))
        self.direct = direct
        noFlush = cache == "unsafe"
        aio = rbd != nil ? nil : disk.options["aio"].flatMap { $0 != "native" || direct ? $0 : nil }
        readOnly = disk.isCDROM || (disk.options["ro"].flatMap(VMConfig.parseBool) ?? false)
        discard = disk.options["discard"] == "on"
        driver = rbd != nil ? "rbd" : FileSystem.isBlockDevice(path) ? "host_device" : "file"
        writeCacheOff = cache == "writethrough" || cache == "directsync"
    }

    /// The protocol node's location: `filename=…`, or an RBD image's pool, image, conf and user.
    func location(_ path: String) -> [(String, String)] {
        guard driver == "rbd", let r = RBDImageSpec(path) else { return [("filename", path)] }
        var l = [("pool", r.pool), ("image", r.image)]
        if let conf = r.conf { l.append(("conf", conf)) }
        if let user = r.user { l.append(("user", user)) }
        return l
    }

    /// `node-name=…,driver=file,filename=…,cache.direct=on,…` for `-blockdev`.
    public func fileArgument(node: String, path: String) -> String {
        var file = ["node-name=\(node)", "driver=\(driver)"] + location(path).map { "\($0)=\(QEMUCommandLine.escape($1))" }
        if direct { file.append("cache.direct=on") }
        if noFlush { file.append("cache.no-flush=on") }
        if let aio { file.append("aio=\(aio)") }
        if readOnly { file.append("read-only=on") }
        if discard { file.append("discard=unmap") }
        return file.joined(separator: ",")
    }

    /// `node-name=…,driver=raw|qcow2,file=…` for `-blockdev`.
    public func formatArgument(node: String, format: String, fileNode: String) -> String {
        var f = ["node-name=\(node)", "driver=\(format)", "file=\(fileNode)"]
        if noFlush { f.append("cache.no-flush=on") }
        if readOnly { f.append("read-only=on") }
        if discard { f.append("discard=unmap") }
        return f.joined(separator: ",")
    }

    /// The same protocol node as `blockdev-add` arguments.
    public func fileBlockdev(node: String, path: String) -> [String: JSONValue] {
        var a: [String: JSONValue] = ["node-name": .string(node), "driver": .string(driver)]
        for (k, v) in location(path) { a[k] = .string(v) }
        var cache: [String: JSONValue] = [:]
        if direct { cache["direct"] = .bool(true) }
        if noFlush { cache["no-flush"] = .bool(true) }
        if !cache.isEmpty { a["cache"] = .object(cache) }
        if let aio { a["aio"] = .string(aio) }
        if readOnly { a["read-only"] = .bool(true) }
        if discard { a["discard"] = .string("unmap") }
        return a
    }

    /// The same format node as `blockdev-add` arguments.
    public func formatBlockdev(node: String, format: String, fileNode: String) -> [String: JSONValue] {
        var a: [String: JSONValue] = ["node-name": .string(node), "driver": .string(format), "file": .string(fileNode)]
        if noFlush { a["cache"] = .object(["no-flush": .bool(true)]) }
        if readOnly { a["read-only"] = .bool(true) }
        if discard { a["discard"] = .string("unmap") }
        return a
    }
}

/// An RBD image named as the rbd storage's volume path, QEMU's legacy rbd
/// filename `rbd:<pool>/<image>[:conf=<file>][:id=<user>]` (`\` escapes `:`).
/// `-blockdev driver=rbd` takes the parts as separate options.
public struct RBDImageSpec: Sendable, Equatable {
    public var pool: String
    public var image: String
    public var conf: String?
    public var user: String?

    public init?(_ path: String) {
        guard path.hasPrefix("rbd:") else { return nil }
        // Split on unescaped `:`, unescaping as we go.
        var fields: [String] = [], cur = "", escaped = false
        for ch in path.dropFirst(4) {
            if escaped { cur.append(ch); escaped = false } else if ch == "\\" { escaped = true } else if ch == ":" { fields.append(cur); cur = "" } else { cur.append(ch) }
        }
        fields.append(cur)
        let spec = fields[0].split(separator: "/", maxSplits: 1).map(String.init)
        guard spec.count == 2, !spec[0].isEmpty, !spec[1].isEmpty else { return nil }
        pool = spec[0]
        image = spec[1]
        for f in fields.dropFirst() {
            if f.hasPrefix("conf=") { conf = String(f.dropFirst(5)) } else if f.hasPrefix("id=") { user = String(f.dropFirst(3)) } else { return nil }
        }
    }
}

/// O_DIRECT on Linux x86-64 and aarch64 differ; Glibc only exports it with _GNU_SOURCE.
#if arch(x86_64) || arch(i386)
private let oDirect: Int32 = 0o40000
#else
private let oDirect: Int32 = 0o200000
#endif
