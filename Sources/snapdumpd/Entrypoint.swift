import SnapdumpCLI

/// `snapdumpd`: the backup job scheduler (same as `snapdump daemon`).
@main
struct Entrypoint {
    static func main() async {
        await SnapdumpDaemon.main()
    }
}
