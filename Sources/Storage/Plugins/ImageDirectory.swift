import Foundation
import SnapdumpSystem

/// The `<root>/images/<vmid>/vm-<vmid>-disk-N.<fmt>` layout shared by the
/// dir and btrfs plugins (Proxmox's), with volnames `<vmid>/<file>`.
struct ImageDirectory: Sendable {
    let storage: String
    let root: String

    var imagesDir: String { root + "/images" }
    func vmDir(_ vmid: Int) -> String { "\(imagesDir)/\(vmid)" }

    /// Parses `<vmid>/vm-<vmid>-disk-N.<fmt>`; refuses anything else (no `..`, no other owner).
    func parse(_ volume: VolumeID) throws -> (vmid: Int, file: String, format: VolumeFormat) {
        let parts = volume.volname.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let vmid = Int(parts[0]) else {
            throw StorageError(.invalidArgument, "invalid volume name '\(volume.volname)' on storage '\(storage)': expected '<vmid>/vm-<vmid>-disk-<n>.<raw|qcow2>'")
        }
        let file = String(parts[1])
        guard let dot = file.lastIndex(of: "."), let format = VolumeFormat(rawValue: String(file[file.index(after: dot)...])),
              let disk = DiskName(String(file[..<dot])), disk.vmid == vmid else {
            throw StorageError(.invalidArgument, "invalid volume name '\(volume.volname)' on storage '\(storage)': expected '<vmid>/vm-<vmid>-disk-<n>.<raw|qcow2>'")
        }
        return (vmid, file, format)
    }

    func filePath(_ volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        let p = try parse(volume)
        let path = "\(vmDir(p.vmid))/\(p.file)"
        guard FileSystem.exists(path) else {
            throw StorageError(.notFound, "volume '\(volume)' does not exist (no file \(path))")
        }
        return (path, p.format)
    }

    /// The lowest disk index not used by any format in the VM's directory.
    func nextFreeIndex(vmid: Int) throws -> Int {
        let names = FileSystem.isDirectory(vmDir(vmid)) ? try FileSystem.list(vmDir(vmid)) : []
        let used = Set(names.compactMap { name -> Int? in
            guard let dot = name.lastIndex(of: ".") else { return nil }
            return DiskName(String(name[..<dot]))?.index
        })
        var n = 0
        while used.contains(n) { n += 1 }
        return n
    }

    func volumeID(vmid: Int, index: Int, format: VolumeFormat) -> VolumeID {
        VolumeID(storage: storage, volname: "\(vmid)/\(DiskName(vmid: vmid, index: index).description).\(format.rawValue)")
    }

    /// Every volume file under images/, optionally of one VM.
    func list(vmid: Int?) throws -> [VolumeInfo] {
        guard FileSystem.isDirectory(imagesDir) else { return [] }
        var result: [VolumeInfo] = []
        for dir in try FileSystem.list(imagesDir) {
            guard let owner = Int(dir), vmid == nil || owner == vmid, FileSystem.isDirectory(vmDir(owner)) else { continue }
            for file in try FileSystem.list(vmDir(owner)) {
                let vol = VolumeID(storage: storage, volname: "\(owner)/\(file)")
                guard let p = try? parse(vol) else { continue }
                let size = try Self.virtualSize(path: "\(vmDir(owner))/\(file)", format: p.format)
                result.append(VolumeInfo(volume: vol, format: p.format, size: size, vmid: owner))
            }
        }
        return result
    }

    /// Creates a raw (sparse) or qcow2 image file of `size` bytes; never replaces an existing file.
    static func createImage(path: String, size: UInt64, format: VolumeFormat) throws {
        switch format {
        case .raw:
            let f = try File.createNew(path)
            do {
                try f.truncate(to: size)
                try f.sync()
            } catch {
                try? FileSystem.remove(path)
                throw error
            }
        case .qcow2:
            guard !FileSystem.exists(path) else { throw StorageError(.alreadyExists, "\(path) already exists") }
            do {
                try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "\(size)"])
            } catch {
                try? FileSystem.remove(path)
                throw error
            }
        }
    }

    /// Guest-visible size: file size for raw, `virtual-size` for qcow2.
    static func virtualSize(path: String, format: VolumeFormat) throws -> UInt64 {
        switch format {
        case .raw:
            return try File.openForReading(path).size()
        case .qcow2:
            if let size = try qcow2Header(path)?.size { return size }
            let out = try Command.run(["qemu-img", "info", "-U", "--output=json", path])
            guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
                  let size = (obj["virtual-size"] as? NSNumber)?.uint64Value else {
                throw StorageError(.backend, "cannot read the virtual size of \(path) from qemu-img info")
            }
            return size
        }
    }

    /// The virtual size (big-endian u64 at byte 24) and the number of internal snapshots (u32 at
    /// byte 60) of a qcow2 header (magic `QFI\xfb`, version 2 or 3: the qcow2 spec), read directly:
    /// a `qemu-img info` process per lookup was 2 of an incremental qcow2 backup's 9 child
    /// processes. Nil (ask qemu-img, which names the problem) when the file is not qcow2.
    static func qcow2Header(_ path: String) throws -> (size: UInt64, snapshots: UInt64)? {
        let f = try File.openForReading(path)
        var header = [UInt8](repeating: 0, count: 64)
        let n = try header.withUnsafeMutableBytes { try f.read(into: $0, at: 0) }
        guard n == 64, header[0..<4] == [0x51, 0x46, 0x49, 0xFB] else { return nil }
        let be = { (at: Int, count: Int) in header[at..<at + count].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        guard be(4, 4) == 2 || be(4, 4) == 3 else { return nil }
        return (be(24, 8), be(60, 4))
    }

    /// qcow2 internal snapshots (`qemu-img info` lists them, also while QEMU has the image open).
    static func qcow2Snapshots(path: String) throws -> [(name: String, created: Date)] {
        // None in the header (the usual case; a qcow2's bases are dirty bitmaps): no qemu-img process.
        if let h = try? qcow2Header(path), h.snapshots == 0 { return [] }
        let out = try Command.run(["qemu-img", "info", "-U", "--output=json", path])
        guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else { return [] }
        return (obj["snapshots"] as? [[String: Any]] ?? []).compactMap { s in
            guard let name = s["name"] as? String else { return nil }
            let sec = (s["date-sec"] as? NSNumber)?.doubleValue ?? 0
            return (name, Date(timeIntervalSince1970: sec))
        }
    }
}
