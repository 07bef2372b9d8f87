import ArgumentParser

/// `snapdump volume …`: volumes on storages (pvesm alloc/list/free/path/export).
struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Allocate, list, free and export volumes.",
        subcommands: [VolumeAlloc.self, VolumeList.self, VolumeFree.self, VolumePath.self, VolumeExport.self]
    )
}
