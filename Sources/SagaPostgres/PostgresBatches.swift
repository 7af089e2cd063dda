import Foundation
import Logging
import PostgresNIO
import SagaCore
import Synchronization

/// The statements behind the store's hot path, each run for a whole batch of sagas in one
/// statement: one round trip, one plan, one durable commit for many transitions.
///
/// Every saga in a batch is still judged on its own: a commit's compare-and-swap on the version
/// succeeds or fails per saga, and only the sagas whose update succeeded get their outbox rows.
/// A batch never holds one saga twice (``SagaCore/WriteCoalescer`` sees to that).
struct PostgresBatches: Sendable {
    /// The client statements run through, replaced when wedged.
    let pool: PostgresPool
    let namespace: String
    let location: String
    let logger: Logger
    /// See ``PostgresSagaStore/Configuration/statementTimeout``.
    let statementTimeout: Duration
    /// Keeps the attempts' deadlines while the store runs.
    let watch = AttemptWatch()
    /// The connections the store keeps leased between statements (none for a caller's client).
    var held = PostgresHeldConnections(count: 0)
    /// The executor of the event loop of the store's own connections, where its batches run
    /// too; set, an attempt's statements run on their connection's event loop (see
    /// ``EventLoopTaskExecutor``). Only for the store's own client, whose event loop is one of
    /// NIO's singleton group; `nil` for a caller's client.
    var storeExecutor: EventLoopTaskExecutor?

    /// Marks a missing deadline in the `int8[]` of deadlines (arrays cannot hold `nil` here).
    static let noDeadline = Int64.min

    // MARK: Commit

    func commit(_ sagas: [EncodedSaga]) async -> [Result<SagaState, any Error>] {
        do {
            let attempted = try await retryingDeadlocks("commit transitions") {
                try await write(sagas, with: .commit, doing: "commit transitions")
            }
            return await results(of: sagas, committed: attempted.value, mayHaveRunBefore: attempted.mayHaveRunBefore)
        } catch {
            return Array(repeating: .failure(error), count: sagas.count)
        }
    }

    /// Each saga's result once its batch ran: a saga in `committed` was written; another one
    /// lost its compare-and-swap, unless an attempt whose reply was lost with its connection
    /// (`mayHaveRunBefore`) committed it — then the saga now holds exactly what the batch wrote.
    /// The lost ones are looked up in one statement, for `versionConflict` or `unknownSaga`;
    /// when that lookup fails, they fail with its error and the committed ones still succeed.
    private func results(
        of sagas: [EncodedSaga], committed: Set<String>, mayHaveRunBefore: Bool
    ) async -> [Result<SagaState, any Error>] {
        var committed = committed
        let lost = sagas.map(\.state.id).filter { !committed.contains($0) }
        var versions: [String: Int64] = [:]
        var lookupError: (any Error)?
        do {
            if !lost.isEmpty, mayHaveRunBefore {
                // An attempt whose reply was lost with its connection may have committed: a saga
                // that now holds exactly what this batch wrote was written by it.
                let stored = try await fetch(lost)
                for saga in sagas where stored[saga.state.id].map({ PostgresRecovery.isOwnWrite(stored: $0, written: saga) }) == true {
                    committed.insert(saga.state.id)
                }
                for (id, state) in stored where !committed.contains(id) { versions[id] = state.version }
            } else if !lost.isEmpty {
                for row in try await rows(
                    "load versions", "SELECT id, version FROM \(unescaped: namespace).sagas WHERE id = ANY(\(lost)::text[])")
                {
                    versions[try row["id"].decode(String.self)] = try row["version"].decode(Int64.self)
                }
            }
        } catch {
            lookupError = error
        }
        return sagas.map { saga in
            let id = saga.state.id
            if committed.contains(id) { return .success(saga.state) }
            if let lookupError { return .failure(lookupError) }
            guard let actual = versions[id] else { return .failure(SagaError.unknownSaga(id)) }
            return .failure(SagaError.versionConflict(sagaID: id, expected: saga.expected, actual: actual))
        }
    }

    // MARK: Commit with local writes

    /// A transition and its local writes, for ``commit(withLocalWrites:)``.
    struct LocalCommit: Sendable {
        let saga: EncodedSaga
        let writes: [LocalWrite]
    }

