import SnapdumpCLI
import SnapdumpSystem

@main
struct Entrypoint {
    static func main() async {
        FileSystem.restrictNewFilesToOwner()
        await Snapdump.main()
    }
}
