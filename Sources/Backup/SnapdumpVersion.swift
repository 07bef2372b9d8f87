/// snapdump's version, in one place: archives record it (snapdump.json),
/// `snapdump --version` prints it and `make deb` takes the package version
/// from the built binary.
public enum SnapdumpVersion {
    public static let current = "0.1.0"
}
