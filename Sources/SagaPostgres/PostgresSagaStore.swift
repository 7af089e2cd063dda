public import Configuration
import Foundation
public import Logging
public import PostgresNIO
public import SagaCore
public import ServiceLifecycle

/// A ``SagaCore/SagaStore`` in PostgreSQL: the shared store for real deployments.
///
/// A transition is a compare-and-swap `UPDATE … WHERE id = … AND version = …` chained with the
/// outbox `INSERT`s in one statement (data-modifying CTEs), so the two commit together or not at
/// all. Transitions of different sagas that arrive together share that statement, one round trip
/// and one durable commit (group commit); each saga's compare-and-swap is still judged on its
/// own, and only the winners' messages are recorded. Loads, creations and sent marks are batched
/// the same way. The hot-path statements are PL/pgSQL functions in the store's schema, so the
/// server plans them once per connection. Claiming stalled sagas uses `FOR UPDATE SKIP LOCKED`,
/// so concurrent reapers never take the same saga and never wait for each other.
///
/// ## Lifecycle
/// The store is a swift-service-lifecycle `Service`, shaped like `PostgresClient`: creating it
/// does no I/O. ``run()`` connects, creates or migrates the schema, runs the connection pool,
/// serves until graceful shutdown, cancellation or ``shutdown()``, and closes the pool.
/// Operations made before the store runs wait for it, at most
/// ``Configuration/startupTimeout``, then fail with `storeUnavailable`.
///
/// ```swift
/// let store = try PostgresSagaStore(url: "postgres://user:pass@127.0.0.1:5432/db")
/// // In a service: list the store before the services that use it (a ServiceGroup stops
/// // services in reverse order, so the store stops last).
/// let group = ServiceGroup(services: [store, participant], logger: logger)
/// // In a tool or a test:
/// let counts = try await store.withRunning { store in try await store.countByStatus(name: nil) }
/// ```
///
/// When you already run a `PostgresClient` (for example in your own `ServiceGroup`), pass it to
/// ``init(client:schema:location:statementTimeout:startupTimeout:logger:)``: the store's
/// ``run()`` then migrates through it and serves, but never runs or stops the client.
///
/// The schema is created or migrated under a transaction-scoped advisory lock, so processes that
/// start together take turns. The version is recorded in `sagakit_schema`; a database written by
/// a newer SagaKit makes ``run()`` fail with `schemaTooNew`.
public final class PostgresSagaStore: SagaStore, Service {
    /// The schema version this SagaKit writes.
    public static let schemaVersion = PostgresSchema.currentVersion

    /// The client the store queries through now. A store that owns its client replaces it by
    /// a fresh one when its pool stays without connections while the server answers (after a
    /// PostgreSQL restart, see ``run()``): read this property each time rather than keeping the
    /// client.
    public var client: PostgresClient { pool.current.client }
    /// `host:port/database`, as error messages say it.
    public let location: String
    /// The PostgreSQL schema holding the tables.
    public let schema: String

    let logger: Logger
    /// The quoted schema name, to prefix table names with.
    let namespace: String
    /// Where ``run()`` connects to migrate, when the store owns its client (`nil` for a client of
    /// the caller's, which is then used).
    private let ownConfiguration: Configuration?
    /// ``Configuration/migratesSchema``; `true` for a store on the caller's client.
    private let migratesSchema: Bool
    let lifecycle: StoreLifecycle
    /// The current client, and its replacement when wedged.
    let pool: PostgresPool
    /// The hot-path statements, batched by the coalescers below.
    let batches: PostgresBatches
    let commits: WriteCoalescer<EncodedSaga, SagaState>
    let loads: WriteCoalescer<SagaID, PostgresRandomAccessRow>
    let creations: WriteCoalescer<EncodedSaga, SagaCreation>
    let marks: WriteCoalescer<[String], Void>
    /// Transitions with local writes, committed together in one transaction (a savepoint each).
    let localCommits: WriteCoalescer<PostgresBatches.LocalCommit, SagaState>
    /// Seals the state copies commands carry, with the key ``run()`` reads from the schema.
    let seal = PostgresStateSeal()

