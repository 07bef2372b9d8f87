import Foundation

/// Backup fleecing images on `lvmthin`: a thin LV `vm-<vmid>-fleece-<n>` in
/// the thin pool, formatted as qcow2 by `qemu-img create` and opened by QEMU
/// as a `host_device`. The LV is as large as the qcow2 can ever grow, but thin:
/// it takes pool space only for what the guest overwrites during the backup.
/// Plain `lvm` cannot hold them (a thick LV would take the whole size at once).
extension LVMPlugin {
    /// The largest a qcow2 image (64 KiB clusters) of `size` can grow: the data,
    /// an L2 entry per cluster, refcounts, header and L1 — a margin covers the last three.
    static func fleecingLVSize(_ size: UInt64) -> UInt64 {
        let bytes = size + size / 8192 + size / 16384 + (4 << 20)
        return (bytes + (4 << 20) - 1) / (4 << 20) * (4 << 20)
    }

    func requireThinForFleecing() throws {
        guard thin else {
            throw StorageError(.invalidArgument, "storage '\(id)' (lvm) cannot hold fleecing images: thick LVs take their whole size at once; use an 'lvmthin' or a 'dir' storage")
        }
        try activate()
    }

    public func allocateFleecingImage(vmid: Int, size: UInt64) throws -> FleecingImage {
        try NameRules.validateVMID(vmid)
        try requireThinForFleecing()
        let taken = Set(try lvs().compactMap { FleecingImage.index(of: $0.name, vmid: vmid) })
        var index = 0
        while taken.contains(index) { index += 1 }
        let name = FleecingImage.name(vmid: vmid, index: index)
        _ = try lvm(["lvcreate", "-aly", "-V", "\(Self.fleecingLVSize(size))b", "--name", name, "--thinpool", "\(vg)/\(thinpool)"])
        return FleecingImage(path: "/dev/\(vg)/\(name)", isBlockDevice: true)
    }

    public func fleecingImages(vmid: Int) throws -> [FleecingImage] {
        try requireThinForFleecing()
        return try lvs().filter { $0.pool == thinpool && FleecingImage.index(of: $0.name, vmid: vmid) != nil }
            .map { FleecingImage(path: "/dev/\(vg)/\($0.name)", isBlockDevice: true) }.sorted { $0.path < $1.path }
    }

    public func freeFleecingImage(_ image: FleecingImage) throws {
        let name = (image.path as NSString).lastPathComponent
        guard image.path == "/dev/\(vg)/\(name)", FleecingImage.parse(name) != nil else {
            throw StorageError(.invalidArgument, "'\(image.path)' is not a fleecing image of storage '\(id)'")
        }
        _ = try lvm(["lvremove", "-f", "\(vg)/\(name)"])
    }

    /// The thin pool's free data space.
    public func fleecingSpace(vmid: Int) throws -> UInt64 {
        try requireThinForFleecing()
        return try status().available
    }
}