    /// Commits many transitions with local writes in **one** statement and transaction (one round
    /// trip, one durable commit, see ``batchStatement(on:_:_:logger:)``): per saga its
    /// compare-and-swap and outbox rows, then its local writes (none after a lost
    /// compare-and-swap, which changed nothing). When a write fails, the batch runs again with
    /// each saga in a savepoint of its own, so that the failing saga alone is rolled back
    /// (`ROLLBACK TO SAVEPOINT`) and the others commit together (see
    /// ``batchTransactionWithSavepoints(on:_:_:logger:)``). Deadlocks and connection failures run
    /// the whole batch again (idempotent: a saga whose first run committed finds its new version,
    /// writes nothing, and is recognised as its own write).
    func commit(withLocalWrites items: [LocalCommit]) async -> [Result<SagaState, any Error>] {
        let action = "commit transitions with local writes"
        let batchQuery = items.count == 1 ? commitOneQuery(items[0].saga, writes: items[0].writes) : commitWithWritesQuery(items)
        let logger = logger
        do {
            let attempted = try await retryingDeadlocks(action) {
                try await run(action, safety: .idempotent) { connection in
                    do {
                        return try await Self.batchStatement(on: connection, items, batchQuery, logger: logger)
                    } catch is LocalWriteFailedWithoutSavepoint {
                        let queries = items.map { writeQuery([$0.saga], with: .commit) }
                        return try await Self.batchTransactionWithSavepoints(
                            on: connection, items, queries, schemaHint: localWriteSchemaHint, logger: logger)
                    }
                }
            }
            // Failed writes were rolled back and are failures; the others committed or lost
            // their compare-and-swap, which is resolved for all of them at once.
            var written: [EncodedSaga] = []
            var committed: Set<String> = []
            for (item, outcome) in zip(items, attempted.value) {
                switch outcome {
                case .committed:
                    written.append(item.saga)
                    committed.insert(item.saga.state.id)
                case .lost: written.append(item.saga)
                case .writeFailed: break
                }
            }
            var resolved = await results(of: written, committed: committed, mayHaveRunBefore: attempted.mayHaveRunBefore)[...]
            return attempted.value.map { outcome in
                if case .writeFailed(let error) = outcome { return .failure(error) }
                return resolved.removeFirst()
            }
        } catch {
            return Array(repeating: .failure(error), count: items.count)
        }
    }

    /// The first try of a batch: **one statement**, `sagakit_commit_with_writes`, which runs
    /// every saga's compare-and-swap and outbox rows and then, in the same transaction, the local
    /// writes of the sagas whose compare-and-swap held (a lost one changed nothing, and its writes
    /// are skipped): one round trip and one durable commit for the whole batch, where `BEGIN`,
    /// the commit statement, one statement per write and `COMMIT` took one round trip each. A
    /// failing write (or one whose row count its expectation refuses) rolls the statement back
    /// and throws ``LocalWriteFailedWithoutSavepoint``: the caller runs the batch again with
    /// ``batchTransactionWithSavepoints(on:_:_:logger:)``, so that only the failing saga is
    /// rolled back, with the write's own error. Deadlocks and connection failures are thrown:
    /// the caller runs the batch again.
    private static func batchStatement(
        on connection: PostgresConnection, _ items: [LocalCommit], _ query: PostgresQuery, logger: Logger
    ) async throws -> [LocalCommitOutcome] {
        var swapped: Set<String> = []
        do {
            for row in try await PostgresStatement.run(query, on: connection, logger: logger).rows {
                swapped.insert(try row.decode(String.self))
            }
        } catch let error as PSQLError {
            guard let state = error.serverInfo?[.sqlState], PostgresRecovery.isStatementSQLState(state) else { throw error }
            throw LocalWriteFailedWithoutSavepoint()
        }
        return items.map { swapped.contains($0.saga.state.id) ? .committed : .lost }
    }

    /// The call of `sagakit_commit_with_writes` for a batch: the sagas and their outbox messages
    /// as for `sagakit_commit`, then the local writes in order as parallel arrays (the saga each
    /// belongs to, its statement with `$n` written `(($1)[n])::type`, its parameters as text, where
    /// they start and how many, its expected row count).
    func commitWithWritesQuery(_ items: [LocalCommit]) -> PostgresQuery {
        var binder = Binder()
        let sagas = items.map(\.saga)
        let writes = LocalWriteArrays(items.map { ($0.saga.state.id, $0.writes) })
        let arguments = [
            SagaColumns(sagas).bind(&binder), OutboxRows(sagas.flatMap(\.outbox)).bind(&binder),
            binder.bind(writes.sagaIDs, as: "text[]"), writes.bind(&binder),
        ]
        return PostgresQuery(
            unsafeSQL: "SELECT id FROM \(namespace).sagakit_commit_with_writes(\(arguments.joined(separator: ", "))) AS id",
            binds: binder.binds)
    }

    /// The call of `sagakit_commit_one` for a batch of one saga: its columns as plain
    /// parameters, its outbox messages and local writes as for `sagakit_commit_with_writes`. Its
    /// one row is the saga's id when the compare-and-swap held.
    func commitOneQuery(_ saga: EncodedSaga, writes: [LocalWrite]) -> PostgresQuery {
        var binder = Binder()
        let arguments = [
            SagaScalars(saga).bind(&binder), OutboxRows(saga.outbox).bind(&binder),
            LocalWriteArrays([(saga.state.id, writes)]).bind(&binder),
        ]
        return PostgresQuery(
            unsafeSQL: "SELECT id FROM \(namespace).sagakit_commit_one(\(arguments.joined(separator: ", "))) AS id WHERE id IS NOT NULL",
            binds: binder.binds)
    }

