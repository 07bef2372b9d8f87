import Foundation
@testable import SnapdumpSystem
import Testing

/// /proc/self/mounts as `FileSystem.mounts()` reads it: the fields unescaped,
/// the filesystem type of a path from the longest mount point holding it.
struct MountTableTests {
    @Test func escapedFieldsAreDecoded() {
        #expect(FileSystem.unescapeMountField("/mnt/with\\040space") == "/mnt/with space")
        #expect(FileSystem.unescapeMountField("tab\\011new\\012line\\134back") == "tab\tnew\nline\\back")
        #expect(FileSystem.unescapeMountField("plain/path") == "plain/path")
        // Not an escape: kept as written (a backslash followed by fewer than three octal digits,
        // or a first digit that would not fit a byte).
        #expect(FileSystem.unescapeMountField("end\\04") == "end\\04")
        #expect(FileSystem.unescapeMountField("a\\9xy") == "a\\9xy")
        #expect(FileSystem.unescapeMountField("a\\477") == "a\\477")
    }

    @Test func theRootAndProcAreMounted() {
        let mounts = FileSystem.mounts()
        #expect(mounts.contains { $0.point == "/" })
        #expect(mounts.contains { $0.point == "/proc" && $0.type == "proc" })
        #expect(FileSystem.filesystemType("/proc/self") == "proc")
    }
}