    /// HMAC-SHA-256 under a key kept in the schema (`sagakit_keys`), shared by every process of
    /// the store; it seals nothing before ``run()`` has read the key.
    public var stateSeal: (any SagaStateSeal)? { seal }

    /// Creates a store from a URL such as `postgres://user:password@host:5432/database` (see
    /// ``Configuration/init(url:)``) with the default settings; does no I/O.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for a malformed URL.
    public convenience init(url: String, logger: Logger = Logger(label: "sagakit.store.postgres")) throws {
        try self.init(configuration: Configuration(url: url), logger: logger)
    }

    /// Creates a store and its connection pool (a `PostgresClient` that ``run()`` runs); does no
    /// I/O.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for a schema name that is not a
    ///   plain identifier.
    public init(configuration: Configuration, logger: Logger = Logger(label: "sagakit.store.postgres")) throws {
        let namespace = try Self.quotedSchema(configuration.schema)
        let clientConfiguration = Self.clientConfiguration(configuration)
        // Every connection of the store's own client lives on one of NIO's singleton event
        // loops (never shut down), where the store's batches run too: a batch, its connection's
        // statements and their replies stay on one thread.
        let eventLoop = NIOSingletons.posixEventLoopGroup.next()
        let makeClient: @Sendable () -> PostgresClient = { [clientConfiguration] in
            PostgresClient(configuration: clientConfiguration, eventLoopGroup: eventLoop, backgroundLogger: logger)
        }
        let location = configuration.location
        let lifecycle = StoreLifecycle(
            name: "the PostgreSQL store at \(location) (schema \(configuration.schema))",
            startupTimeout: configuration.startupTimeout)
        let pool = PostgresPool(
            client: makeClient(), logger: logger, makeClient: makeClient,
            probe: { await Self.probe(configuration, logger: logger) })
        self.pool = pool
        self.location = location
        self.schema = configuration.schema
        self.namespace = namespace
        self.logger = logger
        self.ownConfiguration = configuration
        self.migratesSchema = configuration.migratesSchema
        self.lifecycle = lifecycle
        (batches, commits, loads, creations, marks, localCommits) = Self.batching(
            pool: pool, namespace: namespace, location: location, logger: logger,
            statementTimeout: configuration.statementTimeout, lifecycle: lifecycle, eventLoop: eventLoop,
            heldConnections: Self.heldConnections(configuration))
    }

    /// Creates a store on a `PostgresClient` that the caller runs (`client.run()`, or a
    /// `ServiceGroup`); does no I/O. The store's ``run()`` creates or migrates the schema through
    /// the client and serves; it never runs or stops the client.
    ///
    /// - Parameters:
    ///   - schema: the PostgreSQL schema for SagaKit's tables (created when missing).
    ///   - location: how error messages name the server (for example `db.internal:5432/shop`).
    ///   - statementTimeout: see ``Configuration/statementTimeout``.
    ///   - startupTimeout: see ``Configuration/startupTimeout``.
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for a schema name that is not a
    ///   plain identifier.
    public init(
        client: PostgresClient, schema: String = "public", location: String = "PostgreSQL",
        statementTimeout: Duration = .seconds(30), startupTimeout: Duration = .seconds(30),
        logger: Logger = Logger(label: "sagakit.store.postgres")
    ) throws {
        let namespace = try Self.quotedSchema(schema)
        let lifecycle = StoreLifecycle(
            name: "the PostgreSQL store at \(location) (schema \(schema))", startupTimeout: startupTimeout)
        // The caller's client is never replaced: the store only runs statements again on it.
        let pool = PostgresPool(client: client, logger: logger)
        self.pool = pool
        self.location = location
        self.schema = schema
        self.namespace = namespace
        self.logger = logger
        self.ownConfiguration = nil
        self.migratesSchema = true
        self.lifecycle = lifecycle
        (batches, commits, loads, creations, marks, localCommits) = Self.batching(
            pool: pool, namespace: namespace, location: location, logger: logger, statementTimeout: statementTimeout,
            lifecycle: lifecycle, eventLoop: nil)
    }