    /// The batch again after a local write failed: `BEGIN`; per saga `SAVEPOINT`, its commit
    /// statement, its writes, `RELEASE` (or `ROLLBACK TO SAVEPOINT` when its compare-and-swap is
    /// lost or a write fails); `COMMIT`. The failing saga alone is rolled back; the others commit
    /// together. Deadlocks and connection failures are thrown (after `ROLLBACK`): the caller runs
    /// the batch again.
    private static func batchTransactionWithSavepoints(
        on connection: PostgresConnection, _ items: [LocalCommit], _ queries: [PostgresQuery], schemaHint localWriteSchemaHint: String?,
        logger: Logger
    ) async throws -> [LocalCommitOutcome] {
        try await execute("BEGIN", on: connection, logger: logger)
        var outcomes: [LocalCommitOutcome] = []
        do {
            for (item, query) in zip(items, queries) {
                try await execute("SAVEPOINT sagakit_saga", on: connection, logger: logger)
                let swapped = try await PostgresStatement.run(query, on: connection, logger: logger).rows.isEmpty == false
                guard swapped else {
                    try await execute("ROLLBACK TO SAVEPOINT sagakit_saga", on: connection, logger: logger)
                    try await execute("RELEASE SAVEPOINT sagakit_saga", on: connection, logger: logger)
                    outcomes.append(.lost)
                    continue
                }
                var failure: SagaError?
                for (index, write) in item.writes.enumerated() {
                    do {
                        let result = try await PostgresStatement.run(
                            PostgresQuery(unsafeSQL: write.sql, binds: write.postgresBindings), on: connection, logger: logger)
                        try write.check(affectedRows: result.metadata.rows, index: index, of: item.writes.count)
                    } catch let error as SagaError {
                        failure = error
                    } catch let error as PSQLError {
                        guard let state = error.serverInfo?[.sqlState], PostgresRecovery.isStatementSQLState(state) else { throw error }
                        let message = error.serverInfo?[.message] ?? "SQLSTATE \(state)"
                        if PostgresRecovery.isRefusedDataSQLState(state) {
                            failure = LocalWrite.failure(
                                index: index, of: item.writes.count, sql: write.sql, "failed: \(message) (SQLSTATE \(state))",
                                underlying: error)
                        } else {
                            // Class 42: a missing table or column, a privilege, the SQL. Not the step's failure.
                            failure = LocalWrite.statementRefused(
                                index: index, of: item.writes.count, sql: write.sql, "failed: \(message) (SQLSTATE \(state))",
                                schemaHint: localWriteSchemaHint, underlying: error)
                        }
                    }
                    if failure != nil { break }
                }
                if let failure {
                    try await execute("ROLLBACK TO SAVEPOINT sagakit_saga", on: connection, logger: logger)
                    try await execute("RELEASE SAVEPOINT sagakit_saga", on: connection, logger: logger)
                    outcomes.append(.writeFailed(failure))
                } else {
                    try await execute("RELEASE SAVEPOINT sagakit_saga", on: connection, logger: logger)
                    outcomes.append(.committed)
                }
            }
            try await execute("COMMIT", on: connection, logger: logger)
            return outcomes
        } catch {
            // After a failed COMMIT the server has rolled back already; ROLLBACK is harmless.
            try? await execute("ROLLBACK", on: connection, logger: logger)
            throw error
        }
    }

    /// Where a local write's unqualified table names are looked up, when the store's own tables
    /// are elsewhere (a `schema` other than `public`).
    var localWriteSchemaHint: String? {
        guard namespace != "\"public\"" else { return nil }
        let schema = namespace.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        return
            "local writes run with the connection's search_path (the database user's, usually public), not in the store's schema \(schema): qualify a table that lives there (\(schema).table)"
    }

    /// A local write failed in a batch run without savepoints: the batch was rolled back and is
    /// to be run again with them.
    private struct LocalWriteFailedWithoutSavepoint: Error {}

    /// What one saga of a batch transaction ended with.
    enum LocalCommitOutcome: Sendable {
        case committed
        /// The compare-and-swap found another version (or no saga): rolled back.
        case lost
        /// A local write failed: rolled back.
        case writeFailed(SagaError)
    }

    private static func execute(_ sql: String, on connection: PostgresConnection, logger: Logger) async throws {
        _ = try await PostgresStatement.run(PostgresQuery(unsafeSQL: sql), on: connection, logger: logger)
    }

    // MARK: Create

