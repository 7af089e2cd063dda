import Foundation
import GRDB
public import Logging
public import SagaCore

/// A ``SagaCore/SagaStore`` in one SQLite file: the embedded default.
///
/// Several processes on one host may open the same file: it is kept in WAL mode (readers never
/// block the writer), every write is an `IMMEDIATE` transaction (so two writers never deadlock
/// upgrading a read lock; the second one waits), and a writer waits up to
/// ``Configuration/busyTimeout`` for another process's transaction instead of failing at once.
/// A transition is one such transaction: the compare-and-swap on the saga's version and the
/// outbox inserts commit together or not at all. Transitions (and creations) of different sagas
/// that arrive together share one transaction and one `fsync`; each saga's compare-and-swap is
/// still judged on its own.
///
/// Blocking SQLite calls run on GRDB's own dispatch queues, never on Swift's cooperative pool.
///
/// The schema is created or migrated when the store opens, in a write transaction, so several
/// processes may open a new file at the same time. The version is recorded in `sagakit_schema`;
/// a file written by a newer SagaKit fails to open with `schemaTooNew`.
///
/// ```swift
/// let store = try await SQLiteSagaStore(path: "/var/lib/shop/sagas.db")
/// let store2 = try await SQLiteSagaStore(url: "sqlite:///var/lib/shop/sagas.db")
/// ```
public final class SQLiteSagaStore: SagaStore {
    /// How the store opens the file.
    public struct Configuration: Sendable {
        /// How long a write waits for other connections' transactions (other processes) before
        /// it fails with `storeUnavailable`.
        public var busyTimeout: Duration
        /// Whether every commit is flushed to disk before it returns (`full`, survives power
        /// loss) or only written to the WAL (`normal`, survives a process crash).
        public var synchronous: Synchronous
        /// The most concurrent read connections this process opens.
        public var maximumReaderCount: Int

        /// SQLite's `synchronous` setting.
        public enum Synchronous: String, Sendable {
            /// `PRAGMA synchronous = FULL`: durable across power loss.
            case full = "FULL"
            /// `PRAGMA synchronous = NORMAL`: durable across process crashes; the last
            /// transactions may be lost on power loss (the file is never corrupted).
            case normal = "NORMAL"
        }

        /// Creates a configuration.
        public init(busyTimeout: Duration = .seconds(10), synchronous: Synchronous = .full, maximumReaderCount: Int = 4) {
            self.busyTimeout = busyTimeout
            self.synchronous = synchronous
            self.maximumReaderCount = maximumReaderCount
        }
    }

    /// The schema version this SagaKit writes.
    public static let schemaVersion = SQLiteSchema.currentVersion

    /// The database file's absolute path.
    public let path: String

    let pool: DatabasePool
    let logger: Logger
    let access: SQLiteStoreAccess
    let commits: WriteCoalescer<EncodedSaga, SagaState>
    let creations: WriteCoalescer<EncodedSaga, SagaCreation>
    let marks: WriteCoalescer<[String], Void>

    /// The most sagas written in one transaction.
    static let maxBatch = 64

