import Foundation

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

    public static func formatTime(_ t: Int64) -> String {
        var tt = time_t(t)
        var tm = tm()
        gmtime_r(&tt, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                      Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec))
    }

    public static func parseTime(_ s: String) -> Int64? {
        let u = Array(s.utf8)
        guard u.count == 20, u[4] == 45, u[7] == 45, u[10] == 84, u[13] == 58, u[16] == 58, u[19] == 90 else { return nil }
        func num(_ r: Range<Int>) -> Int32? {
            var v: Int32 = 0
            for c in u[r] { guard c >= 48 && c <= 57 else { return nil }; v = v * 10 + Int32(c - 48) }
            return v
        }
        guard let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10), let h = num(11..<13), let mi = num(14..<16),
              let se = num(17..<19), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, se < 60 else { return nil }
        var tm = tm()
        tm.tm_year = y - 1900; tm.tm_mon = mo - 1; tm.tm_mday = d
        tm.tm_hour = h; tm.tm_min = mi; tm.tm_sec = se
        let t = timegm(&tm)
        // timegm normalises 31 February into March: refuse dates that moved.
        guard formatTime(Int64(t)) == s else { return nil }
        return Int64(t)
    }
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