    /// Creates a store from swift-configuration keys (see ``Configuration/init(reader:)``);
    /// does no I/O.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` naming the key that is missing or
    ///   malformed.
    public convenience init(reader: ConfigReader, logger: Logger = Logger(label: "sagakit.store.postgres")) throws {
        try self.init(configuration: Configuration(reader: reader), logger: logger)
    }

    // MARK: Service

    /// Connects, creates or migrates the schema, runs the connection pool (when the store owns
    /// it) and serves operations until graceful shutdown, cancellation or ``shutdown()``; then
    /// lets the statements already queued finish and closes the pool.
    ///
    /// - Throws: ``SagaCore/SagaError`` `storeUnavailable` (saying `host:port/database`) when the
    ///   server cannot be reached or refuses the login, `schemaTooNew` when a newer SagaKit
    ///   created the schema, `invalidState` when the store was already run (a store runs once).
    public func run() async throws {
        guard try lifecycle.begin() else {
            lifecycle.finished()
            return
        }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let pool = pool
                if ownConfiguration != nil {
                    // Runs the client, and its replacements when it is wedged.
                    group.addTask { await pool.run() }
                }
                // Keeps the statements' deadlines until the store closes.
                let (watch, report) = (batches.watch, stallReporter())
                group.addTask { await watch.run(pool: pool, report: report) }
                try await migrate()
                // Keeps connections leased between statements (none on a caller's client), from
                // now on: the client runs.
                let (held, logger) = (batches.held, logger)
                group.addTask { await held.run(pool: pool, logger: logger) }
                await withDiscardingTaskGroup { coalescers in
                    coalescers.addTask { await self.commits.run() }
                    coalescers.addTask { await self.loads.run() }
                    coalescers.addTask { await self.creations.run() }
                    coalescers.addTask { await self.marks.run() }
                    coalescers.addTask { await self.localCommits.run() }
                    lifecycle.started()
                    await withTaskCancellationOrGracefulShutdownHandler {
                        await lifecycle.waitForStopRequest()
                    } onCancelOrGracefulShutdown: {
                        self.lifecycle.requestStop()
                    }
                    // New operations fail from now on; let the statements already queued finish.
                    // Each statement ends within the statement timeout (see PostgresBatches).
                    commits.finish()
                    localCommits.finish()
                    loads.finish()
                    creations.finish()
                    marks.finish()
                }
                // Statements stop retrying; ends the clients' run(), which closes the pool.
                pool.close()
                group.cancelAll()
            }
        } catch {
            let failure =
                error as? SagaError
                ?? SagaError(
                    .storeUnavailable, "the PostgreSQL store at \(location) failed: \(Self.describe(error))",
                    underlying: error)
            pool.close()
            lifecycle.failed(failure)
            lifecycle.finished()
            throw failure
        }
        logger.debug("PostgreSQL saga store closed", metadata: ["store.location": "\(location)"])
        lifecycle.finished()
    }

    /// Stops a running store and waits until its pool is closed: queued statements finish, later
    /// operations fail with `storeUnavailable`. Returns at once for a store that never ran (it
    /// then never will). Calling it twice is fine. A store on a client of yours leaves the client
    /// running.
    public func shutdown() async {
        await lifecycle.shutdown()
    }

    /// Runs the store while `body` runs, then shuts it down: for tools, tests and scripts that
    /// do not use a `ServiceGroup`.
    ///
    /// - Throws: what `body` throws, or the error of ``run()`` when the store cannot start.
    public func withRunning<Result>(_ body: (PostgresSagaStore) async throws -> Result) async throws -> Result {
        try await lifecycle.withRunning({ try await self.run() }, { try await body(self) })
    }

    /// Creates or migrates the schema: on a connection of its own when the store owns its pool
    /// (so that an unreachable server is reported at once: the pool would retry forever), through
    /// the caller's client otherwise.
    ///
    /// The migration gives up after twice the statement timeout, at least 10 s (a server that stops answering,
    /// or another session holding the schema's lock), so ``run()`` fails instead of waiting.
    private func migrate() async throws {
        let (namespace, schema, location, logger, migrates) = (namespace, schema, location, logger, migratesSchema)
        // At least 10 s: a short statement timeout must not make a start on a busy server fail
        // (the migration opens a connection and runs several statements).
        let timeout = max(batches.statementTimeout * 2, .seconds(10))
        let newKey = PostgresStateSeal.newKey()
        guard let configuration = ownConfiguration else {
            do {
                let key = try await pool.current.client.withConnection { connection in
                    try await PostgresSchema.migrate(
                        connection, namespace: namespace, schema: schema, location: location, timeout: timeout,
                        newKey: newKey, migrates: migrates, logger: logger)
                }
                seal.use(key: key)
            } catch {
                throw Self.storeError(error, location: location, doing: "migrate")
            }
            return
        }
        let connectionConfiguration = try Self.connectionConfiguration(configuration)
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: connectionConfiguration, id: 0, logger: logger
            )
        } catch {
            throw Self.connectError(error, configuration: configuration)
        }
        if configuration.tls == .prefer {
            await Self.warnIfPlaintext(connection, location: location, logger: logger)
        }
        let key: [UInt8]
        do {
            key = try await PostgresSchema.migrate(
                connection, namespace: namespace, schema: schema, location: location, timeout: timeout,
                newKey: newKey, migrates: migrates, logger: logger)
            try? await connection.close()
        } catch {
            try? await connection.close()
            throw Self.storeError(error, location: location, doing: "migrate")
        }
        seal.use(key: key)
    }

    /// A single connection's configuration (TLS as configured).
    private static func connectionConfiguration(
        _ configuration: Configuration, connectTimeout: Duration? = nil
    ) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch configuration.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try Self.tlsContext(configuration))
        case .require, .verifyCA, .verifyFull: tls = .require(try Self.tlsContext(configuration))
        }
        var connectionConfiguration = PostgresConnection.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.username,
            password: configuration.password, database: configuration.database, tls: tls
        )
        connectionConfiguration.options.connectTimeout = .milliseconds(
            StoreCoding.milliseconds(connectTimeout ?? configuration.connectTimeout)
        )
        connectionConfiguration.options.additionalStartupParameters = [
            ("application_name", configuration.applicationName)
        ]
        return connectionConfiguration
    }

    /// Whether the server accepts a connection now (opened outside the pool, then closed): how
    /// the pool tells a wedged pool from a server that is still down. Answers within about 2 s
    /// whatever the server does: a connection that has not logged in by then counts as refused
    /// (and is closed when it completes), so a server that accepts TCP but never answers cannot
    /// hold up the pool's supervisor.
    private static func probe(_ configuration: Configuration, logger: Logger) async -> Bool {
        let bound = min(configuration.connectTimeout, .seconds(2))
        let connectionConfiguration: PostgresConnection.Configuration
        do {
            connectionConfiguration = try Self.connectionConfiguration(configuration, connectTimeout: bound)
        } catch {
            return false
        }
        let eventLoop = PostgresConnection.defaultEventLoopGroup.any()
        let answer = eventLoop.makePromise(of: Bool.self)
        let timer = eventLoop.scheduleTask(in: .milliseconds(StoreCoding.milliseconds(bound))) { answer.succeed(false) }
        PostgresConnection.connect(on: eventLoop, configuration: connectionConfiguration, id: -1, logger: logger)
            .whenComplete { result in
                timer.cancel()
                switch result {
                case .success(let connection):
                    answer.succeed(true)
                    connection.close().whenComplete { _ in }
                case .failure(let error):
                    logger.debug("PostgreSQL does not accept connections yet", metadata: ["error": "\(describe(error))"])
                    answer.succeed(false)
                }
            }
        return (try? await answer.futureResult.get()) ?? false
    }

    // MARK: Helpers

    /// How many connections the store holds: ``Configuration/heldConnections``, leaving the pool
    /// at least one; none with a keep-alive, which postgres-nio sends only on the connections
    /// in its pool (held ones would never be pinged).
    static func heldConnections(_ configuration: Configuration) -> Int {
        guard configuration.keepAliveInterval == nil else { return 0 }
        return max(0, min(configuration.heldConnections, configuration.maximumConnections - 1))
    }

    /// The most sagas in one batched statement.
    static let maxBatch = 64

    /// Batches of concurrent commits, loads, creations and sent marks. One batch of each kind
    /// runs at a time while the next one gathers: measured on the saga benchmark, two at a time
    /// made smaller batches, more statements and lower throughput.
    private static func batching(
        pool: PostgresPool, namespace: String, location: String, logger: Logger, statementTimeout: Duration,
        lifecycle: StoreLifecycle, eventLoop: (any EventLoop)?, heldConnections: Int = 0
    ) -> (
        PostgresBatches, WriteCoalescer<EncodedSaga, SagaState>, WriteCoalescer<SagaID, PostgresRandomAccessRow>,
        WriteCoalescer<EncodedSaga, SagaCreation>, WriteCoalescer<[String], Void>,
        WriteCoalescer<PostgresBatches.LocalCommit, SagaState>
    ) {
        var configured = PostgresBatches(
            pool: pool, namespace: namespace, location: location, logger: logger, statementTimeout: statementTimeout)
        // The store's own client runs on NIO's singleton event loops, which are never shut down
        // (a job handed to a loop that has shut down would be dropped, its task never resumed).
        let executor = eventLoop.map { EventLoopTaskExecutor($0) }
        configured.storeExecutor = executor
        configured.held = PostgresHeldConnections(count: heldConnections)
        let batches = configured
        let closed: @Sendable () -> any Error = { lifecycle.notRunningError }
        func observer(_ operation: String) -> @Sendable (Int, Duration) -> Void {
            StoreBatchMetrics.observer(store: "postgres", operation: operation)
        }
        return (
            batches,
            WriteCoalescer(
                maxBatch: maxBatch, maxConcurrentBatches: 1, closedError: closed, observe: observer("commit"), executor: executor
            ) {
                await batches.commit($0)
            },
            WriteCoalescer(maxBatch: maxBatch, maxConcurrentBatches: 1, closedError: closed, observe: observer("load"), executor: executor)
            {
                await batches.load($0)
            },
            WriteCoalescer(
                maxBatch: maxBatch, maxConcurrentBatches: 1, closedError: closed, observe: observer("create"), executor: executor
            ) {
                await batches.create($0)
            },
            WriteCoalescer(
                maxBatch: maxBatch, maxConcurrentBatches: 1, closedError: closed, observe: observer("mark_sent"), executor: executor
            ) {
                await batches.markSent($0)
            },
            WriteCoalescer(
                maxBatch: maxBatch, maxConcurrentBatches: 1, closedError: closed, observe: observer("commit_with_writes"),
                executor: executor
            ) {
                await batches.commit(withLocalWrites: $0)
            }
        )
    }

    /// `"name"`, after checking that the name is a plain identifier.
    static func quotedSchema(_ schema: String) throws -> String {
        let valid =
            !schema.isEmpty && schema.utf8.count <= 63
            && schema.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && CharacterSet.alphanumerics.contains($0)) }
            && !(schema.first!.isNumber)
        guard valid else {
            throw SagaError(
                .invalidConfiguration,
                "'\(schema)' is not a valid PostgreSQL schema name for SagaKit",
                recoverySuggestion: "use letters, digits and underscores, starting with a letter"
            )
        }
        return "\"\(schema)\""
    }

    /// What went wrong, without query parameters (which may hold payloads).
    static func describe(_ error: any Error) -> String {
        if let error = error as? PostgresTransactionError,
            let inner = error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError
        {
            return describe(inner)
        }
        if let error = error as? PSQLError {
            var parts = ["\(error.code)"]
            if let message = error.serverInfo?[.message] { parts.append(message) }
            if let state = error.serverInfo?[.sqlState] { parts.append("SQLSTATE \(state)") }
            if let underlying = error.underlying { parts.append("\(underlying)") }
            return parts.joined(separator: ": ")
        }
        return "\(error)"
    }

    /// Passes ``SagaCore/SagaError`` and cancellation through; wraps data the server refuses
    /// (SQLSTATE classes 22, 23, 44, 0A, P0) as `storeRefused` and everything else as
    /// `storeUnavailable`, naming the server.
    static func storeError(_ error: any Error, location: String, doing action: String) -> any Error {
        if error is SagaError || error is CancellationError { return error }
        if let transaction = error as? PostgresTransactionError {
            // Report what went wrong inside the transaction (a SagaError stays a SagaError).
            if let inner = transaction.closureError ?? transaction.beginError ?? transaction.commitError {
                return storeError(inner, location: location, doing: action)
            }
        }
        if let state = (error as? PSQLError)?.serverInfo?[.sqlState] {
            if PostgresRecovery.isRefusedDataSQLState(state) {
                // The data (or a constraint, a trigger) refused: running it again changes nothing.
                return SagaError(
                    .storeRefused,
                    "PostgreSQL at \(location) refused to \(action): \(describe(error))",
                    recoverySuggestion:
                        "the server refused the data (SQLSTATE \(state)), which running it again does not change; the message says which value or constraint",
                    underlying: error
                )
            }
            if PostgresRecovery.isStatementSQLState(state) {
                // Privileges, a missing table or function: an operator's fix, after which it works.
                return SagaError(
                    .storeUnavailable,
                    "PostgreSQL at \(location) refused to \(action): \(describe(error))",
                    recoverySuggestion:
                        "the server refused the statement (SQLSTATE \(state)): check that the role may use the schema's tables and functions, and that the schema was migrated by this SagaKit",
                    underlying: error
                )
            }
        }
        return SagaError(
            .storeUnavailable,
            "cannot \(action) in PostgreSQL at \(location): \(describe(error))",
            recoverySuggestion: "check that the server runs and accepts connections",
            underlying: error
        )
    }

    /// Runs a query and collects its rows, once the store runs; see
    /// ``PostgresRecovery/Safety`` for when it is run again after a lost connection.
    func rows(
        _ action: String, _ query: PostgresQuery, safety: PostgresRecovery.Safety = .idempotent
    ) async throws -> [PostgresRandomAccessRow] {
        try await lifecycle.waitUntilRunning()
        return try await batches.rows(action, query, safety: safety)
    }

    /// Runs raw SQL (tests use it to simulate a newer schema).
    /// Logs what ``StatementStallWatch`` reports: a stall as a warning that says what it costs
    /// and what to look at, the end of one as a notice.
    private func stallReporter() -> @Sendable (StatementStallWatch.Event) -> Void {
        let (logger, location, timeout) = (logger, location, batches.statementTimeout)
        return { event in
            switch event {
            case .stalled(let silent, let waiting), .stillStalled(let silent, let waiting):
                let still = if case .stillStalled = event { "still " } else { "" }
                logger.warning(
                    "the PostgreSQL store at \(location) has \(still)had no answer to a statement for \(silent.readable) (\(waiting) waiting): is the server paused, overloaded or unreachable, or does a session hold a lock on SagaKit's tables? Sagas wait meanwhile, nothing is lost; each statement gives up after \(timeout.readable) and runs again",
                    metadata: ["store.waitingStatements": "\(waiting)"])
            case .finishingAgain(let silent):
                logger.notice(
                    "the PostgreSQL store at \(location) answers again, after \(silent.readable) without an answer")
            }
        }
    }

    func executeForTesting(_ sql: String) async throws {
        try await lifecycle.waitUntilRunning()
        _ = try await batches.rows("execute", PostgresQuery(unsafeSQL: sql), safety: .onlyIfNotSent)
    }
}
