import SnapdumpCLI

@main
struct Entrypoint {
    static func main() async {
        await Snapdump.main()
    }
}
