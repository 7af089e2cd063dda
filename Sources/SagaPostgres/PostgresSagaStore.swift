import Foundation
public import Logging
public import PostgresNIO
public import SagaCore

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
/// The schema is created or migrated when the store opens, under a transaction-scoped advisory
/// lock, so processes that start together take turns. The version is recorded in
/// `sagakit_schema`; a database written by a newer SagaKit fails with `schemaTooNew`.
///
/// ## Lifecycle
/// The simplest use owns its connection pool:
/// ```swift
/// let store = try await PostgresSagaStore(url: "postgres://user:pass@127.0.0.1:5432/db")
/// // … use it …
/// await store.shutdown()
/// ```
/// Such a store runs its `PostgresClient` in a task it manages, and ``shutdown()`` ends it.
/// When you already run a `PostgresClient` (for example in a swift-service-lifecycle
/// `ServiceGroup`), pass it to ``init(client:schema:location:logger:)`` instead: the store then
/// never starts or stops it.
public final class PostgresSagaStore: SagaStore {
    /// The schema version this SagaKit writes.
    public static let schemaVersion = PostgresSchema.currentVersion

    /// The client the store queries through.
    public let client: PostgresClient
    /// `host:port/database`, as error messages say it.
    public let location: String
    /// The PostgreSQL schema holding the tables.
    public let schema: String

    let logger: Logger
    /// The quoted schema name, to prefix table names with.
    let namespace: String
    /// The hot-path statements, batched by the coalescers below.
    let batches: PostgresBatches
    let commits: WriteCoalescer<EncodedSaga, SagaState>
    let loads: WriteCoalescer<SagaID, PostgresRandomAccessRow>
    let creations: WriteCoalescer<EncodedSaga, SagaCreation>
    let marks: WriteCoalescer<[String], Void>
    /// Runs `client.run()` when the store owns its client. Library code prefers structured
    /// concurrency, but a store that users can create with one line and use at once must run its
    /// pool somewhere: this task is the only one, and ``shutdown()`` (or deinit) ends it.
    private let runner: Task<Void, Never>?

    /// Connects with a URL such as `postgres://user:password@host:5432/database`, creates or
    /// migrates the schema, and starts the connection pool.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for a malformed URL,
    ///   `storeUnavailable` (saying `host:port/database`) when the server cannot be reached or
    ///   refuses the login, `schemaTooNew` when a newer SagaKit created the schema.
    public convenience init(url: String, logger: Logger = Logger(label: "sagakit.store.postgres")) async throws {
        try await self.init(configuration: Configuration(url: url), logger: logger)
    }

