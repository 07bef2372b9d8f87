import SnapdumpConfig
import Testing
@testable import Backup

@Suite("prune-backups property strings")
struct PrunePolicyParsingTests {
    @Test func parsesAllKeys() throws {
        let p = try PrunePolicy(parsing: "keep-last=3,keep-hourly=1,keep-daily=7,keep-weekly=4,keep-monthly=6,keep-yearly=2")
        #expect(p[.last] == 3 && p[.hourly] == 1 && p[.daily] == 7 && p[.weekly] == 4 && p[.monthly] == 6 && p[.yearly] == 2)
        #expect(p.keepAll == nil)
        #expect(!p.keepsEverything)
        #expect(p.backupLimit == 23)
        #expect(p.propertyString == "keep-daily=7,keep-hourly=1,keep-last=3,keep-monthly=6,keep-weekly=4,keep-yearly=2")
        #expect(p.description == "keep-daily=7, keep-hourly=1, keep-last=3, keep-monthly=6, keep-weekly=4, keep-yearly=2")
    }

    @Test("keep-all, empty, all-zero: keep everything, no limit",
          arguments: ["keep-all=1", "", "keep-last=0", "keep-all=0", "keep-all=0,keep-daily=0", "keep-all=1,keep-last=0"])
    func keepsEverything(_ text: String) throws {
        let p = try PrunePolicy(parsing: text)
        #expect(p.keepsEverything)
        #expect(p.backupLimit == 0)
    }

    @Test func zerosAreRememberedForTheLog() throws {
        let p = try PrunePolicy(parsing: "keep-last=3,keep-daily=0")
        #expect(p.description == "keep-daily=0, keep-last=3")
        #expect(p.backupLimit == 3)
    }

    @Test("errors name the bad key or value", arguments: [
        ("keep-lats=3", "unknown key 'keep-lats'"),
        ("keep-last=three", "invalid value 'three' for keep-last"),
        ("keep-daily=-1", "invalid value '-1' for keep-daily"),
        ("keep-all=maybe", "invalid value 'maybe' for keep-all"),
        ("keep-all=1,keep-last=2", "keep-all cannot be set together with other options"),
        ("keep-last=1,keep-last=2", "duplicate key 'keep-last'"),
        ("keep-last", "expected 'key=value'"),
        ("keep-last=1,,keep-daily=2", "empty item"),
    ])
    func errors(_ text: String, _ expected: String) {
        do {
            _ = try PrunePolicy(parsing: text, what: "--prune-backups")
            Issue.record("'\(text)' was accepted")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.hasPrefix("--prune-backups"), "\(error.description)")
        }
    }
}
