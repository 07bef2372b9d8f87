import CNBD
import Foundation
import SnapdumpSystem

/// A QEMU dirty bitmap read as NBD block status: QEMU's NBD server (or
/// `qemu-nbd -B NAME`) exposes bitmap NAME of an export as the metadata
/// context `qemu:dirty-bitmap:NAME`, in which flag 1 marks a dirty range.
/// `x-debug-block-dirty-bitmap-sha256` only hashes a bitmap; this is the
/// supported way to ask which ranges it marks (QEMU 7.2 has no QMP query for it).
public enum DirtyBitmap {
    /// `qemu:dirty-bitmap:<bitmap>`.
    public static func context(_ bitmap: String) -> String { "qemu:dirty-bitmap:\(bitmap)" }

    /// `ChangedChunks.method` of every reader of a QEMU dirty bitmap.
    public static let method = "QEMU dirty bitmap"

    /// The chunks bitmap `bitmap` marks dirty in export `exportName` (nil: the
    /// default export) on `socket`, in `chunkSize` units; `baseSize` is the
    /// disk's size at the previous backup. `name` names the disk in errors.
    public static func changedChunks(socket: String, exportName: String?, bitmap: String, baseSize: UInt64,
                                     chunkSize: UInt64, name: String) throws -> ChangedChunks {
        _ = try LibNBD.load()
        guard let h = libnbd.nbd_create!() else { throw error("nbd_create", name) }
        defer { libnbd.nbd_close!(h) }
        if let exportName, libnbd.nbd_set_export_name!(h, exportName) != 0 { throw error("select NBD export '\(exportName)'", name) }
        if libnbd.nbd_add_meta_context!(h, context(bitmap)) != 0 || libnbd.nbd_connect_unix!(h, socket) != 0 {
            throw error("connect to NBD socket \(socket)", name)
        }
        defer { libnbd.nbd_shutdown!(h, 0) }
        guard libnbd.nbd_can_meta_context!(h, context(bitmap)) == 1 else {
            throw StorageError(.backend, "the NBD export of '\(name)' does not offer dirty bitmap '\(bitmap)'")
        }
        let size = libnbd.nbd_get_size!(h)
        guard size >= 0 else { throw error("nbd_get_size", name) }
        var result = ChangedChunks(chunkSize: chunkSize, baseSize: baseSize, size: UInt64(size), method: method)
        let collector = DirtyCollector(context: context(bitmap))
        var pos: UInt64 = 0
        while pos < UInt64(size) {
            let count = min(UInt64(size) - pos, 1 << 30)
            collector.reset(at: pos)
            let ud = Unmanaged.passUnretained(collector).toOpaque()
            let cb = nbd_extent_callback(callback: { ud, ctx, off, entries, n, _ in
                let c = Unmanaged<DirtyCollector>.fromOpaque(ud!).takeUnretainedValue()
                guard let ctx, String(cString: ctx) == c.context, let entries else { return 0 }
                var o = off
                var i = 0
                while i + 1 < n {
                    let len = UInt64(entries[i])
                    if entries[i + 1] & 1 != 0 { c.dirty.append((o, len)) }
                    o += len
                    i += 2
                }
                c.end = max(c.end, o)
                return 0
            }, user_data: ud, free: nil)
            if libnbd.nbd_block_status!(h, count, pos, cb, 0) != 0 { throw error("dirty bitmap block status at offset \(pos)", name) }
            guard collector.end > pos else {
                throw StorageError(.backend, "NBD block status of dirty bitmap '\(bitmap)' of '\(name)' returned no extents at offset \(pos)")
            }
            for (o, l) in collector.dirty { result.insert(offset: o, length: l) }
            pos = collector.end
        }
        return result
    }

