import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Guest

@Suite("VMConfig")
struct VMConfigTests {
    static let sample = """
    #Web server
    #  second line
    agent: enabled=1,freeze-fs-on-backup=0
    boot: order=scsi0;virtio0
    cores: 2
    memory: 2048
    name: web1.example
    ostype: l26
    scsi0: local:100/vm-100-disk-0.raw,size=8G,cache=none
    scsi1: zfs1:vm-100-disk-1,format=raw,discard=on,iothread=1
    sockets: 1
    virtio0: /dev/vg0/data,size=1T
    ide2: none,media=cdrom
    unused0: local:100/vm-100-disk-9.raw
    kernel: /boot/vmlinuz
    initrd: /boot/initrd.gz
    append: console=ttyS0 quiet
    onboot: 1

    [before-upgrade]
    memory: 1024
    snaptime: 1700000000
    """

    @Test func parsesAProxmoxStyleConfig() throws {
        let c = try VMConfig.parse(Self.sample, vmid: 100, file: "100.conf")
        #expect(c.vmid == 100)
        #expect(c.name == "web1.example")
        #expect(c.memoryMiB == 2048)
        #expect(c.coreCount == 2 && c.socketCount == 1)
        #expect(c.description == "Web server\n  second line")
        #expect(c.agentEnabled)
        #expect(c.agentFreezeOnBackup == false)
        #expect(c.ostype == "l26")
        #expect(c.kernel == "/boot/vmlinuz" && c.initrd == "/boot/initrd.gz" && c.append == "console=ttyS0 quiet")
        #expect(c.bootOrder == ["scsi0", "virtio0"])
        #expect(c.unused == [0: "local:100/vm-100-disk-9.raw"])
        #expect(c.passive["onboot"] == "1")
        // Drives in Proxmox order: ide, sata, scsi, virtio.
        #expect(c.diskList.map(\.key) == ["ide2", "scsi0", "scsi1", "virtio0"])
        let scsi0 = try #require(c.disk("scsi0"))
        #expect(scsi0.volid == "local:100/vm-100-disk-0.raw")
        #expect(scsi0.storageID == "local")
        #expect(scsi0.size == "8G" && scsi0.sizeBytes == 8 << 30)
        #expect(scsi0.cache == "none")
        #expect(c.disk("scsi1")?.format == "raw")
        #expect(c.disk("virtio0")?.storageID == nil)
        #expect(c.disk("ide2")?.isCDROM == true)
        let list = c.diskList
        #expect(list[1].options["size"] == "8G")
        #expect(c.trailingSections.hasPrefix("[before-upgrade]"))
    }

    @Test func serializesSortedAndRoundTrips() throws {
        let c = try VMConfig.parse(Self.sample, vmid: 100, file: "100.conf")
        let text = c.serialized()
        #expect(text.hasPrefix("#Web server\n#  second line\nagent: 1,freeze-fs-on-backup=0\nappend: console=ttyS0 quiet\nboot: "))
        let keys = text.split(separator: "\n", omittingEmptySubsequences: false).prefix { !$0.isEmpty }.filter { !$0.hasPrefix("#") }.map { String($0.split(separator: ":")[0]) }
        #expect(keys == keys.sorted())
        #expect(text.contains("\n\n[before-upgrade]\nmemory: 1024\n"))
        #expect(try VMConfig.parse(text, vmid: 100, file: "x") == c)
    }

    @Test func simpleAgentAndLock() throws {
        let c = try VMConfig.parse("agent: 1\nlock: backup\n", vmid: 100, file: "f")
        #expect(c.agentEnabled && c.agentFreezeOnBackup)
        #expect(c.lock == "backup")
        #expect(try VMConfig.parse("agent: 0\n", vmid: 100, file: "f").agentEnabled == false)
        #expect(try VMConfig.parse("memory: current=1024\n", vmid: 100, file: "f").memory == 1024)
    }

