import Foundation

/// Several images of one guest snapshotted at one point in time: an RBD group
/// `vm-<vmid>` (named as Proxmox names a guest's images), made when a snapshot
/// of several of its images is prepared and dismantled when it holds no
/// snapshot any more. One `rbd_group_snap_create` takes the exclusive lock of
/// every image in the group, then snapshots each (`RBDConnection.createGroupSnapshot`):
/// the guest runs on, its writes wait only for that call.
///
/// librbd 16 (Pacific) puts the group snapshot on each image in the group
/// namespace (`.group.<pool>_<group id>_<snap id>`): `rbd_snap_set` and
/// `rbd_open_read_only` find it by no name, `rbd_snap_set_by_id` opens it
/// (`RBDPlugin.openImage`); no call turns it into a user snapshot
/// (`rbd_snap_rename` finds it by no name either), and `rbd_diff_iterate2` diffs
/// *from* user snapshots only — *to* any snapshot set by id, a group one too.
///
/// So a base snapshot (`BaseSnapshot`) of several images gets a change-tracking
/// **mark** on each: a user snapshot of the same name, taken while preparing,
/// just before the group snapshot and outside the window. The next backup diffs
/// from the mark to its own snapshot: every write since the group snapshot the
/// previous backup read is listed (it is after the mark too), and so are the
/// few between mark and group snapshot, read again — a superset, which is safe.
/// What is read is always the group snapshot (`openImage` prefers it over the
/// mark). A mark whose group snapshot is gone is still a correct base (older
/// than what was read); a group snapshot without marks is read whole next time.
/// An image in a group cannot be removed (EMLINK): `volume free` takes it out first (`leave`).
enum RBDGroupSnapshot {
    static func groupName(vmid: Int) -> String { "vm-\(vmid)" }

    /// The group of `vmid` with every image of `images` in it (made, and images
    /// added, as needed); refuses an image in another group and a group snapshot
    /// `name` that exists. Returns the group's name.
    static func prepare(_ c: RBDConnection, storage: String, vmid: Int, images: [RBDImage], name: String) throws -> String {
        let group = groupName(vmid: vmid)
        var members: [String] = []
        for img in images {
            switch try img.group() {
            case nil: break
            case group?: members.append(img.name)
            case let other?:
                throw StorageError(.busy, "storage '\(storage)': image \(c.pool)/\(img.name) is in rbd group '\(other)': an image belongs to one group only, so it cannot join group '\(group)' for a snapshot of VM \(vmid)'s images together; take it out of '\(other)' (rbd group image remove)")
            }
        }
        if members.isEmpty {
            do { try c.createGroup(group) } catch let e as RBDCallError where e.errno == EEXIST {}
        } else if try c.groupSnapshots(group).contains(name) {
            throw StorageError(.alreadyExists, "group snapshot '\(c.pool)/\(group)@\(name)' already exists on storage '\(storage)'")
        }
        do {
            for img in images where !members.contains(img.name) { try c.addToGroup(group, image: img.name) }
        } catch {
            try? dismantleIfUnused(c, group: group)
            throw error
        }
        return group
    }

    /// Removes `group` if it holds no snapshot (its images leave it with it).
    /// Returns whether it did.
    @discardableResult
    static func dismantleIfUnused(_ c: RBDConnection, group: String) throws -> Bool {
        guard try c.groupNames().contains(group), try c.groupSnapshots(group).isEmpty else { return false }
        do { try c.removeGroup(group) } catch let e as RBDCallError where e.errno == ENOENT { return false }
        return true
    }

    /// Removes the change-tracking marks `name` of `images` (a snapshot that was
    /// never taken, or failed); what cannot be removed is left to leftover cleanup,
    /// which sees it as a base nobody recorded.
    static func removeMarks(_ c: RBDConnection, images: [String], name: String) {
        for n in images {
            guard let img = try? RBDImage(c, name: n, readOnly: false) else { continue }
            try? img.removeSnapshot(name)
            img.close()
        }
    }

    /// Takes `images` out of `group`; the group goes too when no image is left in it.
    static func leave(_ c: RBDConnection, group: String, images: [String]) throws {
        for i in images {
            do { try c.removeFromGroup(group, image: i) } catch let e as RBDCallError where e.errno == ENOENT {}
        }
        if try c.groupImages(group).isEmpty {
            do { try c.removeGroup(group) } catch let e as RBDCallError where e.errno == ENOENT {}
        }
    }
}

/// Set once, by a `PreparedSnapshot`'s take, read by its release (one task, one call at a time).
final class Flag {
    private(set) var isSet = false
    func set() { isSet = true }
}
