import Foundation
import Testing
import TestSupport
@testable import Archive

@Suite("Archive names")
struct ArchiveNameTests {
    let utc = TimeZone(identifier: "UTC")!

    @Test func formatAndParse() throws {
        let date = Date(timeIntervalSince1970: 1_738_367_947)   // 2025-01-31 23:59:07 UTC
        let n = ArchiveName(vmid: 100, date: date, compression: .zstd, timeZone: utc)
        #expect(n.fileName == "vzdump-qemu-100-2025_01_31-23_59_07.vma.zst")
        #expect(n.temporaryName == "vzdump-qemu-100-2025_01_31-23_59_07.vma.dat")
        #expect(n.logName == "vzdump-qemu-100-2025_01_31-23_59_07.log")
        #expect(n.notesName == "vzdump-qemu-100-2025_01_31-23_59_07.vma.zst.notes")
        #expect(n.protectedName == "vzdump-qemu-100-2025_01_31-23_59_07.vma.zst.protected")
        let p = try #require(ArchiveName(fileName: n.fileName))
        #expect(p == n)
        #expect(p.date(timeZone: utc) == date)

        let plain = ArchiveName(vmid: 7, date: date, compression: .none, timeZone: utc)
        #expect(plain.fileName == "vzdump-qemu-7-2025_01_31-23_59_07.vma")
        #expect(plain.temporaryName == "vzdump-qemu-7-2025_01_31-23_59_07.dat")
        #expect(ArchiveName(vmid: 1, date: date, compression: .gzip, timeZone: utc).fileName.hasSuffix(".vma.gz"))
        #expect(ArchiveName(fileName: "vzdump-qemu-123-2024_02_29-01_02_03.vma.lzo")?.compression == .lzo)
    }

    @Test("local time by default")
    func localTime() throws {
        let now = Date()
        let n = ArchiveName(vmid: 5, date: now, compression: .zstd)
        let back = try #require(n.date())
        #expect(abs(back.timeIntervalSince(now)) < 1)
    }

    @Test("names that do not match are rejected", arguments: [
        "vzdump-qemu-100-2025_01_31-23_59_07.vma.dat",
        "vzdump-qemu-100-2025_01_31-23_59_07.log",
        "vzdump-lxc-100-2025_01_31-23_59_07.tar.zst",
        "vzdump-qemu-abc-2025_01_31-23_59_07.vma",
        "vzdump-qemu-100-2025_01_31-23_59.vma",
        "vzdump-qemu-100-2025-01-31-23_59_07.vma",
        "vzdump-qemu-100-2025_01_31-23_59_07.vma.zst.notes",
        "vzdump-qemu--2025_01_31-23_59_07.vma",
        "my-backup.vma.zst",
    ])
    func rejects(name: String) {
        #expect(ArchiveName(fileName: name) == nil)
    }

    @Test func impossibleDate() throws {
        let n = try #require(ArchiveName(fileName: "vzdump-qemu-1-2025_02_30-00_00_00.vma"))
        #expect(n.date() == nil)
        #expect(try #require(ArchiveName(fileName: "vzdump-qemu-1-2025_13_01-00_00_00.vma")).date() == nil)
        #expect(try #require(ArchiveName(fileName: "vzdump-qemu-1-2024_02_29-00_00_00.vma")).date(timeZone: utc) != nil)
    }

    /// Names in a zone with DST: what Calendar gave before CivilTime, including
    /// the hour the clocks skip (vzdump never writes it) and the hour they repeat.
    @Test func namesInVienna() throws {
        let vienna = try #require(TimeZone(identifier: "Europe/Vienna"))
        #expect(ArchiveName(vmid: 1, date: Date(timeIntervalSince1970: 1_774_746_000), compression: .zstd, timeZone: vienna).timestamp
                == "2026_03_29-03_00_00")
        #expect(ArchiveName(vmid: 1, date: Date(timeIntervalSince1970: 1_792_890_000), compression: .zstd, timeZone: vienna).timestamp
                == "2026_10_25-02_00_00")
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = vienna
        for ts in ["2026_03_29-02_30_00", "2026_10_25-02_30_00", "2026_07_01-12_00_00", "2041_01_01-00_00_00"] {
            let n = try #require(ArchiveName(fileName: "vzdump-qemu-1-\(ts).vma"))
            let f = ts.split(whereSeparator: { $0 == "_" || $0 == "-" }).map { Int($0)! }
            let old = cal.date(from: DateComponents(year: f[0], month: f[1], day: f[2], hour: f[3], minute: f[4], second: f[5]))
            #expect(n.date(timeZone: vienna) == old, "\(ts)")
        }
    }

    /// The executable's local time is the C library's, so `TZ` is honoured
    /// (vzdump's Perl `localtime` reads it the same way): `vma list` prints a
    /// golden archive's ctime (1700000000) in the zone `TZ` names.
    @Test("local time follows TZ", arguments: [
        ("Europe/Vienna", "Tue Nov 14 23:13:20 2023"), ("Asia/Kolkata", "Wed Nov 15 03:43:20 2023"),
        ("America/New_York", "Tue Nov 14 17:13:20 2023"), ("UTC", "Tue Nov 14 22:13:20 2023"),
    ])
    func localTimeFollowsTZ(zone: String, ctime: String) throws {
        let dir = try #require(Bundle.module.url(forResource: "Golden", withExtension: nil)).path
        let r = try SnapdumpBinary.run(["vma", "list", dir + "/one-device.vma"], environment: ["TZ": zone])
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("CTIME: \(ctime)\n"), "\(r)")
    }
}

@Suite("snapdump.json")
struct MetadataTests {
    let meta = SnapdumpMetadata(
        devices: [.init(name: "drive-scsi0", size: 1 << 30, sha256: DeviceDigest.zeroChunkDigest)],
        mode: "snapshot", downtimeMs: 12, startTime: 1_700_000_000, snapdumpVersion: "0.1")

    @Test func roundTripAndPadding() throws {
        let json = try meta.encoded()
        #expect(String(decoding: json, as: UTF8.self).hasPrefix(#"{"devices":[{"chunkSize":4194304,"name":"drive-scsi0""#))
        let padded = try #require(SnapdumpMetadata.pad(json, to: 1000))
        #expect(padded.count == 1000)
        #expect(padded.last == UInt8(ascii: "}"))
        #expect(try SnapdumpMetadata.decode(padded) == meta)
        #expect(SnapdumpMetadata.pad(json, to: json.count - 1) == nil)
        #expect(SnapdumpMetadata.reservedSize(deviceCount: 4) >= 4 * 200)
        #expect(meta.devices[0].digest == DeviceDigest.zeroChunkDigest)
    }

    @Test func rejectsOtherVersions() {
        #expect(throws: (any Error).self) { try SnapdumpMetadata.decode(Array(#"{"version":2,"devices":[],"mode":"stop","startTime":0,"snapdumpVersion":"x"}"#.utf8)) }
    }
}
