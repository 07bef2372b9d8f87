import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Storage
import Testing
@testable import Backup

/// Which dirty bitmap bases a disk keeps once backups were removed, and where QEMU holds them (no QEMU needed).
@Suite("Dirty bitmap bases")
struct BitmapBasesTests {
    let r1Old = BaseSnapshot.name(backupTime: 1_700_000_000, repository: "r1")
    let r1 = BaseSnapshot.name(backupTime: 1_700_000_100, repository: "r1")
    let r1Killed = BaseSnapshot.name(backupTime: 1_700_000_200, repository: "r1")
    let r2 = BaseSnapshot.name(backupTime: 1_700_000_050, repository: "r2")

    @Test func theRecordedBaseAndAKilledRunsNewerOneStay() {
        // r1's newest backup recorded r1: the older one goes, the newer one (a killed run's, merged by the next backup) stays.
        #expect(BitmapBases.unrecorded([r1Old, r1, r1Killed], recorded: [r1]) == [r1Old])
        // Each repository keeps its own.
        #expect(BitmapBases.unrecorded([r1, r2], recorded: [r1, r2]).isEmpty)
        #expect(BitmapBases.unrecorded([r1, r2], recorded: [r1]) == [r2])
    }

    @Test func aBaseNoBackupRecordsGoes() {
        // The newest backup removed: the one before it recorded an older base, long gone; every bitmap left goes.
        #expect(BitmapBases.unrecorded([r1, r1Killed], recorded: [r1Old]) == [r1, r1Killed])
        #expect(BitmapBases.unrecorded([r1], recorded: []) == [r1])
    }

    @Test func bitmapsAreFoundByTheImageTheNodesOpen() throws {
        let nodes: JSONValue = .array([
            .object(["node-name": .string("drive-scsi0"), "file": .string("/img/vm-1-disk-0.raw"), "drv": .string("raw"),
                     "dirty-bitmaps": .array([.object(["name": .string(r1), "count": .int(65536), "recording": .bool(true)])])]),
            .object(["node-name": .string("#block123"), "file": .string("/img/vm-1-disk-0.raw"), "drv": .string("file")]),
            .object(["node-name": .string("drive-scsi1"), "file": .string("/img/vm-1-disk-1.raw"), "drv": .string("raw"),
                     "dirty-bitmaps": .array([.object(["name": .string(r2)])])]),
        ])
        #expect(BitmapBases.bitmaps(of: "/img/vm-1-disk-0.raw", in: nodes) == [.init(node: "drive-scsi0", name: r1, count: 65536)])
        #expect(BitmapBases.bitmaps(of: "/img/vm-1-disk-1.raw", in: nodes) == [.init(node: "drive-scsi1", name: r2, count: nil)])
        #expect(BitmapBases.bitmaps(of: "/img/other.raw", in: nodes).isEmpty)
        #expect(BaseSnapshot.created(r1) == Date(timeIntervalSince1970: 1_700_000_100))
    }

    /// A running guest whose QEMU does not answer on its status monitor: `snapshot list` and `storage status`
    /// say so in one warning line, within the short timeout, and list the rest.
    @Test func silentQEMUIsAOneLineWarning() throws {
        let f = try CLIFixture("silent-qemu")
        var o = try f.run(["vm", "create", "100", "--memory", "64", "--scsi0", "local:1M"])
        try #require(o.status == 0, "\(o.stderr)")
        let paths = SnapdumpPaths.resolve(configDir: f.configDir)
        try FileManager.default.createDirectory(atPath: paths.qemuRunDir, withIntermediateDirectories: true)
        // Stands in for QEMU: alive, its command line naming the main monitor, a status monitor that accepts and never greets.
        let fake = Process()
        fake.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        fake.arguments = ["-c", "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(4)\n"
                          + "c = s.accept()\ntime.sleep(60)", paths.qmpStatusSocket(100), paths.qmpSocket(100)]
        try fake.run()
        defer { kill(fake.processIdentifier, SIGKILL); fake.waitUntilExit() }  // SIGKILL: the test runner may leave SIGTERM ignored
        try "\(fake.processIdentifier)\n".write(toFile: paths.pidFile(100), atomically: true, encoding: .utf8)
        let deadline = Date().addingTimeInterval(10)
        while !FileSystem.exists(paths.qmpStatusSocket(100)) && Date() < deadline { usleep(20_000) }

        for command in [["snapshot", "list", "local"], ["storage", "status", "local"]] {
            let start = Date()
            o = try f.run(command)
            #expect(o.status == 0, "\(command): \(o.stderr)")
            #expect(Date().timeIntervalSince(start) < 20, "\(command) waited for the silent QEMU")
            let lines = o.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("WARN: VM 100: its QEMU did not tell its dirty bitmaps on \(paths.qmpStatusSocket(100))"),
                    "\(command): \(o.stderr)")
        }
        #expect(o.stdout.contains("local") && o.stdout.contains("active"), "\(o.stdout)")
    }
}
