import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Guest

/// Values of a VM config: sizes bounded, and the rules of reading applied before writing.
@Suite("VMConfig values")
struct VMConfigValueTests {
    @Test func sizesAreBounded() {
        #expect(VMDisk.parseSize("32G") == 32 << 30)
        #expect(VMDisk.parseSize("1.5T") == 3 << 39)
        #expect(VMDisk.parseSize("4", defaultUnit: "G") == 4 << 30)
        #expect(VMDisk.parseSize("512m") == 512 << 20)
        #expect(VMDisk.parseSize("65536T") == VMDisk.maxSizeBytes)
        for bad in ["99999999999T", "65537T", "1e30", "1E30G", "inf", "nan", "-1G", "1.2.3G", "18446744073709551616", "", "G", "0x10"] {
            #expect(VMDisk.parseSize(bad) == nil, "\(bad)")
            #expect(VMDisk.parseSize(bad, defaultUnit: "G") == nil, "\(bad)")
        }
    }

    /// `size=99999999999T` trapped `vm list` and `backup --all`; now the config is an error naming file:line.
    @Test func hugeSizeInAConfigIsAnError() {
        let text = "name: a\nscsi0: local:100/vm-100-disk-0.raw,size=99999999999T\n"
        do {
            let c = try VMConfig.parse(text, vmid: 100, file: "/etc/snapdump/qemu/100.conf")
            Issue.record("accepted: \(c.disks.map(\.sizeBytes))")
        } catch {
            #expect("\(error)".hasPrefix("/etc/snapdump/qemu/100.conf:2: scsi0:"), "\(error)")
        }
    }

    @Test func memoryIsBounded() {
        for bad in ["9223372036854775807", "4178945", "15", "current=99999999999"] {
            #expect(throws: ConfigError.self, "\(bad)") { try VMConfig.parse("memory: \(bad)\n", vmid: 100, file: "100.conf") }
        }
        #expect((try? VMConfig.parse("memory: current=2048\n", vmid: 100, file: "100.conf"))?.memory == 2048)
    }

    /// What `save` writes, `load` reads: the same rules, checked before the file is touched.
    @Test func saveRefusesWhatLoadWouldRefuse() throws {
        let dir = try scratch("vmcfg-values")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/100.conf"
        var good = VMConfig(vmid: 100)
        good.name = "web1"
        try good.save(to: path)
        let before = try FileSystem.readText(path)

        var cases: [(String, VMConfig)] = []
        var c = good; c.name = "bad name"; cases.append(("name", c))
        c = good; c.cores = 0; cases.append(("cores", c))
        c = good; c.memory = 1; cases.append(("memory", c))
        c = good; c.memory = Int.max; cases.append(("memory", c))
        c = good; c.append = "console=ttyS0\nscsi5: /dev/vda"; cases.append(("append", c))
        c = good; c.kernel = "/boot/vmlinuz\u{1B}"; cases.append(("kernel", c))
        for (key, config) in cases {
            do {
                try config.save(to: path)
                Issue.record("saved a bad \(key)")
            } catch {
                #expect("\(error)".contains("\(key):"), "\(error)")
            }
            #expect(try FileSystem.readText(path) == before, "\(key): file changed")
        }
        #expect(throws: (any Error).self) { try VMConfig.check(key: "name", value: "bad name", what: "--name") }
        try VMConfig.check(key: "cores", value: "4", what: "--cores")
    }
}
