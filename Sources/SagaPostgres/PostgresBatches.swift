import Foundation
import Logging
import PostgresNIO
import SagaCore

/// The statements behind the store's hot path, each run for a whole batch of sagas in one
/// statement: one round trip, one plan, one durable commit for many transitions.
///
/// Every saga in a batch is still judged on its own: a commit's compare-and-swap on the version
/// succeeds or fails per saga, and only the sagas whose update succeeded get their outbox rows.
/// A batch never holds one saga twice (``SagaCore/WriteCoalescer`` sees to that).
struct PostgresBatches: Sendable {
    let client: PostgresClient
    let namespace: String
    let location: String
    let logger: Logger

    /// Marks a missing deadline in the `int8[]` of deadlines (arrays cannot hold `nil` here).
    static let noDeadline = Int64.min

    // MARK: Commit

    func commit(_ transitions: [SagaTransition]) async -> [Result<SagaState, any Error>] {
        do {
            var stored: [SagaState] = []
            stored.reserveCapacity(transitions.count)
            for transition in transitions {
                var state = transition.state
                state.version = transition.expectedVersion + 1
                stored.append(state)
            }
            let columns = try SagaColumns(stored, expected: transitions.map(\.expectedVersion))
            let messages = try OutboxRows(transitions.flatMap(\.outbox))
            var binder = Binder()
            let input = columns.unnest(&binder)
            let outbox = messages.unnest(&binder)
            let query = PostgresQuery(
                unsafeSQL: """
                    WITH input AS (
                        SELECT * FROM \(input) AS u(\(SagaColumns.names))
                    ), updated AS (
                        UPDATE \(namespace).sagas AS s SET name = u.name, status = u.status,
                            current_step = u.current_step, attempt = u.attempt, payload = u.payload::json,
                            context = u.context::json, history = u.history::json,
                            failure_reason = CASE WHEN u.has_failure THEN u.failure_reason END,
                            deadline = \(SagaColumns.deadlineExpression),
                            reap_attempts = u.reap_attempts,
                            created_at = timestamptz 'epoch' + u.created_at * interval '1 millisecond',
                            updated_at = timestamptz 'epoch' + u.updated_at * interval '1 millisecond',
                            version = u.expected + 1, lease_owner = NULL, lease_until = NULL
                        FROM input AS u
                        WHERE s.id = u.id AND s.version = u.expected
                        RETURNING s.id
                    ), messages AS (
                        \(insertOutbox(outbox, from: "updated"))
                    )
                    SELECT id FROM updated
                    """,
                binds: binder.binds
            )
            let result = try await retryingDeadlocks("commit transitions") { try await rows("commit transitions", query) }
            var committed: Set<String> = []
            for row in result { committed.insert(try row["id"].decode(String.self)) }
            let lost = stored.map(\.id).filter { !committed.contains($0) }
            var versions: [String: Int64] = [:]
            if !lost.isEmpty {
                for row in try await rows(
                    "load versions", "SELECT id, version FROM \(unescaped: namespace).sagas WHERE id = ANY(\(lost)::text[])")
                {
                    versions[try row["id"].decode(String.self)] = try row["version"].decode(Int64.self)
                }
            }
            return zip(transitions, stored).map { transition, state in
                if committed.contains(state.id) { return .success(state) }
                guard let actual = versions[state.id] else { return .failure(SagaError.unknownSaga(state.id)) }
                return .failure(SagaError.versionConflict(sagaID: state.id, expected: transition.expectedVersion, actual: actual))
            }
        } catch {
            return Array(repeating: .failure(error), count: transitions.count)
        }
    }

    // MARK: Create

    func create(_ creations: [SagaCreationRequest]) async -> [Result<SagaCreation, any Error>] {
        do {
            let states = creations.map { creation -> SagaState in
                var state = creation.state
                state.version = 1
                return state
            }
            let columns = try SagaColumns(states, expected: states.map { _ in 0 })
            let messages = try OutboxRows(creations.flatMap(\.outbox))
            var binder = Binder()
            let input = columns.unnest(&binder)
            let outbox = messages.unnest(&binder)
            let query = PostgresQuery(
                unsafeSQL: """
                    WITH input AS (
                        SELECT * FROM \(input) AS u(\(SagaColumns.names))
                    ), inserted AS (
                        INSERT INTO \(namespace).sagas (\(SagaRow.columns))
                        SELECT u.id, u.name, u.status, u.current_step, u.attempt, u.payload::json, u.context::json,
                            u.history::json, CASE WHEN u.has_failure THEN u.failure_reason END,
                            \(SagaColumns.deadlineExpression), u.reap_attempts,
                            timestamptz 'epoch' + u.created_at * interval '1 millisecond',
                            timestamptz 'epoch' + u.updated_at * interval '1 millisecond', 1
                        FROM input AS u
                        ON CONFLICT (id) DO NOTHING
                        RETURNING id
                    ), messages AS (
                        \(insertOutbox(outbox, from: "inserted"))
                    )
                    SELECT id FROM inserted
                    """,
                binds: binder.binds
            )
            let result = try await rows("create sagas", query)
            var created: Set<String> = []
            for row in result { created.insert(try row["id"].decode(String.self)) }
            let existingIDs = states.map(\.id).filter { !created.contains($0) }
            let existing = existingIDs.isEmpty ? [:] : try await fetch(existingIDs)
            return states.map { state in
                if created.contains(state.id) { return .success(.created(state)) }
                // Deleted between the two statements (by an operator): report it as unknown.
                guard let found = existing[state.id] else { return .failure(SagaError.unknownSaga(state.id)) }
                return .success(.existing(found))
            }
        } catch {
            return Array(repeating: .failure(error), count: creations.count)
        }
    }