    /// Connects, creates or migrates the schema, and starts the connection pool.
    public init(configuration: Configuration, logger: Logger = Logger(label: "sagakit.store.postgres")) async throws {
        let namespace = try Self.quotedSchema(configuration.schema)
        let tls: PostgresConnection.Configuration.TLS
        let clientTLS: PostgresClient.Configuration.TLS
        switch configuration.tls {
        case .disable:
            tls = .disable
            clientTLS = .disable
        case .prefer:
            tls = .prefer(try Self.tlsContext(configuration))
            clientTLS = .prefer(.makeClientConfiguration())
        case .require:
            tls = .require(try Self.tlsContext(configuration))
            clientTLS = .require(.makeClientConfiguration())
        }
        // Connect once on our own to report an unreachable server at once (the pool would retry
        // forever), and to migrate.
        var connectionConfiguration = PostgresConnection.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.username,
            password: configuration.password, database: configuration.database, tls: tls
        )
        connectionConfiguration.options.connectTimeout = .milliseconds(
            StoreCoding.milliseconds(configuration.connectTimeout)
        )
        let location = configuration.location
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: connectionConfiguration, id: 0, logger: logger
            )
        } catch {
            throw SagaError(
                .storeUnavailable,
                "cannot connect to PostgreSQL at \(location): \(Self.describe(error))",
                recoverySuggestion:
                    "check that the server runs and that host, port, user, password and database are right",
                underlying: error
            )
        }
        do {
            try await PostgresSchema.migrate(
                connection, namespace: namespace, schema: configuration.schema,
                location: location, logger: logger)
            try? await connection.close()
        } catch {
            try? await connection.close()
            throw Self.storeError(error, location: location, doing: "migrate")
        }

        var clientConfiguration = PostgresClient.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.username,
            password: configuration.password, database: configuration.database, tls: clientTLS
        )
        clientConfiguration.options.connectTimeout = configuration.connectTimeout
        clientConfiguration.options.maximumConnections = max(1, configuration.maximumConnections)
        let client = PostgresClient(configuration: clientConfiguration, backgroundLogger: logger)
        self.client = client
        self.location = location
        self.schema = configuration.schema
        self.namespace = namespace
        self.logger = logger
        (batches, commits, loads, creations, marks) = Self.batching(
            client: client, namespace: namespace, location: location, logger: logger,
            statementTimeout: configuration.statementTimeout)
        self.runner = Task { await client.run() }
    }

    /// Uses a `PostgresClient` that the caller runs (`client.run()`, or a `ServiceGroup`), and
    /// creates or migrates the schema through it. The store never starts or stops the client.
    ///
    /// - Parameters:
    ///   - schema: the PostgreSQL schema for SagaKit's tables (created when missing).
    ///   - location: how error messages name the server (for example `db.internal:5432/shop`).
    ///   - statementTimeout: see ``Configuration/statementTimeout``.
    public init(
        client: PostgresClient, schema: String = "public", location: String = "PostgreSQL",
        statementTimeout: Duration = .seconds(30), logger: Logger = Logger(label: "sagakit.store.postgres")
    ) async throws {
        let namespace = try Self.quotedSchema(schema)
        self.client = client
        self.location = location
        self.schema = schema
        self.namespace = namespace
        self.logger = logger
        self.runner = nil
        (batches, commits, loads, creations, marks) = Self.batching(
            client: client, namespace: namespace, location: location, logger: logger, statementTimeout: statementTimeout)
        do {
            try await client.withConnection { connection in
                try await PostgresSchema.migrate(
                    connection, namespace: namespace, schema: schema, location: location, logger: logger
                )
            }
        } catch {
            throw Self.storeError(error, location: location, doing: "migrate")
        }
    }

    deinit {
        runner?.cancel()
    }

    /// Closes the connection pool of a store that owns it, and waits until it is closed, or for
    /// the statement timeout at most (a statement the server never answered can keep the pool
    /// from closing). Does nothing for a store created with a client of yours.
    public func shutdown() async {
        guard let runner else { return }
        runner.cancel()
        do {
            try await PostgresBatches.abandoning(after: batches.statementTimeout) { await runner.value }
        } catch {
            logger.warning(
                "the PostgreSQL connection pool did not close within \(batches.statementTimeout); leaving it",
                metadata: ["store.location": "\(location)"])
        }
    }

    // MARK: Helpers

    /// The most sagas in one batched statement.
    static let maxBatch = 64

    /// Batches of concurrent commits, loads, creations and sent marks. One batch of each kind
    /// runs at a time while the next one gathers: measured on the saga benchmark, two at a time
    /// made smaller batches, more statements and lower throughput.
    private static func batching(
        client: PostgresClient, namespace: String, location: String, logger: Logger, statementTimeout: Duration
    ) -> (
        PostgresBatches, WriteCoalescer<EncodedSaga, SagaState>, WriteCoalescer<SagaID, PostgresRandomAccessRow>,
        WriteCoalescer<EncodedSaga, SagaCreation>, WriteCoalescer<[String], Void>
    ) {
        let batches = PostgresBatches(
            client: client, namespace: namespace, location: location, logger: logger, statementTimeout: statementTimeout)
        return (
            batches,
            WriteCoalescer(maxBatch: maxBatch, maxConcurrentBatches: 1) { await batches.commit($0) },
            WriteCoalescer(maxBatch: maxBatch, maxConcurrentBatches: 1) { await batches.load($0) },
            WriteCoalescer(maxBatch: maxBatch, maxConcurrentBatches: 1) { await batches.create($0) },
            WriteCoalescer(maxBatch: maxBatch, maxConcurrentBatches: 1) { await batches.markSent($0) }
        )
    }

    private static func tlsContext(_ configuration: Configuration) throws -> NIOSSLContext {
        do {
            return try NIOSSLContext(configuration: .makeClientConfiguration())
        } catch {
            throw SagaError(.invalidConfiguration, "cannot set up TLS for \(configuration.location): \(error)")
        }
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

    /// Passes ``SagaCore/SagaError`` and cancellation through; wraps everything else as
    /// `storeUnavailable` naming the server.
    static func storeError(_ error: any Error, location: String, doing action: String) -> any Error {
        if error is SagaError || error is CancellationError { return error }
        if let transaction = error as? PostgresTransactionError {
            // Report what went wrong inside the transaction (a SagaError stays a SagaError).
            if let inner = transaction.closureError ?? transaction.beginError ?? transaction.commitError {
                return storeError(inner, location: location, doing: action)
            }
        }
        return SagaError(
            .storeUnavailable,
            "cannot \(action) in PostgreSQL at \(location): \(describe(error))",
            recoverySuggestion: "check that the server runs and accepts connections",
            underlying: error
        )
    }

    /// Runs a query and collects its rows.
    func rows(_ action: String, _ query: PostgresQuery) async throws -> [PostgresRandomAccessRow] {
        try await batches.rows(action, query)
    }

    /// Runs raw SQL (tests use it to simulate a newer schema).
    func executeForTesting(_ sql: String) async throws {
        _ = try await rows("execute", PostgresQuery(unsafeSQL: sql))
    }
}