    /// Opens (creating the directory and the file when missing) and migrates a store.
    ///
    /// - Parameters:
    ///   - path: the file; relative paths are resolved against the current directory.
    ///   - configuration: busy timeout and durability.
    ///   - logger: where opening and migration are logged (at `debug` and `info`).
    /// - Throws: ``SagaCore/SagaError`` `storeUnavailable` (naming the path) when the file cannot
    ///   be created or opened; `schemaTooNew` when a newer SagaKit wrote it.
    public init(
        path: String,
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "sagakit.store.sqlite")
    ) async throws {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        self.path = absolute
        self.logger = logger
        let pool = try await Self.open(path: absolute, configuration: configuration)
        self.pool = pool
        let access = SQLiteStoreAccess(pool: pool, path: absolute)
        self.access = access
        // SQLite has one writer at a time: one batch runs, the next one gathers meanwhile.
        commits = WriteCoalescer(maxBatch: Self.maxBatch, maxConcurrentBatches: 1) { await Self.commit($0, in: access) }
        creations = WriteCoalescer(maxBatch: Self.maxBatch, maxConcurrentBatches: 1) { await Self.create($0, in: access) }
        marks = WriteCoalescer(maxBatch: Self.maxBatch, maxConcurrentBatches: 1) { await Self.markSent($0, in: access) }
        do {
            try await SQLiteSchema.migrate(pool, path: absolute, logger: logger)
        } catch {
            try? pool.close()
            throw Self.storeError(error, path: absolute, doing: "migrate")
        }
    }

    /// Opens a store from a URL: `sqlite:///absolute/path/file.db`, `sqlite:relative/file.db`,
    /// or `sqlite:/absolute/path/file.db`.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for another scheme or an empty
    ///   path, and the errors of ``init(path:configuration:logger:)``.
    public convenience init(
        url: String,
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "sagakit.store.sqlite")
    ) async throws {
        try await self.init(path: Self.path(fromURL: url), configuration: configuration, logger: logger)
    }

    /// The file path of a `sqlite:` URL.
    static func path(fromURL url: String) throws -> String {
        guard url.lowercased().hasPrefix("sqlite:") else {
            throw SagaError(
                .invalidConfiguration,
                "'\(url)' is not a SQLite URL",
                recoverySuggestion: "use sqlite:///absolute/path/file.db or sqlite:relative/file.db"
            )
        }
        var rest = String(url.dropFirst("sqlite:".count))
        if rest.hasPrefix("//") {
            // sqlite://<authority>/<path>: only an empty authority (or localhost) is meaningful.
            rest.removeFirst(2)
            if rest.hasPrefix("localhost/") { rest.removeFirst("localhost".count) }
            guard rest.hasPrefix("/") else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(url)' names a host; SQLite URLs name a local file",
                    recoverySuggestion: "use sqlite:///absolute/path/file.db (three slashes) or sqlite:relative/file.db"
                )
            }
        }
        if let query = rest.firstIndex(of: "?") { rest = String(rest[..<query]) }
        let path = rest.removingPercentEncoding ?? rest
        guard !path.isEmpty, path != "/" else {
            throw SagaError(.invalidConfiguration, "'\(url)' has no file path")
        }
        return path
    }

    /// Closes the file's connections. Later calls fail with `storeUnavailable`. Closing is also
    /// done when the store is deinitialized.
    public func close() throws {
        do {
            try pool.close()
        } catch {
            throw Self.storeError(error, path: path, doing: "close")
        }
    }

    // MARK: Opening

    private static func open(path: String, configuration: Configuration) async throws -> DatabasePool {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw SagaError(
                .storeUnavailable,
                "cannot create the directory \(directory.path) for the SQLite store \(path)",
                recoverySuggestion: "check that the process may write there",
                underlying: error
            )
        }
        var config = GRDB.Configuration()
        config.label = "sagakit"
        config.busyMode = .timeout(seconds(configuration.busyTimeout))
        config.maximumReaderCount = max(1, configuration.maximumReaderCount)
        let synchronous = configuration.synchronous.rawValue
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        // Opening switches the file to WAL mode, which needs a moment of exclusive access: when
        // another process is opening or writing at the same time, retry until the busy timeout.
        let grdbConfiguration = config
        let deadline = ContinuousClock.now + configuration.busyTimeout
        while true {
            do {
                return try await onDispatchQueue { try DatabasePool(path: path, configuration: grdbConfiguration) }
            } catch let error as DatabaseError
                where (error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED)
                && ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                throw storeError(error, path: path, doing: "open")
            }
        }
    }

    /// Runs a blocking call on a dispatch queue, off the cooperative pool.
    private static func onDispatchQueue<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    // MARK: Errors

    /// Passes ``SagaCore/SagaError`` and cancellation through; wraps everything else as
    /// `storeUnavailable` naming the file.
    static func storeError(_ error: any Error, path: String, doing action: String) -> any Error {
        if error is SagaError || error is CancellationError { return error }
        if let error = error as? DatabaseError, error.resultCode == .SQLITE_BUSY {
            return SagaError(
                .storeUnavailable,
                "the SQLite store \(path) stayed locked by another connection while trying to \(action)",
                recoverySuggestion: "another process holds a long transaction; raise busyTimeout or find it",
                underlying: error
            )
        }
        return SagaError(
            .storeUnavailable,
            "cannot \(action) the SQLite store \(path): \(error)",
            recoverySuggestion: "check that the file exists, is a SagaKit store, and is readable and writable",
            underlying: error
        )
    }

    func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await access.read(action, body)
    }

    func write<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await access.write(action, body)
    }
}

/// The database and its path, for the batch functions (which must not hold the store itself).
struct SQLiteStoreAccess: Sendable {
    let pool: DatabasePool
    let path: String

    func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch {
            throw SQLiteSagaStore.storeError(error, path: path, doing: action)
        }
    }

    func write<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.write(body)
        } catch {
            throw SQLiteSagaStore.storeError(error, path: path, doing: action)
        }
    }
}

/// A duration in seconds.
func seconds(_ duration: Duration) -> TimeInterval {
    let (seconds, attoseconds) = duration.components
    return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
}

extension SQLiteSagaStore {
    /// Runs raw SQL (tests use it to simulate a newer schema).
    func executeForTesting(_ sql: String) async throws {
        try await write("execute SQL in") { db in try db.execute(sql: sql) }
    }

    /// The result of `PRAGMA integrity_check` ("ok" for a sound file).
    func integrityCheck() async throws -> String {
        try await read("check") { db in
            try String.fetchAll(db, sql: "PRAGMA integrity_check").joined(separator: "; ")
        }
    }
}
