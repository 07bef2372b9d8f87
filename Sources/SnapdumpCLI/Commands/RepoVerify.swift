import ArgumentParser
import Repository

/// `snapdump repo verify <storeid> [--vmid N | --snapshot vm/N/TIME]`: re-reads every chunk.
struct RepoVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Re-read and check every chunk of a snapshot, a guest, or the whole repository; corrupt chunks are renamed .bad.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id (type repo).") var storeid: String
    @Option(help: "Only this guest's snapshots.") var vmid: Int?
    @Option(help: "Only this snapshot (vm/<vmid>/<UTC time>).") var snapshot: String?

    func run() throws {
        let repo = try RepositoryAccess.open(storeid, global)
        var snaps: [SnapshotName]
        if let snapshot {
            guard let s = SnapshotName(parsing: snapshot) else {
                throw ValidationError("invalid snapshot '\(snapshot)': expected vm/<vmid>/<YYYY-MM-DDTHH:MM:SSZ>")
            }
            guard repo.exists(s) else { throw RepositoryError(.notFound, "snapshot \(s)", "does not exist in repository '\(storeid)'") }
            snaps = [s]
        } else {
            snaps = try repo.snapshots(type: vmid == nil ? nil : "vm", id: vmid.map(String.init))
        }
        let r = try Verifier(repository: repo).verify(snaps) { print($0) }
        print("verified \(snaps.count) snapshot(s), \(r.chunksChecked) chunk(s)")
        if !r.ok {
            for p in r.problems { printError("verification failed: \(p)") }
            throw ExitCode(1)
        }
    }
}
