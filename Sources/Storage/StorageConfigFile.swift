import SnapdumpConfig
import SnapdumpSystem

/// storage.cfg: load, validate, save atomically.
public struct StorageConfigFile: Sendable {
    public var path: String
    public var storages: [StorageDefinition]

    /// Loads the file; a missing file is an empty configuration.
    public static func load(_ path: String) throws -> StorageConfigFile {
        guard FileSystem.exists(path) else { return StorageConfigFile(path: path, storages: []) }
        let text = try FileSystem.readText(path)
        let cfg = try SectionConfig.parse(text, file: path, schema: StorageDefinition.schema)
        return StorageConfigFile(path: path, storages: try cfg.sections.map { try StorageDefinition(section: $0, file: path) })
    }

    public func storage(_ id: String) throws -> StorageDefinition {
        guard let s = storages.first(where: { $0.id == id }) else {
            throw StorageError(.unknownStorage, "storage '\(id)' does not exist (in \(path))")
        }
        return s
    }

    public mutating func add(_ def: StorageDefinition) throws {
        guard SectionConfig.isValidID(def.id) else {
            throw StorageError(.invalidArgument, "invalid storage id '\(def.id)': letters, digits, '-', '_', '.', starting with a letter")
        }
        if storages.contains(where: { $0.id == def.id }) {
            throw StorageError(.duplicateStorage, "storage '\(def.id)' already exists (in \(path))")
        }
        // What we write we must be able to read: no key the type's schema refuses on load.
        let allowed = StorageDefinition.schema[def.type.rawValue] ?? []
        for p in def.section.properties where !allowed.contains(p.key) {
            throw StorageError(.invalidArgument, "storage '\(def.id)': '\(p.key)' does not apply to \(def.type.rawValue) storages")
        }
        storages.append(def)
    }

    public mutating func remove(_ id: String) throws {
        _ = try storage(id)
        storages.removeAll { $0.id == id }
    }

    /// Writes the file atomically (temp, fsync, rename, fsync dir).
    public func save() throws {
        do {
            try FileSystem.createDirectory((path as NSString).deletingLastPathComponent)
            let config = SectionConfig(sections: storages.map(\.section))
            try config.validate(file: path)
            try FileSystem.writeAtomically(path, config.serialized())
        } catch let e as SystemError {
            // Name the file, not the temp file the error is about; the old file is untouched.
            throw StorageError(e.isNoSpace ? .noSpace : .backend, "cannot save \(path) (left unchanged): \(e)")
        }
    }
}

import Foundation
