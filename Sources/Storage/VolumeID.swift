/// A volume id as Proxmox writes it: `storeid:volname`.
/// `dir` and `btrfs` volnames carry the owner and format (`100/vm-100-disk-0.raw`),
/// `zfspool` volnames are the dataset/zvol name (`vm-100-disk-0`).
public struct VolumeID: Hashable, Sendable, CustomStringConvertible, Comparable {
    public var storage: String
    public var volname: String

    public init(storage: String, volname: String) {
        self.storage = storage
        self.volname = volname
    }

    public init(parsing text: String) throws {
        guard let colon = text.firstIndex(of: ":") else {
            throw StorageError(.invalidArgument, "invalid volume id '\(text)': expected 'storeid:volname'")
        }
        storage = String(text[..<colon])
        volname = String(text[text.index(after: colon)...])
        guard !storage.isEmpty, !volname.isEmpty else {
            throw StorageError(.invalidArgument, "invalid volume id '\(text)': expected 'storeid:volname'")
        }
    }

    public var description: String { "\(storage):\(volname)" }

    public static func < (a: VolumeID, b: VolumeID) -> Bool { a.description < b.description }

    /// The disk name part: `vm-100-disk-0` of `100/vm-100-disk-0.raw`.
    public var diskName: String {
        var n = volname
        if let slash = n.lastIndex(of: "/") { n = String(n[n.index(after: slash)...]) }
        for f in VolumeFormat.allCases where n.hasSuffix(".\(f.rawValue)") { n.removeLast(f.rawValue.count + 1) }
        return n
    }

    /// The owning VMID parsed from `vm-<vmid>-disk-<n>`.
    public var vmid: Int? { DiskName(diskName)?.vmid }
}

/// `vm-<vmid>-disk-<n>`, the name Proxmox gives new disks.
public struct DiskName: Equatable, Sendable {
    public var vmid: Int
    public var index: Int

    public init(vmid: Int, index: Int) {
        self.vmid = vmid
        self.index = index
    }

    public init?(_ text: String) {
        let p = text.split(separator: "-", omittingEmptySubsequences: false)
        guard p.count == 4, p[0] == "vm", p[2] == "disk", let v = Int(p[1]), let i = Int(p[3]), v >= 0, i >= 0 else { return nil }
        vmid = v
        index = i
        // Canonical spelling only ("disk-00", "vm-0100", "+1" are other files, not this disk).
        guard description == text else { return nil }
    }

    public var description: String { "vm-\(vmid)-disk-\(index)" }
}

/// Names a user gives (snapshots, volumes) become path components and
/// command arguments: refuse anything that could escape or be read as an option.
public enum NameRules {
    public static func validateSnapshotName(_ name: String) throws {
        try validate(name, what: "snapshot name")
    }

    public static func validate(_ name: String, what: String) throws {
        let bad = name.isEmpty || name.hasPrefix("-") || name.hasPrefix(".") || name.count > 64
            || name.contains(where: { $0 == "/" || $0 == "@" || $0 == ":" || $0.isWhitespace || $0 == "\0" || !$0.isASCII || $0 == "," })
        if bad {
            throw StorageError(.invalidArgument, "invalid \(what) '\(name)': use 1-64 ASCII characters without '/', '@', ':', ',', spaces or a leading '-' or '.'")
        }
    }

    /// VMIDs as Proxmox allows them.
    public static func validateVMID(_ vmid: Int) throws {
        guard (100...999_999_999).contains(vmid) else {
            throw StorageError(.invalidArgument, "invalid VMID \(vmid): must be between 100 and 999999999")
        }
    }
}