    func create(_ sagas: [EncodedSaga]) async -> [Result<SagaCreation, any Error>] {
        do {
            let attempted = try await write(sagas, with: .create, doing: "create sagas")
            let created = attempted.value
            let existingIDs = sagas.map(\.state.id).filter { !created.contains($0) }
            let existing = existingIDs.isEmpty ? [:] : try await fetch(existingIDs)
            return sagas.map { saga in
                let state = saga.state
                if created.contains(state.id) { return .success(.created(state)) }
                // Deleted between the two statements (by an operator): report it as unknown.
                guard let found = existing[state.id] else { return .failure(SagaError.unknownSaga(state.id)) }
                // An attempt whose reply was lost with its connection created it: this call did.
                if attempted.mayHaveRunBefore, PostgresRecovery.isOwnWrite(stored: found, written: saga) {
                    return .success(.created(state))
                }
                return .success(.existing(found))
            }
        } catch {
            return Array(repeating: .failure(error), count: sagas.count)
        }
    }

    // MARK: Load

    /// The rows of the sagas, undecoded: each caller decodes its own, in its own task.
    func load(_ ids: [SagaID]) async -> [Result<PostgresRandomAccessRow, any Error>] {
        do {
            let result = try await rows(
                "load sagas",
                "SELECT * FROM \(unescaped: namespace).sagakit_load(\(ids)::text[])"
            )
            var found: [SagaID: PostgresRandomAccessRow] = [:]
            for row in result { found[try row["id"].decode(String.self)] = row }
            return ids.map { id in found[id].map { .success($0) } ?? .failure(SagaError.unknownSaga(id)) }
        } catch {
            return Array(repeating: .failure(error), count: ids.count)
        }
    }

    func fetch(_ ids: [SagaID]) async throws -> [SagaID: SagaState] {
        let result = try await rows(
            "load sagas",
            "SELECT * FROM \(unescaped: namespace).sagakit_load(\(ids)::text[])"
        )
        var states: [SagaID: SagaState] = [:]
        for row in result {
            let state = try SagaRow.state(from: row)
            states[state.id] = state
        }
        return states
    }

    // MARK: Mark sent

    /// Deletes the messages: a sent message is of no further use, and a `DELETE` costs the
    /// database far less than an `UPDATE` that moves the row out of the pending index.
    func markSent(_ batch: [[String]]) async -> [Result<Void, any Error>] {
        let ids = batch.flatMap { $0 }
        do {
            _ = try await rows(
                "mark outbox messages sent",
                "SELECT \(unescaped: namespace).sagakit_mark_sent(\(ids)::text[])"
            )
            return Array(repeating: .success(()), count: batch.count)
        } catch {
            return Array(repeating: .failure(error), count: batch.count)
        }
    }

    // MARK: Helpers

    /// Calls one of the write functions (`sagakit_commit`, `sagakit_create`) with the sagas and
    /// their outbox messages; returns the ids of the sagas it wrote.
    private func write(_ sagas: [EncodedSaga], with function: WriteFunction, doing action: String) async throws -> Attempted<Set<SagaID>> {
        var written: Set<SagaID> = []
        let attempted = try await rowsAttempted(action, writeQuery(sagas, with: function))
        for row in attempted.value { written.insert(try row["id"].decode(String.self)) }
        return Attempted(value: written, mayHaveRunBefore: attempted.mayHaveRunBefore)
    }

    /// The write functions: a batch of several sagas goes to the array function, one saga to its
    /// one-saga form, which costs the server less.
    private enum WriteFunction: String {
        /// Transitions without local writes: `sagakit_commit`; one saga, `sagakit_commit_one`.
        case commit = "sagakit_commit"
        /// Creations: `sagakit_create`; one saga, `sagakit_create_one`.
        case create = "sagakit_create"
    }

    /// The call of a write function with the sagas and their outbox messages.
    private func writeQuery(_ sagas: [EncodedSaga], with function: WriteFunction) -> PostgresQuery {
        var binder = Binder()
        switch (function, sagas.count) {
        case (.commit, 1):
            return commitOneQuery(sagas[0], writes: [])
        case (.create, 1):
            let arguments = [SagaScalars(sagas[0]).bind(&binder), OutboxRows(sagas[0].outbox).bind(&binder)]
            return PostgresQuery(
                unsafeSQL:
                    "SELECT id FROM \(namespace).sagakit_create_one(\(arguments.joined(separator: ", "))) AS id WHERE id IS NOT NULL",
                binds: binder.binds)
        default:
            let arguments = [SagaColumns(sagas).bind(&binder), OutboxRows(sagas.flatMap(\.outbox)).bind(&binder)]
            return PostgresQuery(
                unsafeSQL: "SELECT id FROM \(namespace).\(function.rawValue)(\(arguments.joined(separator: ", "))) AS id",
                binds: binder.binds)
        }
    }