    /// Expects a ConfigError naming `file:line` with `fragment` in its message.
    func expectConfigError(_ text: String, line: Int?, _ fragment: String, vmid: Int = 100,
                           sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try VMConfig.parse(text, vmid: vmid, file: "/etc/snapdump/qemu/\(vmid).conf")
            Issue.record("expected an error for \(text.debugDescription)", sourceLocation: sourceLocation)
        } catch let e as ConfigError {
            #expect(e.file == "/etc/snapdump/qemu/\(vmid).conf", sourceLocation: sourceLocation)
            #expect(e.line == line, "\(e)", sourceLocation: sourceLocation)
            #expect(e.message.contains(fragment), "\(e)", sourceLocation: sourceLocation)
            if let line { #expect(e.description.hasPrefix("/etc/snapdump/qemu/\(vmid).conf:\(line): "), sourceLocation: sourceLocation) }
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func unknownKeyNamesFileAndLine() {
        expectConfigError("name: a\nmemory: 512\nnet0: virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0\n", line: 3, "unknown or unsupported key 'net0'")
        expectConfigError("name: a\nvirtio16: local:x\n", line: 2, "unknown or unsupported key 'virtio16'")
        expectConfigError("scsi31: local:x\n", line: 1, "unknown or unsupported key 'scsi31'")
        expectConfigError("cores: 1\ncores: 2\n", line: 2, "duplicate key")
        expectConfigError("just words\n", line: 1, "expected 'key: value'")
    }

    @Test func badVMID() throws {
        expectConfigError("name: a\n", line: nil, "invalid VMID 99", vmid: 99)
        expectConfigError("name: a\n", line: nil, "invalid VMID 1000000000", vmid: 1_000_000_000)
        #expect(VMConfig.isValidVMID(100) && VMConfig.isValidVMID(999_999_999))
        let dir = try scratch("vmcfg")
        defer { removeTree(dir) }
        try FileSystem.writeAtomically(dir + "/99.conf", "name: a\n")
        #expect(throws: ConfigError.self) { try VMConfig.load(path: dir + "/99.conf") }
        try FileSystem.writeAtomically(dir + "/web.conf", "name: a\n")
        #expect(throws: ConfigError.self) { try VMConfig.load(path: dir + "/web.conf") }
    }

    @Test func malformedDisks() {
        expectConfigError("name: a\nscsi0: local:vm-100-disk-0,size=lots\n", line: 2, "scsi0: invalid value 'lots' for 'size'")
        expectConfigError("scsi0: local:vm-100-disk-0,bogus=1\n", line: 1, "scsi0: unknown drive option 'bogus'")
        expectConfigError("virtio0: vm-100-disk-0\n", line: 1, "virtio0: invalid volume 'vm-100-disk-0'")
        expectConfigError("sata0: local:vm-100-disk-0,cache=fast\n", line: 1, "invalid value 'fast' for 'cache'")
        expectConfigError("ide0: local:a,,size=1G\n", line: 1, "ide0: empty item")
        expectConfigError("scsi0: size=8G\n", line: 1, "scsi0: missing volume")
        expectConfigError("scsi0: none\n", line: 1, "invalid volume 'none'")
        expectConfigError("unused0: nonsense\n", line: 1, "unused0: invalid volume")
    }

    @Test func malformedValues() {
        expectConfigError("memory: lots\n", line: 1, "memory")
        expectConfigError("memory: 8\n", line: 1, "16-4178944")
        expectConfigError("cores: 0\n", line: 1, "cores")
        expectConfigError("name: web_1\n", line: 1, "not a valid DNS name")
        expectConfigError("lock: party\n", line: 1, "unknown lock 'party'")
        expectConfigError("agent: maybe\n", line: 1, "agent")
        expectConfigError("agent: 1,colour=blue\n", line: 1, "unknown option 'colour'")
        expectConfigError("ostype: beos\n", line: 1, "unknown OS type")
        expectConfigError("kernel: vmlinuz\n", line: 1, "absolute path")
        expectConfigError("machine: virt\n", line: 1, "unsupported machine type")
        expectConfigError("scsihw: fancy\n", line: 1, "unknown SCSI controller")
        expectConfigError("boot: order=scsi0;;\n", line: 1, "invalid order")
        expectConfigError("name:\n", line: 1, "empty value")
    }

    @Test func saveIsAtomicAndLoadable() async throws {
        let dir = try scratch("vmcfg")
        defer { removeTree(dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        var c = VMConfig(vmid: 123)
        c.name = "t"
        c.memory = 256
        c.setDisk(VMDisk(key: "virtio0", volid: "local:123/vm-123-disk-0.raw", options: try PropertyString.parse("size=1G", what: "t")))
        c.setDisk(VMDisk(key: "scsi0", volid: "local:123/vm-123-disk-1.qcow2"))
        c.agent = try PropertyString.parse("1", defaultKey: "enabled", what: "agent")
        try c.save(paths: paths)
        #expect(try FileSystem.readText(paths.vmConfig(123)) ==
            "agent: 1\nmemory: 256\nname: t\nscsi0: local:123/vm-123-disk-1.qcow2\nvirtio0: local:123/vm-123-disk-0.raw,size=1G\n")
        #expect(try FileSystem.list(paths.vmConfigDir) == ["123.conf"])
        #expect(try VMConfig.load(vmid: 123, paths: paths) == c)
        #expect(try VMConfig.list(paths: paths) == [123])
        let missing = await expectError(GuestError.self) { try VMConfig.load(vmid: 124, paths: paths) }
        #expect(missing?.code == .notFound)
        #expect(missing?.message == "VM 124 does not exist (no \(paths.vmConfig(124)))")
    }

    @Test func diskKeys() {
        #expect(VMDisk.parseKey("scsi30")! == (.scsi, 30))
        #expect(VMDisk.parseKey("virtio15")! == (.virtio, 15))
        #expect(VMDisk.parseKey("sata5")! == (.sata, 5))
        #expect(VMDisk.parseKey("ide3")! == (.ide, 3))
        for bad in ["ide4", "sata6", "scsi31", "virtio16", "scsi", "scsi01", "efidisk0", "unused0"] {
            #expect(VMDisk.parseKey(bad) == nil, "\(bad)")
        }
        #expect(VMDisk.parseSize("1.5G") == 1_610_612_736)
        #expect(VMDisk.parseSize("512") == 512)
        #expect(VMDisk.parseSize("G") == nil)
    }
}
