import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Guest

@Suite("QEMUCommandLine")
struct QEMUCommandLineTests {
    let paths = SnapdumpPaths(configDir: "/etc/snapdump", runDir: "/run/snapdump")

    func config(_ text: String, vmid: Int = 100) throws -> VMConfig {
        try VMConfig.parse(text, vmid: vmid, file: "\(vmid).conf")
    }

    /// The value following each occurrence of `flag`.
    func values(_ argv: [String], _ flag: String) -> [String] {
        argv.indices.filter { argv[$0] == flag && $0 + 1 < argv.count }.map { argv[$0 + 1] }
    }

    @Test func fullCommandLine() throws {
        let c = try config("""
        name: web1
        memory: 1024
        cores: 2
        sockets: 2
        agent: 1
        kernel: /srv/vmlinuz
        initrd: /srv/initramfs.gz
        append: console=ttyS0 quiet
        scsi0: local:100/vm-100-disk-0.raw,size=1G
        virtio0: local:100/vm-100-disk-1.qcow2,cache=writeback
        """)
        let disks = [ResolvedDisk(key: "scsi0", path: "/var/lib/vz/images/100/vm-100-disk-0.raw", format: "raw"),
                     ResolvedDisk(key: "virtio0", path: "/var/lib/vz/images/100/vm-100-disk-1.qcow2", format: "qcow2")]
        let argv = try QEMUCommandLine(config: c, disks: disks, paths: paths, accelerator: .tcg,
                                       directIOSupported: { _ in true }).arguments()
        #expect(argv.first == "qemu-system-x86_64")
        #expect(values(argv, "-name") == ["web1"])
        #expect(values(argv, "-machine") == ["q35"])
        #expect(values(argv, "-accel") == ["tcg"])
        #expect(values(argv, "-m") == ["1024"])
        #expect(values(argv, "-smp") == ["4,sockets=2,cores=2,maxcpus=4"])
        #expect(argv.contains("-nodefaults") && argv.contains("-daemonize"))
        #expect(values(argv, "-display") == ["none"] && values(argv, "-monitor") == ["none"])
        #expect(values(argv, "-pidfile") == ["/run/snapdump/qemu/100.pid"])
        #expect(values(argv, "-chardev") == [
            "socket,id=qmp,path=/run/snapdump/qemu/100.qmp,server=on,wait=off",
            "socket,id=qmp-status,path=/run/snapdump/qemu/100.status.qmp,server=on,wait=off",
            "file,id=serial0,path=/run/snapdump/qemu/100.serial.log",
            "socket,id=qga0,path=/run/snapdump/qemu/100.qga,server=on,wait=off",
        ])
        #expect(values(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=qmp-status,mode=control"])
        #expect(values(argv, "-serial") == ["chardev:serial0"])
        #expect(values(argv, "-kernel") == ["/srv/vmlinuz"])
        #expect(values(argv, "-initrd") == ["/srv/initramfs.gz"])
        #expect(values(argv, "-append") == ["console=ttyS0 quiet"])
        #expect(values(argv, "-blockdev") == [
            "node-name=drive-scsi0-file,driver=file,filename=/var/lib/vz/images/100/vm-100-disk-0.raw,cache.direct=on",
            "node-name=drive-scsi0,driver=raw,file=drive-scsi0-file",
            "node-name=drive-virtio0-file,driver=file,filename=/var/lib/vz/images/100/vm-100-disk-1.qcow2",
            "node-name=drive-virtio0,driver=qcow2,file=drive-virtio0-file",
        ])
        #expect(values(argv, "-device") == [
            "virtio-scsi-pci,id=scsihw0",
            "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0",
            "virtio-blk-pci,drive=drive-virtio0,id=virtio0",
            "virtio-serial,id=qga0-bus",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        // The controller comes before the disk that uses it.
        #expect(argv.firstIndex(of: "virtio-scsi-pci,id=scsihw0")! < argv.firstIndex(of: "node-name=drive-scsi0-file,driver=file,filename=/var/lib/vz/images/100/vm-100-disk-0.raw,cache.direct=on")!)
    }

    @Test func minimalConfigWithoutDisks() throws {
        let argv = try QEMUCommandLine(config: VMConfig(vmid: 4711), disks: [], paths: paths, accelerator: .kvm, daemonize: false).arguments()
        #expect(values(argv, "-name") == ["vm4711"])
        #expect(values(argv, "-accel") == ["kvm"])
        #expect(values(argv, "-m") == ["512"])
        #expect(values(argv, "-smp") == ["1,sockets=1,cores=1,maxcpus=1"])
        #expect(!argv.contains("-daemonize"))
        #expect(!argv.contains("-kernel"))
        #expect(values(argv, "-device").isEmpty && values(argv, "-blockdev").isEmpty)
    }

    @Test func noDirectIOWhereTheFilesystemRefusesIt() throws {
        let c = try config("scsi0: zfs:vm-100-disk-0\n")
        let argv = try QEMUCommandLine(config: c, disks: [ResolvedDisk(key: "scsi0", path: "/zpool/vm-100/disk0.raw")],
                                       paths: paths, accelerator: .tcg, directIOSupported: { _ in false }).arguments()
        #expect(values(argv, "-blockdev").first == "node-name=drive-scsi0-file,driver=file,filename=/zpool/vm-100/disk0.raw")
    }

    @Test func cacheModesAndOptions() throws {
        let c = try config("""
        machine: pc
        scsihw: virtio-scsi-single
        boot: order=virtio1;scsi2
        scsi2: local:a,cache=unsafe,ssd=1,discard=on
        virtio1: local:b,cache=directsync,serial=abc
        ide1: local:c,cache=writethrough
        sata3: none,media=cdrom
        """)
        let argv = try QEMUCommandLine(config: c, disks: [
            ResolvedDisk(key: "scsi2", path: "/i/a,1.raw"),
            ResolvedDisk(key: "virtio1", path: "/i/b.raw"),
            ResolvedDisk(key: "ide1", path: "/i/c.raw"),
        ], paths: paths, accelerator: .tcg, directIOSupported: { _ in true }).arguments()
        #expect(values(argv, "-machine") == ["pc"])
        #expect(values(argv, "-blockdev").contains("node-name=drive-scsi2-file,driver=file,filename=/i/a,,1.raw,cache.no-flush=on,discard=unmap"))
        #expect(values(argv, "-blockdev").contains("node-name=drive-virtio1-file,driver=file,filename=/i/b.raw,cache.direct=on"))
        #expect(values(argv, "-blockdev").contains("node-name=drive-ide1-file,driver=file,filename=/i/c.raw"))
        let devices = values(argv, "-device")
        #expect(devices.contains("virtio-scsi-pci,id=virtioscsi2"))
        #expect(devices.contains("scsi-hd,bus=virtioscsi2.0,channel=0,scsi-id=0,lun=2,drive=drive-scsi2,id=scsi2,bootindex=101,rotation_rate=1"))
        #expect(devices.contains("virtio-blk-pci,drive=drive-virtio1,write-cache=off,id=virtio1,bootindex=100,serial=abc"))
        #expect(devices.contains("ide-hd,bus=ide.0,unit=1,drive=drive-ide1,write-cache=off,id=ide1"))
        #expect(devices.contains("ahci,id=ahci0"))
        #expect(devices.contains("ide-cd,bus=ahci0.3,id=sata3"))
    }

    @Test func disksMustMatchTheConfig() throws {
        let c = try config("scsi0: local:a\nscsi1: local:b,format=qcow2\n")
        func attempt(_ disks: [ResolvedDisk]) -> GuestError? {
            do {
                _ = try QEMUCommandLine(config: c, disks: disks, paths: paths, accelerator: .tcg, directIOSupported: { _ in true }).arguments()
                return nil
            } catch let e as GuestError { return e } catch { return nil }
        }
        let missing = attempt([ResolvedDisk(key: "scsi0", path: "/a")])
        #expect(missing?.code == .invalidConfig)
        #expect(missing?.message == "VM 100: no path resolved for scsi1 (local:b,format=qcow2)".replacingOccurrences(of: ",format=qcow2", with: ""))
        #expect(attempt([ResolvedDisk(key: "scsi0", path: "/a"), ResolvedDisk(key: "scsi1", path: "/b", format: "raw")])?.message.contains("format=qcow2") == true)
        #expect(attempt([ResolvedDisk(key: "scsi0", path: "/a"), ResolvedDisk(key: "scsi1", path: "/b", format: "qcow2"),
                         ResolvedDisk(key: "virtio0", path: "/c")])?.message.contains("'virtio0' is not in the config") == true)
        #expect(attempt([ResolvedDisk(key: "scsi0", path: "/a", format: "iso"), ResolvedDisk(key: "scsi1", path: "/b", format: "qcow2")])?
            .message.contains("unsupported image format") == true)
        #expect(attempt([ResolvedDisk(key: "scsi0", path: "/a"), ResolvedDisk(key: "scsi1", path: "/b", format: "qcow2")]) == nil)
        let noKernel = try config("append: quiet\n")
        #expect(throws: GuestError.self) { try QEMUCommandLine(config: noKernel, disks: [], paths: paths, accelerator: .tcg).arguments() }
    }

    @Test func directIOProbe() throws {
        let dir = try scratch("odirect")
        defer { removeTree(dir) }
        let image = dir + "/disk.raw"
        let f = try File.open(image, O_WRONLY | O_CREAT, mode: 0o644)
        try f.truncate(to: 1 << 20)
        try f.close()
        // Whatever /tmp is, the probe answers without throwing; on ext4, xfs and btrfs it is true.
        let supported = QEMUCommandLine.supportsDirectIO(image)
        if ["ext4", "xfs", "btrfs"].contains(FileSystem.filesystemType(image) ?? "") { #expect(supported) }
        #expect(QEMUCommandLine.supportsDirectIO(dir + "/absent.raw"))
    }
}
