@testable import Storage
import Testing

@Suite("Volume ids, disk names, name rules")
struct VolumeIDTests {
    @Test func parsesProxmoxVolumeIDs() throws {
        let dir = try VolumeID(parsing: "local:100/vm-100-disk-0.raw")
        #expect(dir.storage == "local" && dir.volname == "100/vm-100-disk-0.raw")
        #expect(dir.description == "local:100/vm-100-disk-0.raw")
        #expect(dir.diskName == "vm-100-disk-0" && dir.vmid == 100)
        let qcow = try VolumeID(parsing: "nfs.1:4242/vm-4242-disk-17.qcow2")
        #expect(qcow.diskName == "vm-4242-disk-17" && qcow.vmid == 4242)
        let zfs = try VolumeID(parsing: "tank:vm-101-disk-3")
        #expect(zfs.volname == "vm-101-disk-3" && zfs.vmid == 101)
        // Only the first colon separates the storage.
        let odd = try VolumeID(parsing: "a:b:c")
        #expect(odd.storage == "a" && odd.volname == "b:c" && odd.vmid == nil)
        #expect(try VolumeID(parsing: "a:100/vm-100-disk-1.raw") < (try VolumeID(parsing: "a:100/vm-100-disk-2.raw")))
    }

    @Test(arguments: ["", "local", ":vm-100-disk-0", "local:", ":"])
    func rejectsMalformedVolumeIDs(_ text: String) {
        let e = #expect(throws: StorageError.self) { try VolumeID(parsing: text) }
        #expect(e?.code == .invalidArgument && e?.message.contains("'\(text)'") == true)
    }

    @Test func diskNames() {
        #expect(DiskName("vm-100-disk-0") == DiskName(vmid: 100, index: 0))
        #expect(DiskName("vm-999999999-disk-12") == DiskName(vmid: 999_999_999, index: 12))
        #expect(DiskName(vmid: 100, index: 3).description == "vm-100-disk-3")
    }

    /// Only the canonical spelling is a disk name: otherwise two names (`disk-0`,
    /// `disk-00`) would mean the same disk index but different files.
    @Test(arguments: ["vm-100-disk", "vm-100-disk-", "vm-abc-disk-0", "vm-100-disk--1", "vm-100-disk-x",
                      "base-100-disk-0", "vm-100-disk-0.raw", "vm-100-disk-00", "vm-0100-disk-0", "vm-+100-disk-0",
                      "vm--100-disk-0", "vm-100-disk-+1", "vm-100--disk-0", "vm-100-disk-0-", " vm-100-disk-0", ""])
    func rejectsOtherDiskNames(_ text: String) {
        #expect(DiskName(text) == nil, "\(text) parsed as \(String(describing: DiskName(text)))")
    }

    @Test(arguments: ["s1", "vzdump", "snap_2024-01-01", "a.b", "A", String(repeating: "x", count: 64)])
    func acceptsSnapshotNames(_ name: String) throws {
        try NameRules.validateSnapshotName(name)
    }

    @Test(arguments: ["", "a/b", "a@b", "-x", "a b", "a\tb", "a\nb", ".hidden", "..", "a:b", "a,b", "a\0b", "é",
                      String(repeating: "x", count: 65)])
    func rejectsSnapshotNames(_ name: String) {
        let e = #expect(throws: StorageError.self) { try NameRules.validateSnapshotName(name) }
        #expect(e?.code == .invalidArgument && e?.message.contains("invalid snapshot name") == true)
    }

    @Test func vmids() throws {
        for ok in [100, 101, 999_999_999] { try NameRules.validateVMID(ok) }
        for bad in [-1, 0, 99, 1_000_000_000] {
            let e = #expect(throws: StorageError.self) { try NameRules.validateVMID(bad) }
            #expect(e?.message.contains("\(bad)") == true)
        }
    }
}

@Suite struct FleecingImageNameTests {
    @Test func namesAsProxmoxAndOnlyThose() {
        #expect(FleecingImage.name(vmid: 100, index: 2) == "vm-100-fleece-2")
        #expect(FleecingImage.parse("vm-100-fleece-2").map { $0.vmid == 100 && $0.index == 2 } == true)
        #expect(FleecingImage.index(of: "vm-100-fleece-0.qcow2", vmid: 100, suffix: ".qcow2") == 0)
        #expect(FleecingImage.index(of: "vm-100-fleece-0.qcow2", vmid: 101, suffix: ".qcow2") == nil)
        for other in ["vm-100-disk-0", "vm-100-fleece-", "vm-100-fleece-01", "vm-100-fleece-+1", "vm-100-fleece-0.raw", "xvm-100-fleece-0"] {
            #expect(FleecingImage.parse(other, suffix: other.hasSuffix(".raw") ? ".qcow2" : "") == nil, "\(other)")
        }
    }

    /// A thin LV for a fleecing image holds the largest qcow2 of the disk: data plus metadata, in 4 MiB extents.
    @Test func thinLVHoldsTheLargestQcow2() {
        for size: UInt64 in [1 << 20, 32 << 20, 1 << 30, 8 << 30] {
            let lv = LVMPlugin.fleecingLVSize(size)
            #expect(lv >= size + size / 8192 + (1 << 20) && lv % (4 << 20) == 0 && lv <= size + size / 100 + (12 << 20), "\(size) → \(lv)")
        }
    }
}
