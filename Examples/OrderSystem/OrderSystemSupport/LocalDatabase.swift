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
        let pool = try openRetryingWhileBusy(path: path, configuration: configuration)
        if let migrate {
            try pool.write { db in try migrate(db) }
        }
        return pool
    }

    /// The first open of a file switches it to WAL mode, which needs a moment of exclusive access
    /// and fails with SQLITE_BUSY (the busy timeout does not cover it) while another instance is
    /// opening the same file: retry for up to ten seconds.
    private static func openRetryingWhileBusy(path: String, configuration: Configuration) throws -> DatabasePool {
        let deadline = Date().addingTimeInterval(10)
        while true {
            do {
                return try DatabasePool(path: path, configuration: configuration)
            } catch let error as DatabaseError
                where (error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED) && Date() < deadline
            {
                usleep(20_000)
            }
        }
    }
}