    /// Runs a statement again when PostgreSQL chose it as a deadlock victim: two processes'
    /// batches can touch the same sagas (a redelivered command racing its original) in different
    /// orders.
    private func retryingDeadlocks<T>(_ action: String, _ body: () async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await body()
            } catch let error as SagaError where attempt < 3 && Self.isDeadlock(error.underlying) {
                attempt += 1
                logger.debug("deadlock while trying to \(action); running the batch again", metadata: ["attempt": "\(attempt)"])
            }
        }
    }

    private static func isDeadlock(_ error: (any Error)?) -> Bool {
        (error as? PSQLError)?.serverInfo?[.sqlState] == "40P01"
    }

    /// Runs a query and collects its rows, giving up after ``statementTimeout`` (see
    /// ``run(_:safety:_:)`` for the attempts on fresh connections).
    func rows(
        _ action: String, _ query: PostgresQuery, safety: PostgresRecovery.Safety = .idempotent
    ) async throws -> [PostgresRandomAccessRow] {
        try await rowsAttempted(action, query, safety: safety).value
    }

    /// ``rows(_:_:safety:)``, saying whether an earlier attempt may have been applied.
    func rowsAttempted(
        _ action: String, _ query: PostgresQuery, safety: PostgresRecovery.Safety = .idempotent
    ) async throws -> Attempted<[PostgresRandomAccessRow]> {
        let logger = logger
        return try await run(action, safety: safety) { connection in
            try await PostgresStatement.rows(query, on: connection, logger: logger)
        }
    }

    /// Runs `operation` on a connection of the pool within ``statementTimeout``; after a
    /// connection-level failure (the server restarted, the connection was reset, the pool gave
    /// no connection in time, its circuit breaker tripped) runs it again on a fresh connection,
    /// as long as ``PostgresRecovery/decide(_:safety:attempt:remaining:closing:)`` allows: an
    /// `.idempotent` statement whatever happened, an `.onlyIfNotSent` one only when no attempt
    /// reached the server.
    ///
    /// - Throws: `storeUnavailable` naming the action when it gives up (saying the statement did
    ///   not answer in time when the timeout ended it); the statement's own error otherwise.
    func run<T: Sendable>(
        _ action: String, safety: PostgresRecovery.Safety,
        _ operation: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> Attempted<T> {
        let clock = ContinuousClock()
        let deadline = clock.now + statementTimeout
        var attempt = 0
        var sent = false
        while true {
            attempt += 1
            let remaining = clock.now.duration(to: deadline)
            let timeout = PostgresRecovery.attemptTimeout(
                statementTimeout: statementTimeout, remaining: remaining, safety: safety)
            do {
                let value = try await Self.withStatementTimeout(
                    timeout, pool: pool, watch: watch, storeExecutor: storeExecutor, held: held, operation)
                if attempt > 1 {
                    logger.info(
                        "PostgreSQL statement succeeded after \(attempt) attempts",
                        metadata: ["store.action": "\(action)", "store.location": "\(location)"])
                }
                return Attempted(value: value, mayHaveRunBefore: sent)
            } catch let failed as AttemptFailure {
                if failed.error is CancellationError { throw failed.error }
                let failure = PostgresRecovery.classify(failed.error, leased: failed.leased)
                if case .connection(sent: true) = failure { sent = true }
                if PostgresRecovery.connectionPoolErrorCase(failed.error) == "connectionCreationCircuitBreakerTripped" {
                    // The pool fails requests at once now: let the pool see whether to replace it.
                    pool.suspect(failed.generation)
                }
                let decision = PostgresRecovery.decide(
                    failure, safety: safety, attempt: attempt, remaining: clock.now.duration(to: deadline),
                    closing: pool.closing)
                guard case .retry(let pause) = decision else {
                    throw giveUp(action, failed.error)
                }
                logger.debug(
                    "PostgreSQL connection failure; running the statement again on a fresh connection",
                    metadata: [
                        "store.action": "\(action)", "store.attempt": "\(attempt)",
                        "error": "\(PostgresSagaStore.describe(failed.error))",
                    ])
                try await Task.sleep(for: pause)
            }
        }
    }

    /// The error reported when the store gives up on a statement.
    private func giveUp(_ action: String, _ error: any Error) -> any Error {
        guard error is StatementTimedOut || error is ConnectionWaitTimedOut else {
            return PostgresSagaStore.storeError(error, location: location, doing: action)
        }
        return SagaError(
            .storeUnavailable,
            "PostgreSQL at \(location) did not answer within \(statementTimeout) while trying to \(action)",
            recoverySuggestion:
                "check that the server runs and accepts connections; the statement may have been applied, and retrying is safe (the saga's version decides)"
        )
    }

    /// Leases a connection and runs `operation` on it within `timeout`: when the deadline passes
    /// first, fails with ``StatementTimedOut`` (or ``ConnectionWaitTimedOut`` when no connection
    /// was leased yet). Every failure comes as an ``AttemptFailure`` saying whether a connection
    /// was held.
    ///
    /// The deadline covers the whole attempt: waiting for a connection, the statements and their
    /// rows. The operation runs in a child task; when the deadline passes, the operation is
    /// cancelled and its connection closed; waiting for a connection ends on cancellation, and so
    /// does a statement run through ``PostgresStatement`` (postgres-nio's own `query` does not,
    /// and can wait for ever on a connection the server closed: operations must use
    /// ``PostgresStatement``). The attempt therefore always ends within about the timeout,
    /// without leaving a task behind.
    ///
    /// With `storeExecutor`, the operation runs on the connection's event loop
    /// (``EventLoopTaskExecutor``; the store's own when the connection is on it).
    ///
    /// The deadline is kept by the store's ``AttemptWatch`` while it runs (one task for every
    /// attempt, which also tells the pool about long waits for a connection, see
    /// ``PostgresPool/waiting(_:for:)``); otherwise by a timer of the attempt's own.
    static func withStatementTimeout<T: Sendable>(
        _ timeout: Duration, pool: PostgresPool, watch: AttemptWatch, storeExecutor: EventLoopTaskExecutor? = nil,
        held: PostgresHeldConnections, _ operation: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let leased = LeasedConnection()
        let current = pool.current
        @Sendable func run(on connection: PostgresConnection) async throws -> T {
            leased.set(connection)
            pool.leased(current.generation, connection)
            defer {
                pool.released(current.generation, connection)
                leased.set(nil)
            }
            if let storeExecutor {
                let loop = connection.eventLoop
                let executor = storeExecutor.eventLoop === loop ? storeExecutor : EventLoopTaskExecutor(loop)
                return try await withTaskExecutorPreference(executor) {
                    try await operation(connection)
                }
            }
            return try await operation(connection)
        }
        @Sendable func attempt() async throws -> T {
            do {
                // A connection the store holds, when one is idle (see PostgresHeldConnections):
                // kept after a success, given up after any failure.
                if let taken = held.take(generation: current.generation) {
                    var healthy = false
                    defer { held.giveBack(taken, healthy: healthy) }
                    let value = try await run(on: taken.connection)
                    healthy = true
                    return value
                }
                return try await current.client.withConnection { connection in try await run(on: connection) }
            } catch {
                throw AttemptFailure(error: error, leased: leased.everLeased, generation: current.generation)
            }
        }
        func timedOut() -> AttemptFailure {
            let wasLeased = leased.everLeased
            leased.close()
            return AttemptFailure(
                error: wasLeased ? StatementTimedOut() : ConnectionWaitTimedOut(), leased: wasLeased,
                generation: current.generation)
        }
        let outcome = OneShot<AttemptResolution<T>>()
        if let id = watch.watch(
            deadline: .now + timeout, generation: current.generation, leased: leased, expire: { outcome.set(.timedOut) })
        {
            defer { watch.unwatch(id) }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                // Cancelling the caller cancels this child, which then settles the outcome.
                group.addTask {
                    let result: Result<T, any Error>
                    do { result = .success(try await attempt()) } catch { result = .failure(error) }
                    outcome.set(.finished(result))
                }
                defer { group.cancelAll() }
                switch await outcome.value() {
                case .finished(.success(let value)):
                    return value
                case .finished(.failure(let failure)):
                    try Task.checkCancellation()
                    throw failure
                case .timedOut:
                    let failure = timedOut()
                    try Task.checkCancellation()
                    throw failure
                }
            }
        }
        return try await withThrowingTaskGroup(of: TimedOutcome<T>.self) { group in
            group.addTask { .finished(try await attempt()) }
            group.addTask {
                // Ends early when cancelled: the operation finished first, or the caller was
                // cancelled.
                let clock = ContinuousClock()
                let start = clock.now
                let deadline = start + timeout
                while clock.now < deadline {
                    let step = min(clock.now.duration(to: deadline), .milliseconds(500))
                    do { try await Task.sleep(for: step) } catch { return .timedOut }
                    if !leased.everLeased { pool.waiting(current.generation, for: start.duration(to: clock.now)) }
                }
                return .timedOut
            }
            defer { group.cancelAll() }
            let outcome: TimedOutcome<T>?
            do {
                outcome = try await group.next()
            } catch let failure as AttemptFailure {
                try Task.checkCancellation()
                throw failure
            }
            guard case .finished(let value) = outcome else {
                let failure = timedOut()
                try Task.checkCancellation()
                throw failure
            }
            return value
        }
    }
}