    /// The same from a qcow2 image no process has open (a stopped guest), read
    /// from the file (`QCOW2Bitmaps`); an image that reader leaves to QEMU
    /// (encrypted, external data file, dirty or corrupt bit, unknown features)
    /// is served by `qemu-nbd --read-only -B <bitmap>` instead. A malformed
    /// image, a missing or `in_use` bitmap: an error, never an empty change set.
    public static func changedChunks(image: String, bitmap: String, baseSize: UInt64, chunkSize: UInt64) throws -> ChangedChunks {
        let parsed: QCOW2Bitmaps
        do { parsed = try QCOW2Bitmaps.read(image) } catch is QCOW2Bitmaps.Unsupported {
            return try changedChunksFromQemuNBD(image: image, bitmap: bitmap, baseSize: baseSize, chunkSize: chunkSize)
        }
        return try parsed.changedChunks(bitmap: bitmap, baseSize: baseSize, chunkSize: chunkSize)
    }

    /// The same through `qemu-nbd --read-only -B <bitmap>` (QEMU reads the bitmap).
    static func changedChunksFromQemuNBD(image: String, bitmap: String, baseSize: UInt64, chunkSize: UInt64) throws -> ChangedChunks {
        let server = try QemuNBDServer.start(image: image, format: .qcow2, snapshot: nil, bitmaps: [bitmap])
        defer { server.stop() }
        return try changedChunks(socket: server.socket, exportName: nil, bitmap: bitmap, baseSize: baseSize, chunkSize: chunkSize, name: image)
    }

    static func error(_ what: String, _ name: String) -> StorageError {
        let msg = libnbd.nbd_get_error!().map { String(cString: $0) } ?? "unknown error"
        return StorageError(.backend, "\(what) for '\(name)' failed: \(msg)")
    }
}

private final class DirtyCollector {
    let context: String
    var dirty: [(UInt64, UInt64)] = []
    var end: UInt64 = 0

    init(context: String) { self.context = context }

    func reset(at pos: UInt64) {
        dirty.removeAll(keepingCapacity: true)
        end = pos
    }
}

/// Persistent dirty bitmaps of a qcow2 image no QEMU has open: listed from the
/// file (`QCOW2Bitmaps`), added and removed through `qemu-img bitmap`.
public enum QCOW2ImageBitmaps {
    public struct Bitmap: Sendable, Equatable {
        public var name: String
        /// `in-use`: a QEMU had the image open when it ended without storing the bitmap (killed): the bitmap is unusable.
        public var inconsistent: Bool

        public init(name: String, inconsistent: Bool) {
            self.name = name
            self.inconsistent = inconsistent
        }
    }

    /// The image's bitmaps, as `qemu-img info` lists them: read from the file, or from `qemu-img info`
    /// for an image `QCOW2Bitmaps` leaves to QEMU. Only meaningful while no QEMU has it open (every
    /// loaded bitmap is `in-use`). A malformed image throws (QEMU refuses to open it too).
    public static func list(image: String) throws -> [Bitmap] {
        do {
            return try QCOW2Bitmaps.read(image).bitmaps.map { Bitmap(name: $0.name, inconsistent: $0.inUse) }
        } catch is QCOW2Bitmaps.Unsupported {
            return try listFromQemuImg(image: image)
        }
    }

    /// The same from `qemu-img info`.
    static func listFromQemuImg(image: String) throws -> [Bitmap] {
        let json = try Command.run(["qemu-img", "info", "--output=json", "-f", "qcow2", image])
        guard let info = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw StorageError(.backend, "qemu-img info of '\(image)': not a JSON object")
        }
        let data = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        return ((data?["bitmaps"] as? [[String: Any]]) ?? []).compactMap { b in
            guard let name = b["name"] as? String else { return nil }
            return Bitmap(name: name, inconsistent: ((b["flags"] as? [String]) ?? []).contains("in-use"))
        }
    }

    /// Adds an enabled persistent bitmap (QEMU keeps recording into it when it opens the image).
    public static func add(image: String, name: String) throws {
        _ = try Command.run(["qemu-img", "bitmap", "-f", "qcow2", "--add", image, name])
    }

    public static func remove(image: String, name: String) throws {
        _ = try Command.run(["qemu-img", "bitmap", "-f", "qcow2", "--remove", image, name])
    }
}
