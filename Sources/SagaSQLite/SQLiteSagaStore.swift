public import Configuration
import Foundation
import GRDB
public import Logging
public import SagaCore
public import ServiceLifecycle
import Synchronization

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
/// A transition's local writes (``SagaCore/LocalWrite``, on the service's tables in the same
/// file) run in that transaction too, right after the saga's compare-and-swap and inside a
/// savepoint of their own: a failing one rolls back that saga's transition only, and the other
/// sagas of the batch still commit.
///
/// Blocking SQLite calls run on GRDB's own dispatch queues, never on Swift's cooperative pool.
///
/// ## Lifecycle
/// The store is a swift-service-lifecycle `Service`. Creating it does no I/O; ``run()`` opens
/// the file (creating it and its directory when missing), creates or migrates the schema, serves
/// until graceful shutdown, cancellation or ``shutdown()``, and closes the file. Operations made
/// before the store runs wait for it, at most ``Configuration/startupTimeout``, then fail with
/// `storeUnavailable`.
///
/// ```swift
/// let store = try SQLiteSagaStore(url: "sqlite:///var/lib/shop/sagas.db")
/// // In a service: list the store before the services that use it (a ServiceGroup stops
/// // services in reverse order, so the store stops last).
/// let group = ServiceGroup(services: [store, participant], logger: logger)
/// // In a tool or a test:
/// let counts = try await store.withRunning { store in try await store.countByStatus(name: nil) }
/// ```
///
/// The schema is created or migrated in a write transaction, so several processes may open a
/// new file at the same time. The version is recorded in `sagakit_schema`; a file written by a
/// newer SagaKit makes ``run()`` fail with `schemaTooNew`.
public final class SQLiteSagaStore: SagaStore, Service {
    /// The schema version this SagaKit writes.
    public static let schemaVersion = SQLiteSchema.currentVersion

    /// The database file's absolute path.
    public let path: String
    /// The configuration the store was created with.
    public let configuration: Configuration

    let logger: Logger
    let access: SQLiteStoreAccess
    let lifecycle: StoreLifecycle
    let commits: WriteCoalescer<SQLiteCommit, SagaState>
    let creations: WriteCoalescer<EncodedSaga, SagaCreation>
    let marks: WriteCoalescer<[String], Void>

    /// The most sagas written in one transaction.
    static let maxBatch = 64

    /// Creates a store for a file; does no I/O (``run()`` opens the file).
    ///
    /// - Parameters:
    ///   - configuration: the file (a relative path is resolved against the current directory
    ///     now), busy timeout, durability, startup timeout.
    ///   - logger: where opening and migration are logged (at `debug` and `info`).
    public init(configuration: Configuration, logger: Logger = Logger(label: "sagakit.store.sqlite")) {
        let absolute = URL(fileURLWithPath: configuration.path).standardizedFileURL.path
        self.path = absolute
        self.configuration = configuration
        self.logger = logger
        let lifecycle = StoreLifecycle(name: "the SQLite store \(absolute)", startupTimeout: configuration.startupTimeout)
        self.lifecycle = lifecycle
        let access = SQLiteStoreAccess(path: absolute, lifecycle: lifecycle)
        self.access = access
        let closed: @Sendable () -> any Error = { lifecycle.notRunningError }
        // SQLite has one writer at a time: one batch runs, the next one gathers meanwhile.
        commits = WriteCoalescer(
            maxBatch: Self.maxBatch, maxConcurrentBatches: 1, closedError: closed,
            observe: StoreBatchMetrics.observer(store: "sqlite", operation: "commit")
        ) {
            await Self.commit($0, in: access)
        }
        creations = WriteCoalescer(
            maxBatch: Self.maxBatch, maxConcurrentBatches: 1, closedError: closed,
            observe: StoreBatchMetrics.observer(store: "sqlite", operation: "create")
        ) {
            await Self.create($0, in: access)
        }
        marks = WriteCoalescer(
            maxBatch: Self.maxBatch, maxConcurrentBatches: 1, closedError: closed,
            observe: StoreBatchMetrics.observer(store: "sqlite", operation: "mark_sent")
        ) {
            await Self.markSent($0, in: access)
        }
    }

    /// Creates a store for a file with the default settings; does no I/O.
    public convenience init(path: String, logger: Logger = Logger(label: "sagakit.store.sqlite")) {
        self.init(configuration: Configuration(path: path), logger: logger)
    }

    /// Creates a store from a URL (see ``Configuration/init(url:)``) with the default settings;
    /// does no I/O.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for another scheme or an empty
    ///   path.
    public convenience init(url: String, logger: Logger = Logger(label: "sagakit.store.sqlite")) throws {
        self.init(configuration: try Configuration(url: url), logger: logger)
    }

    /// Creates a store from swift-configuration keys (see ``Configuration/init(reader:)``);
    /// does no I/O.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` naming the key that is missing or
    ///   malformed.
    public convenience init(reader: ConfigReader, logger: Logger = Logger(label: "sagakit.store.sqlite")) throws {
        self.init(configuration: try Configuration(reader: reader), logger: logger)
    }