    // MARK: Load

    func load(_ ids: [SagaID]) async -> [Result<SagaState, any Error>] {
        do {
            let found = try await fetch(ids)
            return ids.map { id in found[id].map { .success($0) } ?? .failure(SagaError.unknownSaga(id)) }
        } catch {
            return Array(repeating: .failure(error), count: ids.count)
        }
    }

    func fetch(_ ids: [SagaID]) async throws -> [SagaID: SagaState] {
        let result = try await rows(
            "load sagas",
            "SELECT \(unescaped: SagaRow.selection) FROM \(unescaped: namespace).sagas WHERE id = ANY(\(ids)::text[])"
        )
        var states: [SagaID: SagaState] = [:]
        for row in result {
            let state = try SagaRow.state(from: row)
            states[state.id] = state
        }
        return states
    }

    // MARK: Helpers

    /// The outbox `INSERT` of the messages (`unnest`, from ``OutboxRows/unnest(_:)``) whose saga
    /// is in the CTE `source` (its `id` column).
    private func insertOutbox(_ unnest: String, from source: String) -> String {
        """
        INSERT INTO \(namespace).outbox (id, saga_id, exchange, routing_key, body, headers, created_at)
            SELECT m.id, m.saga_id, m.exchange, m.routing_key, m.body, m.headers::json,
                timestamptz 'epoch' + m.created_at * interval '1 millisecond'
            FROM \(unnest) WITH ORDINALITY
                AS m(id, saga_id, exchange, routing_key, body, headers, created_at, n)
            WHERE m.saga_id IN (SELECT id FROM \(source))
            ORDER BY m.n
            ON CONFLICT (id) DO NOTHING
        """
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

    /// Runs a query and collects its rows.
    func rows(_ action: String, _ query: PostgresQuery) async throws -> [PostgresRandomAccessRow] {
        do {
            var result: [PostgresRandomAccessRow] = []
            for try await row in try await client.query(query, logger: logger) {
                result.append(row.makeRandomAccess())
            }
            return result
        } catch {
            throw PostgresSagaStore.storeError(error, location: location, doing: action)
        }
    }
}

/// Sagas as parallel arrays, one per column, for `unnest`.
struct SagaColumns {
    /// The names of ``unnest``'s columns, in order.
    static let names = """
        id, expected, name, status, current_step, attempt, payload, context, history, failure_reason, has_failure, \
        deadline, reap_attempts, created_at, updated_at
        """
    /// `deadline` as a `timestamptz`, `NULL` for ``PostgresBatches/noDeadline``.
    static let deadlineExpression = """
        CASE WHEN u.deadline = \(PostgresBatches.noDeadline) THEN NULL \
        ELSE timestamptz 'epoch' + u.deadline * interval '1 millisecond' END
        """

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

    init(_ states: [SagaState], expected: [Int64]) throws {
        for (state, version) in zip(states, expected) {
            let row = try SagaRow(state)
            ids.append(row.id)
            self.expected.append(version)
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

    /// `unnest(…)` of every column, in the order of ``names``, binding the arrays.
    func unnest(_ binder: inout Binder) -> String {
        let columns = [
            binder.bind(ids, as: "text[]"), binder.bind(expected, as: "int8[]"), binder.bind(names, as: "text[]"),
            binder.bind(statuses, as: "text[]"), binder.bind(steps, as: "int8[]"), binder.bind(attempts, as: "int8[]"),
            binder.bind(payloads, as: "text[]"), binder.bind(contexts, as: "text[]"), binder.bind(histories, as: "text[]"),
            binder.bind(failureReasons, as: "text[]"), binder.bind(hasFailure, as: "bool[]"),
            binder.bind(deadlines, as: "int8[]"), binder.bind(reapAttempts, as: "int8[]"),
            binder.bind(createdAt, as: "int8[]"), binder.bind(updatedAt, as: "int8[]"),
        ]
        return "unnest(\(columns.joined(separator: ", ")))"
    }
}

/// Collects bind values for a statement whose text is built around numbered placeholders.
struct Binder {
    private(set) var binds = PostgresBindings()

    /// Binds `value` and returns its placeholder with a cast, such as `$3::text[]`.
    mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value, as type: String) -> String {
        binds.append(value)
        return "$\(binds.count)::\(type)"
    }
}
