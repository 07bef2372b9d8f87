import Guest

/// The `qemu-server.conf` blob of a VMA archive, as vzdump writes it: the VM
/// config without `lock:`, `parent:` and `unusedN:` lines, then one
/// `#qmdump#map:<disk>:drive-<disk>:<storeid>:<format>:` line per disk.
enum VMAConfigFile {
    static func render(_ config: VMConfig, disks: [DiskPlan]) -> String {
        var out = ""
        for line in config.serialized().split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("lock:") || line.hasPrefix("parent:") || line.hasPrefix("unused") { continue }
            if line.hasPrefix("[") { break }
            if !line.isEmpty { out += line + "\n" }
        }
        for d in disks {
            out += "#qmdump#map:\(d.key):\(d.deviceName):\(d.volume.storage):\(d.format.rawValue):\n"
        }
        return out
    }

    struct Mapping: Equatable {
        var key: String
        var device: String
        var storage: String
        var format: String
    }

    /// Splits an archived config into its config text and its map lines.
    static func parse(_ text: String) -> (config: String, maps: [Mapping]) {
        var config = ""
        var maps: [Mapping] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("#qmdump#map:") {
                let f = line.dropFirst("#qmdump#map:".count).split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                if f.count >= 4 { maps.append(Mapping(key: f[0], device: f[1], storage: f[2], format: f[3])) }
            } else {
                config += line + "\n"
            }
        }
        return (config, maps)
    }
}