/// What one attempt at a statement ended with, and whether it held a connection (then the
/// statement may have reached the server).
struct AttemptFailure: Error {
    let error: any Error
    let leased: Bool
    /// The generation of the pool it ran on (see ``PostgresPool``).
    let generation: Int
}

/// A statement's result, and whether an earlier attempt at it may have been applied (its reply
/// was lost with its connection).
struct Attempted<T: Sendable>: Sendable {
    let value: T
    let mayHaveRunBefore: Bool
}

/// The result of the race in ``PostgresBatches/withStatementTimeout(_:pool:_:)``.
enum TimedOutcome<T: Sendable>: Sendable {
    case finished(T)
    case timedOut
}

/// The connection a timed statement runs on, so that the timer can close it.
final class LeasedConnection: Sendable {
    private let connection = Mutex<PostgresConnection?>(nil)
    private let leasedOnce = Mutex(false)

    func set(_ value: PostgresConnection?) {
        if value != nil { leasedOnce.withLock { $0 = true } }
        connection.withLock { $0 = value }
    }

    /// Whether the statement got a connection (and so may have been sent).
    var everLeased: Bool { leasedOnce.withLock { $0 } }

    /// Closes the connection (in the background: closing fails the statements running on it).
    func close() {
        guard let leased = connection.withLock({ $0 }) else { return }
        let closing: EventLoopFuture<Void> = leased.close()
        closing.whenComplete { _ in }
    }
}

