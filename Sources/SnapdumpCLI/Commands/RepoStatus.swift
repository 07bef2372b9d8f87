import ArgumentParser
import Foundation
import Repository

/// `snapdump repo status <storeid>`: snapshots, chunks, stored vs logical bytes, dedup factor.
struct RepoStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show what a repository holds and its deduplication factor.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id (type repo).") var storeid: String

    func run() throws {
        let repo = try RepositoryAccess.open(storeid, global)
        let s = try RepositoryStatus(repository: repo)
        print("repository: \(storeid) (\(repo.root))")
        print("guests: \(s.guests)")
        print("snapshots: \(s.snapshots)")
        print("chunks: \(s.chunks)")
        print("stored: \(humanBytes(s.storedBytes)) (\(s.storedBytes) bytes)")
        print("logical: \(humanBytes(s.logicalBytes)) (\(s.logicalBytes) bytes)")
        print(String(format: "deduplication factor: %.2f", s.dedupFactor))
    }
}
