import ArgumentParser
import Guest
import SnapdumpConfig
import Storage

struct VMCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a VM; new disks are allocated on their storage.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VMID (100-999999999).") var vmid: Int
    @Option var name: String?
    @Option(help: "Memory in MiB.") var memory: Int?
    @Option var cores: Int?
    @Option(help: "STOREID:SIZE_GB (new disk) or an existing volume id.") var scsi0: String?
    @Option(help: "STOREID:SIZE_GB or volume id.") var scsi1: String?
    @Option(help: "STOREID:SIZE_GB or volume id.") var virtio0: String?
    @Option(help: "STOREID:SIZE_GB or volume id.") var virtio1: String?
    @Option(help: "1 to enable the QEMU guest agent, or enabled=1,freeze-fs-on-backup=0,….") var agent: String?
    @Option(help: "Kernel for direct boot.") var kernel: String?
    @Option var initrd: String?
    @Option(help: "Kernel command line.") var append: String?

    /// The config keys given, checked by the rules `vm` commands apply when
    /// they read the config back — before any disk is allocated.
    func validate() throws {
        let given: [(String, String?)] = [
            ("name", name), ("memory", memory.map(String.init)), ("cores", cores.map(String.init)), ("agent", agent),
            ("kernel", kernel.map(FileManagerCWD.absoluteIfRelative)), ("initrd", initrd.map(FileManagerCWD.absoluteIfRelative)),
            ("append", append),
        ]
        for case let (key, value?) in given {
            do { try VMConfig.check(key: key, value: value, what: "--\(key)") } catch let e as ConfigError {
                throw CLIError("--\(e.message)") // the message starts with the key
            }
        }
        for (key, spec) in [("scsi0", scsi0), ("scsi1", scsi1), ("virtio0", virtio0), ("virtio1", virtio1)] {
            if let spec, let problem = ConfigValue.problem(spec) { throw CLIError("--\(key): \(problem)") }
        }
    }

    func run() async throws {
        let ctx = try VMContext(global)
        guard VMConfig.isValidVMID(vmid) else { throw ValidationError("invalid VMID \(vmid): must be between 100 and 999999999") }
        guard !VMConfig.exists(vmid: vmid, paths: ctx.paths) else { throw GuestCLIError("VM \(vmid) already exists") }
        var config = VMConfig(vmid: vmid)
        config.name = name
        config.memory = memory
        config.cores = cores
        if let agent { config.agent = try .parse(agent, defaultKey: "enabled", what: "agent") }
        config.kernel = kernel.map(FileManagerCWD.absoluteIfRelative)
        config.initrd = initrd.map(FileManagerCWD.absoluteIfRelative)
        config.append = append
        var allocated: [(any StoragePlugin, VolumeID)] = []
        do {
            for (key, spec) in [("scsi0", scsi0), ("scsi1", scsi1), ("virtio0", virtio0), ("virtio1", virtio1)] {
                guard let spec else { continue }
                let volid: String, size: UInt64
                if let vol = try? VolumeID(parsing: spec), (try? ctx.storages.path(of: vol)) != nil {
                    volid = spec
                    let src = try ctx.storages.plugin(for: vol).openBlockSource(vol, snapshot: nil)
                    size = src.size
                    try src.close()
                } else if let new = NewDiskSpec.parse(spec) {
                    let plugin = try ctx.storages.plugin(new.storage)
                    let vol = try plugin.allocate(vmid: vmid, size: new.bytes, format: nil)
                    allocated.append((plugin, vol))
                    volid = vol.description
                    size = new.bytes
                } else {
                    throw CLIError("--\(key) '\(spec)': expected STOREID:SIZE_GB or an existing volume id")
                }
                var opts = PropertyString()
                opts["size"] = VMDiskSize.format(size)
                config.setDisk(VMDisk(key: key, volid: volid, options: opts))
            }
            try config.save(paths: ctx.paths)
        } catch {
            for (plugin, vol) in allocated { try? plugin.free(vol) }
            throw error
        }
        print("created VM \(vmid)")
    }
}

import SnapdumpConfig
import Foundation

/// Disk sizes as Proxmox writes them in configs: `32G`, `512M`, `4K`.
enum VMDiskSize {
    static func format(_ bytes: UInt64) -> String {
        if bytes % (1 << 30) == 0 { return "\(bytes >> 30)G" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20)M" }
        return "\((bytes + 1023) >> 10)K"
    }
}

extension FileManagerCWD {
    static func absoluteIfRelative(_ p: String) -> String { p.hasPrefix("/") ? p : absolute(p) }
}
