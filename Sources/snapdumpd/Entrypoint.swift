import SnapdumpCLI
import SnapdumpSystem

/// `snapdumpd`: the backup job scheduler (same as `snapdump daemon`).
@main
struct Entrypoint {
    static func main() async {
        FileSystem.restrictNewFilesToOwner()
        await SnapdumpDaemon.main()
    }
}
