import Foundation
public import GRDB

/// The example services' own SQLite databases (one file per service, shared by its instances).
public enum LocalDatabase {
    /// Opens (creating the directory and file when missing) a WAL-mode database that several
    /// processes may write: writers wait up to 10 s for each other, and every write transaction
    /// is `IMMEDIATE`.
    public static func open(path: String, readOnly: Bool = false, migrate: (@Sendable (Database) throws -> Void)? = nil) throws
        -> DatabasePool
    {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.readonly = readOnly
        let pool = try DatabasePool(path: path, configuration: configuration)
        if let migrate {
            try pool.write { db in try migrate(db) }
        }
        return pool
    }
}