/// Sagas as parallel arrays, one per column, for `unnest`.
struct SagaColumns {
    var ids: [String] = []
    var expected: [Int64] = []
    var names: [String] = []
    var statuses: [String] = []
    var steps: [Int64] = []
    var attempts: [Int64] = []
    var payloads: [String] = []
    var contexts: [String] = []
    var histories: [String] = []
    var failureReasons: [String] = []
    var hasFailure: [Bool] = []
    var deadlines: [Int64] = []
    var reapAttempts: [Int64] = []
    var createdAt: [Int64] = []
    var updatedAt: [Int64] = []

    init(_ sagas: [EncodedSaga]) {
        for saga in sagas {
            let row = saga.row
            ids.append(row.id)
            expected.append(saga.expected)
            names.append(row.name)
            statuses.append(row.status)
            steps.append(Int64(row.currentStep))
            attempts.append(Int64(row.attempt))
            payloads.append(row.payload)
            contexts.append(row.context)
            histories.append(row.history)
            failureReasons.append(row.failureReason ?? "")
            hasFailure.append(row.failureReason != nil)
            deadlines.append(row.deadline ?? PostgresBatches.noDeadline)
            reapAttempts.append(Int64(row.reapAttempts))
            createdAt.append(row.createdAt)
            updatedAt.append(row.updatedAt)
        }
    }

    /// Binds every column, in the order of the functions' saga parameters; returns the
    /// placeholders.
    func bind(_ binder: inout Binder) -> String {
        let columns = [
            binder.bind(ids, as: "text[]"), binder.bind(expected, as: "int8[]"), binder.bind(names, as: "text[]"),
            binder.bind(statuses, as: "text[]"), binder.bind(steps, as: "int8[]"), binder.bind(attempts, as: "int8[]"),
            binder.bind(payloads, as: "text[]"), binder.bind(contexts, as: "text[]"), binder.bind(histories, as: "text[]"),
            binder.bind(failureReasons, as: "text[]"), binder.bind(hasFailure, as: "bool[]"),
            binder.bind(deadlines, as: "int8[]"), binder.bind(reapAttempts, as: "int8[]"),
            binder.bind(createdAt, as: "int8[]"), binder.bind(updatedAt, as: "int8[]"),
        ]
        return columns.joined(separator: ", ")
    }
}

/// Local writes as the parallel arrays the commit functions take: the saga each belongs to, its
/// statement with `$n` written `(($1)[n])::type`, its parameters as text, where they start and
/// how many, its expected row count.
struct LocalWriteArrays {
    var sagaIDs: [String] = []
    var statements: [String] = []
    var values: [String] = []
    var firsts: [Int32] = []
    var counts: [Int32] = []
    var expected: [Int64] = []

    init(_ sagas: [(id: String, writes: [LocalWrite])]) {
        for saga in sagas {
            for write in saga.writes {
                sagaIDs.append(saga.id)
                statements.append(write.postgresFunctionSQL)
                firsts.append(Int32(values.count + 1))
                counts.append(Int32(write.parameters.count))
                values.append(contentsOf: write.parameters.map(\.postgresText))
                expected.append(write.expectation.postgresCode)
            }
        }
    }

    /// Binds the statements, values, starts, counts and expectations (not the saga ids, which
    /// only the batch function takes); returns the placeholders.
    func bind(_ binder: inout Binder) -> String {
        [
            binder.bind(statements, as: "text[]"), binder.bind(values, as: "text[]"), binder.bind(firsts, as: "int4[]"),
            binder.bind(counts, as: "int4[]"), binder.bind(expected, as: "int8[]"),
        ].joined(separator: ", ")
    }
}

/// One saga's columns as plain parameters, in the order of the one-saga functions' parameters
/// (`sagakit_commit_one`, `sagakit_create_one`).
struct SagaScalars {
    let saga: EncodedSaga

    init(_ saga: EncodedSaga) {
        self.saga = saga
    }

    /// Binds every column; returns the placeholders.
    func bind(_ binder: inout Binder) -> String {
        let row = saga.row
        let columns = [
            binder.bind(row.id, as: "text"), binder.bind(saga.expected, as: "int8"), binder.bind(row.name, as: "text"),
            binder.bind(row.status, as: "text"), binder.bind(Int64(row.currentStep), as: "int8"),
            binder.bind(Int64(row.attempt), as: "int8"), binder.bind(row.payload, as: "text"),
            binder.bind(row.context, as: "text"), binder.bind(row.history, as: "text"),
            binder.bind(row.failureReason ?? "", as: "text"), binder.bind(row.failureReason != nil, as: "bool"),
            binder.bind(row.deadline ?? PostgresBatches.noDeadline, as: "int8"), binder.bind(Int64(row.reapAttempts), as: "int8"),
            binder.bind(row.createdAt, as: "int8"), binder.bind(row.updatedAt, as: "int8"),
        ]
        return columns.joined(separator: ", ")
    }
}

