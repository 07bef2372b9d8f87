import ArgumentParser
import Repository

/// `snapdump repo gc <storeid>`: mark referenced chunks, sweep the rest older than the cutoff.
struct RepoGC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Garbage collection: remove chunks no backup references (older than the cutoff, 24 h 5 min by default).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id (type repo).") var storeid: String
    @Option(name: .customLong("atime-cutoff"), help: "Minutes an unreferenced chunk must be untouched before removal (PBS gc-atime-cutoff; default 1445).")
    var atimeCutoff: Int?

    func validate() throws {
        if let atimeCutoff, atimeCutoff < 0 || atimeCutoff > 2_880 * 365 { throw ValidationError("--atime-cutoff must be 0…1051200 minutes") }
    }

    func run() throws {
        let repo = try RepositoryAccess.open(storeid, global)
        var gc = GarbageCollector(repository: repo)
        if let atimeCutoff { gc.atimeCutoff = Int64(atimeCutoff) * 60 }
        let r = try gc.run { print($0) }
        print("removed: \(r.removedChunks) chunks, \(humanBytes(r.removedBytes))")
        print("pending: \(r.pendingChunks) chunks, \(humanBytes(r.pendingBytes)) (unreferenced, newer than the cutoff)")
        print("kept: \(r.keptChunks) chunks, \(humanBytes(r.keptBytes))")
        if r.removedBad + r.removedTemp > 0 { print("removed \(r.removedBad) .bad and \(r.removedTemp) temporary file(s)") }
        if !r.missingChunks.isEmpty {
            printError("\(r.missingChunks.count) referenced chunk(s) missing, e.g. \(r.missingChunks[0]): run 'snapdump repo verify \(storeid)'")
            throw ExitCode(1)
        }
    }
}