    // MARK: Service

    /// Opens the file (creating it and its directory when missing), creates or migrates the
    /// schema, serves operations until graceful shutdown, cancellation or ``shutdown()``, lets
    /// the writes already queued finish, and closes the file.
    ///
    /// - Throws: ``SagaCore/SagaError`` `storeUnavailable` (naming the path) when the file cannot
    ///   be created or opened; `schemaTooNew` when a newer SagaKit wrote it; `invalidState` when
    ///   the store was already run (a store runs once).
    public func run() async throws {
        guard try lifecycle.begin() else {
            lifecycle.finished()
            return
        }
        let pool: DatabasePool
        do {
            pool = try await Self.open(path: path, configuration: configuration)
            do {
                try await SQLiteSchema.migrate(pool, path: path, migrates: configuration.migratesSchema, logger: logger)
            } catch {
                try? await Self.onDispatchQueue { try pool.close() }
                throw Self.storeError(error, path: path, doing: "migrate")
            }
        } catch {
            let failure =
                error as? SagaError
                ?? SagaError(.storeUnavailable, "cannot open the SQLite store \(path): \(error)", underlying: error)
            lifecycle.failed(failure)
            lifecycle.finished()
            throw failure
        }
        access.open(pool)
        logger.debug("SQLite saga store open", metadata: ["store.path": "\(path)"])
        await withDiscardingTaskGroup { group in
            group.addTask { await self.commits.run() }
            group.addTask { await self.creations.run() }
            group.addTask { await self.marks.run() }
            lifecycle.started()
            await withTaskCancellationOrGracefulShutdownHandler {
                await lifecycle.waitForStopRequest()
            } onCancelOrGracefulShutdown: {
                self.lifecycle.requestStop()
            }
            // New operations fail from now on; let the writes already queued finish.
            commits.finish()
            creations.finish()
            marks.finish()
        }
        access.close()
        do {
            try await Self.onDispatchQueue { try pool.close() }
        } catch {
            logger.warning(
                "closing the SQLite store failed; its connections close when the process ends",
                metadata: ["store.path": "\(path)", "error": "\(error)"])
        }
        logger.debug("SQLite saga store closed", metadata: ["store.path": "\(path)"])
        lifecycle.finished()
    }

    /// Stops a running store and waits until its file is closed: queued writes finish, later
    /// operations fail with `storeUnavailable`. Returns at once for a store that never ran (it
    /// then never will). Calling it twice is fine.
    public func shutdown() async {
        await lifecycle.shutdown()
    }

    /// Runs the store while `body` runs, then shuts it down: for tools, tests and scripts that
    /// do not use a `ServiceGroup`.
    ///
    /// - Throws: what `body` throws, or the error of ``run()`` when the store cannot be opened.
    public func withRunning<Result>(_ body: (SQLiteSagaStore) async throws -> Result) async throws -> Result {
        try await lifecycle.withRunning({ try await self.run() }, { try await body(self) })
    }

    // MARK: Opening

    static func open(path: String, configuration: Configuration) async throws -> DatabasePool {
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
    static func onDispatchQueue<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    // MARK: Errors

    /// Passes ``SagaCore/SagaError`` and cancellation through; wraps data SQLite refuses (a
    /// constraint or trigger, a value too big or of the wrong type) as `storeRefused` and
    /// everything else as `storeUnavailable`, naming the file.
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
        if let error = error as? DatabaseError, [.SQLITE_CONSTRAINT, .SQLITE_TOOBIG, .SQLITE_MISMATCH].contains(error.resultCode) {
            return SagaError(
                .storeRefused,
                "cannot \(action) the SQLite store \(path): it refused the data: \(error.message ?? "\(error.resultCode)")",
                recoverySuggestion: "running it again does not change that; the message says which value or constraint refused it",
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
/// The pool exists while the store runs.
final class SQLiteStoreAccess: Sendable {
    let path: String
    let lifecycle: StoreLifecycle
    private let pool = Mutex<DatabasePool?>(nil)

    init(path: String, lifecycle: StoreLifecycle) {
        self.path = path
        self.lifecycle = lifecycle
    }

    func open(_ pool: DatabasePool) { self.pool.withLock { $0 = pool } }
    func close() { pool.withLock { $0 = nil } }

    /// The pool, once the store runs (waiting for it, at most the startup timeout).
    func database() async throws -> DatabasePool {
        try await lifecycle.waitUntilRunning()
        guard let pool = pool.withLock({ $0 }) else { throw lifecycle.notRunningError }
        return pool
    }

    func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let pool = try await database()
        do {
            return try await pool.read(body)
        } catch {
            throw SQLiteSagaStore.storeError(error, path: path, doing: action)
        }
    }

    func write<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let pool = try await database()
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
