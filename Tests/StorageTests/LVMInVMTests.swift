import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// lvm and lvmthin need device-mapper, which this host's kernel lacks: the
/// conformance suite runs for them inside the storage VM
/// (scripts/fixtures/storage-vm.sh: Debian's cloud kernel under TCG, a blank
/// PV disk, this very test bundle on an ext4 payload disk), and this test
/// reads the guest's console. Each LVM case must have run to its last step,
/// and none may have failed or been skipped.
@Suite("lvm and lvmthin in the storage VM", .serialized)
struct LVMInVMTests {
    static let cases = ["lvm (thick LVs)", "lvmthin (thin LVs, thin snapshots)"]

    @Test func conformanceInStorageVM() throws {
        // Inside the VM itself the suite must not start another VM.
        if Integration.fixture("SNAPDUMP_TEST_LVM_VG") != nil { return }
        guard Integration.required || ProcessInfo.processInfo.environment["SNAPDUMP_STORAGE_VM"] == "1" else {
            print("skipped: the storage VM runs with SNAPDUMP_INTEGRATION=1 or SNAPDUMP_STORAGE_VM=1")
            return
        }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        let script = GuestHarness.repositoryRoot + "/scripts/fixtures/storage-vm.sh"
        let t0 = Date()
        let out = try Command.capture([script, "run", bundle, "ConformanceTests"])
        let took = Int(Date().timeIntervalSince(t0))
        let console = out.stdout
        print("[storage VM] \(took) s, exit \(out.status)")
        #expect(out.status == 0, "storage-vm.sh exited \(out.status): \(out.stderr.suffix(2000))")
        #expect(console.contains("STORAGE-VM tests start"), "the VM did not get to the tests: \(console.suffix(3000))")
        for name in Self.cases {
            #expect(console.contains("[\(name)] conformance: every step ran"), "\(name) did not run to the end:\n\(console.suffix(6000))")
            let failed = console.split(separator: "\n").filter { $0.contains("✘") && $0.contains(name) }
            #expect(failed.isEmpty, "\(name) failed in the VM:\n\(failed.joined(separator: "\n"))")
        }
        for line in console.split(separator: "\n") where line.hasPrefix("[lvm") || line.hasPrefix("STORAGE-VM") {
            print("  vm: \(line)")
        }
    }
}
