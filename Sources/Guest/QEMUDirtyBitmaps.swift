import Foundation
import SnapdumpSystem
import Storage

/// Persistent dirty bitmaps of a running guest's qcow2 node, through QMP:
/// listed with their state, started inside a backup's `transaction`, read
/// over a private read-only NBD export of the node (`qemu:dirty-bitmap:<name>`
/// block status), removed once no backup needs them.
public enum QEMUDirtyBitmaps {
    /// The same record as an image's bitmap read offline (`qemu-img info`).
    public typealias Bitmap = QCOW2ImageBitmaps.Bitmap

    /// The bitmaps on format node `node` (`query-named-block-nodes`).
    public static func list(node: String, qmp: QMPClient) async throws -> [Bitmap] {
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10))
        guard let n = (nodes.arrayValue ?? []).first(where: { $0["node-name"]?.stringValue == node }) else {
            throw QMPError.commandFailed(class: "DeviceNotFound", desc: "QEMU has no block node '\(node)'")
        }
        return (n["dirty-bitmaps"]?.arrayValue ?? []).compactMap { b in
            b["name"]?.stringValue.map { Bitmap(name: $0, inconsistent: b["inconsistent"]?.boolValue ?? false) }
        }
    }

    /// The `transaction` action that starts bitmap `name` on `node` (persistent: stored in the image):
    /// from that instant every write reaching the node is recorded (also the
    /// writes `block-commit` brings back from an overlay).
    public static func addAction(node: String, name: String, persistent: Bool = true) -> JSONValue {
        .object(["type": .string("block-dirty-bitmap-add"),
                 "data": .object(["node": .string(node), "name": .string(name), "persistent": .bool(persistent)])])
    }

    public static func remove(node: String, name: String, qmp: QMPClient) async throws {
        _ = try await qmp.execute("block-dirty-bitmap-remove", arguments: ["node": .string(node), "name": .string(name)])
    }

    /// The chunks `bitmap` on `node` marks dirty. The node must not be written
    /// meanwhile (QEMU refuses to export an enabled bitmap of a writable node):
    /// during a backup it is the image frozen under its overlay. QEMU's NBD
    /// server is started on `socket` for this alone and stopped again.
    public static func changedChunks(node: String, bitmap: String, baseSize: UInt64, chunkSize: UInt64,
                                     socket: String, qmp: QMPClient) async throws -> ChangedChunks {
        try? FileSystem.remove(socket)
        _ = try await qmp.execute("nbd-server-start", arguments: ["addr": .object(["type": .string("unix"),
                                                                                  "data": .object(["path": .string(socket)])])])
        var exported = false
        do {
            _ = try await qmp.execute("block-export-add", arguments: [
                "type": .string("nbd"), "id": .string(exportID), "node-name": .string(node), "name": .string(exportID),
                "writable": .bool(false), "bitmaps": .array([.string(bitmap)]),
            ])
            exported = true
            let result = try await Blocking.run("dirty-bitmap") {
                try DirtyBitmap.changedChunks(socket: socket, exportName: exportID, bitmap: bitmap, baseSize: baseSize,
                                              chunkSize: chunkSize, name: node)
            }
            try await stop(qmp: qmp, exported: exported, socket: socket)
            return result
        } catch {
            try? await stop(qmp: qmp, exported: exported, socket: socket)
            throw error
        }
    }

    static let exportID = "snapdump-bitmap"

    private static func stop(qmp: QMPClient, exported: Bool, socket: String) async throws {
        if exported {
            let mark = await qmp.eventMark
            _ = try await qmp.execute("block-export-del", arguments: ["id": .string(exportID)])
            _ = try await qmp.waitForEvent("BLOCK_EXPORT_DELETED", after: mark, timeout: .seconds(30)) { $0.data["id"]?.stringValue == exportID }
        }
        _ = try await qmp.execute("nbd-server-stop")
        try? FileSystem.remove(socket)
    }
}
