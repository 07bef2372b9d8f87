import Guest
import Storage
import Testing
@testable import Backup

/// The config rules of a restore (qmrestore): what an archived config may attach and what a
/// `--force` restore may free (issue 13, items 1-2).
@Suite struct RestoredConfigTests {
    let archived = """
        name: web
        ide2: none,media=cdrom
        ide3: local:iso/debian.iso,media=cdrom
        sata0: /dev/vda,size=1G
        scsi0: local:100/vm-100-disk-0.raw,size=1G
        scsi1: local:101/vm-101-disk-0.raw,size=1G
        scsi2: local:100/vm-100-disk-1.raw,backup=0,size=1G
        scsi3: local:300/vm-300-disk-0.raw,size=1G
        unused0: local:101/vm-101-disk-7.raw

        """

    @Test func hostPathsAndOtherVMsVolumesAreDroppedAndBackup0IsCommentedOut() throws {
        let config = try VMConfig.parse(archived, vmid: 300, file: "archive")
        let new = VolumeID(storage: "local", volname: "300/vm-300-disk-5.raw")
        let (out, warnings) = RestoredConfig.rewrite(config, vmid: 300, restored: ["scsi0": new])
        #expect(out.disk("scsi0")?.volid == new.description)
        #expect(out.disk("sata0") == nil, "host path attached")
        #expect(out.disk("scsi1") == nil, "another VM's volume attached")
        #expect(out.disk("scsi2") == nil && out.description?.contains("scsi2: local:100/vm-100-disk-1.raw,backup=0") == true)
        #expect(out.serialized().contains("#scsi2: local:100/vm-100-disk-1.raw,backup=0"))
        // Empty and ISO CD-ROMs and the target's own volume stay.
        #expect(out.disk("ide2") != nil && out.disk("ide3") != nil && out.disk("scsi3") != nil)
        #expect(out.unused.isEmpty)
        #expect(warnings.count == 3, "\(warnings)")
        #expect(warnings.contains { $0.contains("sata0") && $0.contains("host path") })
        #expect(warnings.contains { $0.contains("scsi1") && $0.contains("belongs to VM 101") })
    }

    @Test func replacementFreesOnlyOwnRestoredVolumes() throws {
        let old = try VMConfig.parse("""
            scsi0: local:202/vm-202-disk-0.raw,size=4M
            scsi1: local:100/vm-100-disk-0.raw,size=4M
            scsi2: /dev/sdb
            virtio0: local:202/vm-202-disk-1.raw,size=4M
            virtio1: local:101/vm-202-disk-3.raw,size=4M
            unused0: local:202/vm-202-disk-2.raw
            unused1: local:100/vm-100-disk-9.raw

            """, vmid: 202, file: "old")
        var new = VMConfig(vmid: 202)
        new.setDisk(VMDisk(key: "scsi0", volid: "local:202/vm-202-disk-4.raw"))
        new.setDisk(VMDisk(key: "scsi1", volid: "local:202/vm-202-disk-5.raw"))
        let (free, keep) = RestoredConfig.replacement(old: old, new: new, restoredKeys: ["scsi0", "scsi1", "scsi2", "virtio1"])
        #expect(free.map(\.description) == ["local:202/vm-202-disk-0.raw"])
        #expect(keep == ["local:202/vm-202-disk-1.raw", "local:202/vm-202-disk-2.raw"])
    }

    @Test func ownerNeedsOneUnambiguousVMID() {
        #expect(RestoredConfig.owner(of: "local:100/vm-100-disk-0.raw") == 100)
        #expect(RestoredConfig.owner(of: "tank:vm-100-disk-0") == 100)
        #expect(RestoredConfig.owner(of: "local:101/vm-100-disk-0.raw") == nil)
        #expect(RestoredConfig.owner(of: "/dev/vda") == nil)
        #expect(RestoredConfig.owner(of: "local:iso/x.iso") == nil)
    }
}