/// A statement that did not finish within the store's statement timeout.
struct StatementTimedOut: Error {}

/// Collects bind values for a statement whose text is built around numbered placeholders.
struct Binder {
    private(set) var binds = PostgresBindings()

    /// Binds `value` and returns its placeholder with a cast, such as `$3::text[]`.
    mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value, as type: String) -> String {
        binds.append(value)
        return "$\(binds.count)::\(type)"
    }
}

/// A saga to write with its outbox messages, as PostgreSQL column values.
typealias EncodedSaga = EncodedWrite<SagaRow, EncodedOutboxMessage>

extension EncodedWrite<SagaRow, EncodedOutboxMessage> {
    init(_ state: SagaState, expected: Int64, outbox: [OutboxMessage]) throws {
        try self.init(state, expected: expected, outbox: outbox, row: SagaRow.init, message: EncodedOutboxMessage.init)
    }
}

extension LocalWrite {
    /// The parameters as PostgreSQL binds them: `int8`, `float8`, `text`, `bool`, an untyped
    /// `NULL` (the server infers its type), `bytea`.
    /// The statement as `sagakit_commit_with_writes` runs it with `EXECUTE … USING` the
    /// parameters as one `text[]`: each placeholder `$n` becomes `(($1)[n])` cast to the type
    /// ``postgresBindings`` binds it as (`int8`, `float8`, `text`, `bool`, `bytea`), and a `NULL`
    /// parameter an untyped `NULL`, whose type the server infers as it does for an untyped bind.
    var postgresFunctionSQL: String {
        sql(replacingPlaceholders: { number in
            guard number >= 1, number <= parameters.count else { return "NULL" }
            switch parameters[number - 1] {
            case .int: return "(($1)[\(number)])::int8"
            case .double: return "(($1)[\(number)])::float8"
            case .text: return "(($1)[\(number)])::text"
            case .bool: return "(($1)[\(number)])::bool"
            case .bytes: return "(($1)[\(number)])::bytea"
            case .null: return "NULL"
            }
        })
    }

    var postgresBindings: PostgresBindings {
        var binds = PostgresBindings(capacity: parameters.count)
        for parameter in parameters {
            switch parameter {
            case .int(let value): binds.append(value)
            case .double(let value): binds.append(value)
            case .text(let value): binds.append(value)
            case .bool(let value): binds.append(value)
            case .null: binds.appendNull()
            case .bytes(let value): binds.append(ByteBuffer(bytes: value))
            }
        }
        return binds
    }
}

/// An outbox message as column values.
struct EncodedOutboxMessage: Sendable {
    let id: String
    let sagaID: String
    let exchange: String
    let routingKey: String
    let body: ByteBuffer
    let headers: String
    let createdAt: Int64
    let topology: String

    init(_ message: OutboxMessage) throws {
        id = message.id
        sagaID = message.sagaID
        exchange = message.exchange
        routingKey = message.routingKey
        body = ByteBuffer(bytes: message.body)
        headers = try StoreCoding.json(message.headers)
        createdAt = StoreCoding.milliseconds(message.createdAt)
        topology = message.topology
    }
}

/// Runs a task's jobs on a NIO event loop: an attempt's statements on a connection then resume on
/// the connection's own event loop instead of handing each reply to the cooperative pool and each
/// next statement back (two thread hand-overs per statement).
///
/// Only for event loops that are never shut down (NIO's singleton group, which the store's own
/// client uses): a job handed to a loop that has shut down would be dropped, and its task would
/// never resume.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}

extension LocalValue {
    /// The value as PostgreSQL's text input reads it back exactly (a `NULL` is written `NULL` in
    /// the statement instead; see ``LocalWrite/postgresFunctionSQL``).
    var postgresText: String {
        switch self {
        case .int(let value): return String(value)
        case .double(let value):
            if value.isNaN { return "NaN" }
            if value.isInfinite { return value < 0 ? "-Infinity" : "Infinity" }
            // The shortest text that reads back as the same `Double`.
            return "\(value)"
        case .text(let value): return value
        case .bool(let value): return value ? "true" : "false"
        case .null: return ""
        case .bytes(let value): return Hex.text(value, prefix: "\\x")
        }
    }
}

extension LocalWrite.Expectation {
    /// The expectation as `sagakit_commit_with_writes` checks it: `-1` any, `-2` at least one
    /// row, any other value exactly that many rows (a negative count, which no statement meets,
    /// is `Int64.min`).
    var postgresCode: Int64 {
        switch self {
        case .any: -1
        case .atLeastOneRow: -2
        case .rows(let rows): rows >= 0 ? Int64(rows) : .min
        }
    }
}
