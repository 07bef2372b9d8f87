import Foundation
import SnapdumpSystem

/// A snapshot's name, as PBS names it: `<type>/<id>/<UTC time>`, e.g.
/// `vm/100/2026-11-30T02:00:00Z`. It is also the snapshot's directory
/// relative to the repository root. A storage adds its id in front, as
/// Proxmox does for PBS volumes: `repo1:backup/vm/100/2026-11-30T02:00:00Z`.
public struct SnapshotName: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// "vm" (PBS also knows "ct" and "host"; snapdump writes only "vm").
    public var type: String
    public var id: String
    /// Backup time, Unix seconds.
    public var time: Int64

    public init(type: String = "vm", id: String, time: Int64) {
        self.type = type
        self.id = id
        self.time = time
    }

    public init(vmid: Int, time: Date) {
        self.init(type: "vm", id: String(vmid), time: Int64(time.timeIntervalSince1970))
    }

    public static let types: Set<String> = ["vm", "ct", "host"]

    /// PBS's backup id rule: `[A-Za-z0-9_][A-Za-z0-9._-]*`.
    public static func isValidID(_ s: String) -> Bool {
        guard let first = s.utf8.first else { return false }
        func ok(_ c: UInt8, first: Bool) -> Bool {
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || (!first && (c == 46 || c == 45))
        }
        return ok(first, first: true) && s.utf8.dropFirst().allSatisfy { ok($0, first: false) }
    }

    /// `type/id/time`, the time as `YYYY-MM-DDTHH:MM:SSZ`.
    public init?(parsing s: String) {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, Self.types.contains(parts[0]), Self.isValidID(parts[1]),
              let t = Self.parseTime(parts[2]) else { return nil }
        self.init(type: parts[0], id: parts[1], time: t)
    }

    public var group: String { "\(type)/\(id)" }
    public var timeString: String { Self.formatTime(time) }
    public var path: String { "\(group)/\(timeString)" }
    public var description: String { path }
    public var vmid: Int? { type == "vm" ? Int(id) : nil }
    public var date: Date { Date(timeIntervalSince1970: TimeInterval(time)) }

    public static func < (a: SnapshotName, b: SnapshotName) -> Bool {
        (a.type, a.id, a.time) < (b.type, b.id, b.time)
    }

    /// `2026-11-30T02:00:00Z`.
    public static func formatTime(_ t: Int64) -> String { CivilTime(t, .utc).extendedUTC }

    /// The Unix time of `2026-11-30T02:00:00Z`; nil for any other shape and
    /// for dates that do not exist (31 February).
    public static func parseTime(_ s: String) -> Int64? { CivilTime(extendedUTC: s)?.seconds }
}

/// A repository backup named as a Proxmox volume: `<storeid>:backup/<snapshot>`.
public struct RepositoryVolume: Hashable, Sendable, CustomStringConvertible {
    public var storage: String
    public var snapshot: SnapshotName

    public init(storage: String, snapshot: SnapshotName) {
        self.storage = storage
        self.snapshot = snapshot
    }

    public init?(parsing s: String) {
        guard let colon = s.firstIndex(of: ":") else { return nil }
        let store = String(s[..<colon])
        var rest = String(s[s.index(after: colon)...])
        guard rest.hasPrefix("backup/"), !store.isEmpty else { return nil }
        rest.removeFirst("backup/".count)
        guard let snap = SnapshotName(parsing: rest) else { return nil }
        self.init(storage: store, snapshot: snap)
    }

    public var description: String { "\(storage):backup/\(snapshot.path)" }
}
