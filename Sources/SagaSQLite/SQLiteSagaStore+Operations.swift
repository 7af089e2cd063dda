public import Foundation
import GRDB
public import SagaCore

extension SQLiteSagaStore {
    /// Creates a saga (version 1) with its outbox messages in one transaction, unless a saga
    /// with that id exists: then nothing is written and the stored saga is returned. Concurrent
    /// creations share a transaction (see ``SQLiteSagaStore``).
    public func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation {
        var initial = state
        initial.version = 1
        try await lifecycle.waitUntilRunning()
        return try await creations.submit(try EncodedSaga(initial, expected: 0, outbox: outbox), key: state.id)
    }

    /// Creates each saga in one `IMMEDIATE` transaction; a saga that exists is returned as it is.
    static func create(_ batch: [EncodedSaga], in store: SQLiteStoreAccess) async -> [Result<SagaCreation, any Error>] {
        do {
            return try await store.write("create sagas in") { db in
                try batch.map { saga -> Result<SagaCreation, any Error> in
                    let (stored, row, messages) = (saga.state, saga.row, saga.outbox)
                    try db.cachedStatement(
                        sql: """
                            INSERT INTO sagas (\(SagaRow.columns)) VALUES (\(SagaRow.placeholders))
                            ON CONFLICT (id) DO NOTHING
                            """
                    ).execute(arguments: row.arguments)
                    guard db.changesCount == 1 else {
                        guard let existing = try fetchSaga(db, id: stored.id) else { return .failure(SagaError.unknownSaga(stored.id)) }
                        return .success(.existing(existing))
                    }
                    try insert(messages, into: db)
                    return .success(.created(stored))
                }
            }
        } catch {
            return Array(repeating: .failure(error), count: batch.count)
        }
    }

    /// Loads a saga.
    /// - Throws: ``SagaCore/SagaError`` `unknownSaga`.
    public func load(_ id: SagaID) async throws -> SagaState {
        let state = try await read("load a saga from") { db in try Self.fetchSaga(db, id: id) }
        guard let state else { throw SagaError.unknownSaga(id) }
        return state
    }

    /// The compare-and-swap on the version, the outbox inserts and the transition's local writes,
    /// in one `IMMEDIATE` transaction. Ends any reaper lease on the saga. Concurrent commits of
    /// different sagas share a transaction; each saga's compare-and-swap (and local writes) is
    /// still its own.
    @discardableResult
    public func commit(_ transition: SagaTransition) async throws -> SagaState {
        var next = transition.state
        next.version = transition.expectedVersion + 1
        for (index, write) in transition.localWrites.enumerated() {
            try write.validate(index: index, of: transition.localWrites.count)
        }
        let commit = SQLiteCommit(
            saga: try EncodedSaga(next, expected: transition.expectedVersion, outbox: transition.outbox),
            localWrites: transition.localWrites)
        try await lifecycle.waitUntilRunning()
        return try await commits.submit(commit, key: next.id)
    }

    /// Runs a transition's local writes (``SagaCore/LocalWrite``).
    public var supportsLocalWrites: Bool { true }

    /// Commits each transition that still matches its saga's version, in one `IMMEDIATE`
    /// transaction. A lost compare-and-swap fails that transition only; so does a failing local
    /// write, whose saga's update, outbox rows and earlier local writes a savepoint rolls back.
    static func commit(_ batch: [SQLiteCommit], in store: SQLiteStoreAccess) async -> [Result<SagaState, any Error>] {
        do {
            return try await store.write("commit transitions to") { db in
                try batch.map { commit -> Result<SagaState, any Error> in
                    guard !commit.localWrites.isEmpty else { return try swap(commit.saga, in: db) }
                    var outcome: Result<SagaState, any Error> = .failure(CancellationError())
                    try db.inSavepoint {
                        outcome = try swap(commit.saga, in: db)
                        guard case .success = outcome else { return .rollback }
                        if let failure = try run(commit.localWrites, in: db) {
                            outcome = .failure(failure)
                            return .rollback
                        }
                        return .commit
                    }
                    return outcome
                }
            }
        } catch {
            return Array(repeating: .failure(error), count: batch.count)
        }
    }

    /// The compare-and-swap of one saga and its outbox rows.
    private static func swap(_ saga: EncodedSaga, in db: Database) throws -> Result<SagaState, any Error> {
        let (stored, row, messages, expected) = (saga.state, saga.row, saga.outbox, saga.expected)
        try db.cachedStatement(
            sql: """
                UPDATE sagas SET \(SagaRow.assignments), lease_owner = NULL, lease_until = NULL
                WHERE id = ? AND version = ?
                """
        ).execute(arguments: row.arguments + [stored.id, expected])
        guard db.changesCount == 1 else {
            let actual = try Int64.fetchOne(db, sql: "SELECT version FROM sagas WHERE id = ?", arguments: [stored.id])
            guard let actual else { return .failure(SagaError.unknownSaga(stored.id)) }
            return .failure(SagaError.versionConflict(sagaID: stored.id, expected: expected, actual: actual))
        }
        try insert(messages, into: db)
        return .success(stored)
    }

    /// Runs local writes in order; returns the error of the first one that fails for a reason of
    /// its own: `localWriteFailed` for its data (a constraint, a value, its row count),
    /// `storeUnavailable` when SQLite cannot compile it (a missing table or column, a syntax
    /// error, an authorizer's refusal: a deployment's mistake, redelivered until fixed, see
    /// ``SagaCore/LocalWrite/statementRefused(index:of:sql:_:schemaHint:underlying:)``). Throws
    /// what is the database's problem instead (busy, I/O, full disk), which fails the whole batch.
    private static func run(_ writes: [LocalWrite], in db: Database) throws -> SagaError? {
        for (index, write) in writes.enumerated() {
            do {
                let statement: Statement
                do {
                    statement = try db.makeStatement(sql: write.sqliteSQL)
                } catch let error as DatabaseError where isStatementError(error) {
                    return LocalWrite.statementRefused(
                        index: index, of: writes.count, sql: write.sql, "failed: \(error.message ?? "\(error.resultCode)")",
                        schemaHint: nil, underlying: error)
                }
                let before = db.totalChangesCount
                try statement.execute(arguments: StatementArguments(write.parameters.map(\.sqliteValue)))
                // changesCount keeps the last INSERT/UPDATE/DELETE's count: 0 when nothing changed.
                let affected = db.totalChangesCount == before ? 0 : db.changesCount
                try write.check(affectedRows: affected, index: index, of: writes.count)
            } catch let error as SagaError {
                return error
            } catch let error as DatabaseError where isStatementError(error) {
                return LocalWrite.failure(
                    index: index, of: writes.count, sql: write.sql, "failed: \(error.message ?? "\(error.resultCode)")",
                    underlying: error)
            }
        }
        return nil
    }

    /// Errors that come from the statement and its data, not from the database file.
    private static func isStatementError(_ error: DatabaseError) -> Bool {
        [.SQLITE_CONSTRAINT, .SQLITE_ERROR, .SQLITE_MISMATCH, .SQLITE_RANGE, .SQLITE_TOOBIG, .SQLITE_MISUSE, .SQLITE_AUTH]
            .contains(error.resultCode)
    }

    /// Sagas matching the query, most recently updated first (ties by id).
    public func list(_ query: SagaQuery) async throws -> [SagaState] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let statuses = query.statuses {
            guard !statuses.isEmpty else { return [] }
            conditions.append("status IN (\(Array(repeating: "?", count: statuses.count).joined(separator: ", ")))")
            arguments += StatementArguments(statuses.map(\.rawValue))
        }
        if let name = query.name {
            conditions.append("name = ?")
            arguments += [name]
        }
        if let before = query.updatedBefore {
            conditions.append("updated_at < ?")
            arguments += [StoreCoding.milliseconds(before)]
        }
        if let version = query.definitionVersion {
            // The version is a string in the context JSON; a saga without it is on version 1.
            conditions.append("COALESCE(json_extract(context, ?), '1') = ?")
            arguments += ["$.\"\(SagaState.definitionVersionKey)\"", String(version)]
        }
        if let minimumAttempt = query.minimumAttempt {
            conditions.append("attempt >= ?")
            arguments += [minimumAttempt]
        }
        if let minimumReapAttempts = query.minimumReapAttempts {
            conditions.append("reap_attempts >= ?")
            arguments += [minimumReapAttempts]
        }
        if let topology = query.topology {
            conditions.append(Self.topologyCondition)
            arguments += [Self.topologyPath, topology, topology]
        }
        if let deadlineBefore = query.deadlineBefore {
            conditions.append("deadline < ?")
            arguments += [StoreCoding.milliseconds(deadlineBefore)]
        }
        if let currentStep = query.currentStep {
            conditions.append("current_step = ?")
            arguments += [currentStep]
        }
        arguments += [max(0, query.limit)]
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let sql = "SELECT \(SagaRow.columns) FROM sagas \(filter) ORDER BY updated_at DESC, id LIMIT ?"
        let finalArguments = arguments
        return try await read("list sagas in") { db in
            try Row.fetchAll(db, sql: sql, arguments: finalArguments).map(SagaRow.state(from:))
        }
    }

    /// The number of sagas in each status; every status is present, with 0 when none.
    public func countByStatus(name: String?) async throws -> [SagaStatus: Int] {
        try await countByStatus(name: name, topology: nil)
    }

    /// A saga of the topology bound to the second and third arguments, or of none (the first
    /// argument is ``topologyPath``).
    private static let topologyCondition = "coalesce(json_extract(context, ?), ?) = ?"
    private static let topologyPath = "$.\"\(SagaState.topologyKey)\""

    /// The number of sagas in each status, for one name and topology when given (see
    /// ``SagaCore/SagaQuery/topology``); every status is present, with 0 when none.
    public func countByStatus(name: String?, topology: String?) async throws -> [SagaStatus: Int] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let name {
            conditions.append("name = ?")
            arguments += [name]
        }
        if let topology {
            conditions.append(Self.topologyCondition)
            arguments += [Self.topologyPath, topology, topology]
        }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let sql = "SELECT status, COUNT(*) AS n FROM sagas \(filter) GROUP BY status"
        let finalArguments = arguments
        let rows = try await read("count sagas in") { db in
            try Row.fetchAll(db, sql: sql, arguments: finalArguments).map { ($0["status"] as String, $0["n"] as Int) }
        }
        var counts = Dictionary(uniqueKeysWithValues: SagaStatus.allCases.map { ($0, 0) })
        for (status, count) in rows {
            counts[try StoreCoding.status(status, sagaID: "(any)"), default: 0] += count
        }
        return counts
    }

    /// Deletes finished sagas last updated before the time, oldest first, keeping those with an
    /// unsent outbox message (see ``SagaCore/SagaStore/purgeFinished(before:topology:limit:)``).
    public func purgeFinished(before finishedBefore: Date, topology: String?, limit: Int) async throws -> Int {
        var conditions = [
            "status IN ('completed', 'compensated')", "updated_at < ?",
            "NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.saga_id = sagas.id AND outbox.sent_at IS NULL)",
        ]
        var arguments: StatementArguments = [StoreCoding.milliseconds(finishedBefore)]
        if let topology {
            conditions.append(Self.topologyCondition)
            arguments += [Self.topologyPath, topology, topology]
        }
        arguments += [max(0, limit)]
        let sql = """
            DELETE FROM sagas WHERE id IN (
                SELECT id FROM sagas WHERE \(conditions.joined(separator: " AND ")) ORDER BY updated_at, id LIMIT ?)
            """
        let finalArguments = arguments
        return try await write("delete finished sagas from") { db in
            try db.execute(sql: sql, arguments: finalArguments)
            return db.changesCount
        }
    }

    /// The number of sagas of `name` on each definition version, by status (see
    /// ``SagaCore/SagaStore/countByVersion(name:topology:)``): one statement, grouped by the
    /// version the saga's context records.
    public func countByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]] {
        try await .init(versionCounts: versionCounts(name: name, topology: topology, unfinishedOnly: false), unfinishedOnly: false)
    }

    /// The unfinished sagas of each version of `name`, read through the `(status, updated_at)`
    /// index: the finished sagas, most of a store that keeps them, are not read.
    public func unfinishedByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]] {
        try await .init(versionCounts: versionCounts(name: name, topology: topology, unfinishedOnly: true), unfinishedOnly: true)
    }

    /// The sagas of `name` (of the unfinished statuses only, with `unfinishedOnly`) counted by
    /// the definition version their context records and by status.
    private func versionCounts(
        name: String, topology: String?, unfinishedOnly: Bool
    ) async throws -> [(version: Int, status: SagaStatus, count: Int)] {
        var conditions = ["name = ?"]
        var arguments: StatementArguments = ["$.\"\(SagaState.definitionVersionKey)\"", name]
        if unfinishedOnly {
            let unfinished = SagaStatus.unfinished.map(\.rawValue)
            conditions.append("status IN (\(unfinished.map { _ in "?" }.joined(separator: ", ")))")
            arguments += StatementArguments(unfinished)
        }
        if let topology {
            conditions.append(Self.topologyCondition)
            arguments += [Self.topologyPath, topology, topology]
        }
        let sql = """
            SELECT CAST(COALESCE(json_extract(context, ?), '1') AS TEXT) AS version, status, COUNT(*) AS n FROM sagas
            WHERE \(conditions.joined(separator: " AND ")) GROUP BY 1, 2
            """
        let finalArguments = arguments
        let rows = try await read(unfinishedOnly ? "count unfinished sagas by version in" : "count sagas by version in") { db in
            try Row.fetchAll(db, sql: sql, arguments: finalArguments).map {
                ($0["version"] as String, $0["status"] as String, $0["n"] as Int)
            }
        }
        return try rows.map { version, status, count in
            // As SagaState.definitionVersion reads it: a version that is not a number is 1.
            (Int(version) ?? 1, try StoreCoding.status(status, sagaID: "(any)"), count)
        }
    }

    /// Claims up to `limit` stalled sagas, oldest update first, in one `IMMEDIATE` transaction
    /// (writers are serialized, across processes too, so two claimers never take the same
    /// saga). A valid lease excludes everyone, its owner too.
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int
    ) async throws -> [SagaState] {
        try await claim(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit, topology: nil)
    }

    /// Claims only the sagas of `topology` and those that name none (the topology is read from
    /// the saga's context with `json_extract`).
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String
    ) async throws -> [SagaState] {
        try await claim(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit, topology: topology)
    }

    private func claim(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String?
    ) async throws -> [SagaState] {
        let before = StoreCoding.milliseconds(updatedBefore)
        let nowMS = StoreCoding.milliseconds(now)
        let until = nowMS + StoreCoding.milliseconds(lease)
        let limit = max(0, limit)
        let sameTopology = topology == nil ? "" : "AND \(Self.topologyCondition)"
        let arguments: StatementArguments =
            topology.map { [before, nowMS, Self.topologyPath, $0, $0, limit] } ?? [before, nowMS, limit]
        return try await write("claim stalled sagas in") { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT \(SagaRow.columns) FROM sagas
                    WHERE status IN ('running', 'compensating') AND updated_at < ?
                      AND (lease_until IS NULL OR lease_until <= ?)
                      \(sameTopology)
                    ORDER BY updated_at, id LIMIT ?
                    """,
                arguments: arguments
            )
            let states = try rows.map(SagaRow.state(from:))
            for state in states {
                try db.execute(
                    sql: "UPDATE sagas SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    arguments: [owner, until, state.id]
                )
            }
            return states
        }
    }

    /// Unsent messages of the topology, created before `createdBefore` and due at `now`, in the
    /// order they became due (ties by insertion order).
    public func pendingOutbox(topology: String, createdBefore: Date, now: Date, limit: Int) async throws -> [OutboxMessage] {
        let before = StoreCoding.milliseconds(createdBefore)
        let due = StoreCoding.milliseconds(now)
        let limit = max(0, limit)
        return try await read("read the outbox of") { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(OutboxRow.columns) FROM outbox
                        WHERE topology = ? AND sent_at IS NULL AND next_attempt_at <= ? AND created_at < ?
                        ORDER BY next_attempt_at, seq LIMIT ?
                        """),
                arguments: [topology, due, before, limit]
            ).map(OutboxRow.message(from:))
        }
    }

    /// The due messages of `topology`, each not due again before `now + lease`, in one write
    /// transaction (SQLite runs one at a time, so two relays never claim the same message).
    public func claimPendingOutbox(topology: String, createdBefore: Date, now: Date, lease: Duration, limit: Int) async throws
        -> [OutboxMessage]
    {
        let before = StoreCoding.milliseconds(createdBefore)
        let due = StoreCoding.milliseconds(now)
        let until = due + StoreCoding.milliseconds(lease)
        let limit = max(0, limit)
        return try await write("claim outbox messages in") { db in
            let rows = try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT seq, \(OutboxRow.columns) FROM outbox
                        WHERE topology = ? AND sent_at IS NULL AND next_attempt_at <= ? AND created_at < ?
                        ORDER BY next_attempt_at, seq LIMIT ?
                        """),
                arguments: [topology, due, before, limit])
            let sequences: [Int64] = rows.map { $0["seq"] }
            var start = 0
            while start < sequences.count {
                let chunk = sequences[start..<min(sequences.count, start + 500)]
                try db.execute(
                    sql:
                        "UPDATE outbox SET next_attempt_at = ? WHERE seq IN (\(Array(repeating: "?", count: chunk.count).joined(separator: ", ")))",
                    arguments: StatementArguments([until]) + StatementArguments(Array(chunk)))
                start += chunk.count
            }
            return try rows.sorted { ($0["seq"] as Int64) < ($1["seq"] as Int64) }.map(OutboxRow.message(from:))
        }
    }

    /// One saga's outbox messages not yet marked sent, oldest first.
    public func pendingOutbox(of sagaID: SagaID) async throws -> [OutboxMessage] {
        try await read("read the outbox of") { db in
            try Row.fetchAll(
                db, sql: "SELECT \(OutboxRow.columns) FROM outbox WHERE sent_at IS NULL AND saga_id = ? ORDER BY seq",
                arguments: [sagaID]
            ).map(OutboxRow.message(from:))
        }
    }

    /// Unsent messages of every topology created before `createdBefore`, oldest first.
    public func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage] {
        let before = StoreCoding.milliseconds(createdBefore)
        let limit = max(0, limit)
        return try await read("read the outbox of") { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT \(OutboxRow.columns) FROM outbox
                    WHERE sent_at IS NULL AND created_at < ? ORDER BY created_at, seq LIMIT ?
                    """,
                arguments: [before, limit]
            ).map(OutboxRow.message(from:))
        }
    }

    /// Counts a failed publish of each message and defers it until `retryAt`, in one
    /// transaction; unknown ids are ignored.
    public func recordFailedAttempts(_ ids: [String], retryAt: Date) async throws {
        guard !ids.isEmpty else { return }
        let retry = StoreCoding.milliseconds(retryAt)
        try await write("record failed publish attempts in") { db in
            var start = 0
            while start < ids.count {
                let chunk = ids[start..<min(ids.count, start + 500)]
                try db.execute(
                    sql: """
                        UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?
                        WHERE sent_at IS NULL AND id IN (\(Array(repeating: "?", count: chunk.count).joined(separator: ", ")))
                        """,
                    arguments: StatementArguments([retry]) + StatementArguments(Array(chunk))
                )
                start += chunk.count
            }
        }
    }

    /// Marks messages as sent; unknown ids are ignored. Concurrent calls share a transaction.
    public func markSent(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        try await lifecycle.waitUntilRunning()
        try await marks.submit(ids, key: UniqueTag.next())
    }

    /// Marks the messages of every call in the batch in one transaction, by deleting them: a
    /// sent message is of no further use.
    static func markSent(_ batch: [[String]], in store: SQLiteStoreAccess) async -> [Result<Void, any Error>] {
        let ids = batch.flatMap { $0 }
        do {
            try await store.write("mark outbox messages sent in") { db in
                var start = 0
                while start < ids.count {
                    let chunk = ids[start..<min(ids.count, start + 500)]
                    try db.execute(
                        sql: """
                            DELETE FROM outbox
                            WHERE id IN (\(Array(repeating: "?", count: chunk.count).joined(separator: ", ")))
                            """,
                        arguments: StatementArguments(Array(chunk))
                    )
                    start += chunk.count
                }
            }
            return Array(repeating: .success(()), count: batch.count)
        } catch {
            return Array(repeating: .failure(error), count: batch.count)
        }
    }

    // MARK: Rows

    static func fetchSaga(_ db: Database, id: SagaID) throws -> SagaState? {
        // Cached: statements are compiled (and authorized) once per connection, not per call.
        try Row.fetchOne(db.cachedStatement(sql: "SELECT \(SagaRow.columns) FROM sagas WHERE id = ?"), arguments: [id])
            .map(SagaRow.state(from:))
    }

    static func insert(_ messages: [OutboxRow], into db: Database) throws {
        for message in messages {
            try db.cachedStatement(
                sql: """
                    INSERT INTO outbox (id, saga_id, exchange, routing_key, body, headers, created_at, topology,
                        next_attempt_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """
            ).execute(arguments: message.arguments)
        }
    }
}

/// A saga as column values.
struct SagaRow: Sendable {
    static let columns = """
        id, name, status, current_step, attempt, payload, context, history, failure_reason, deadline, \
        reap_attempts, created_at, updated_at, version
        """
    static let placeholders = Array(repeating: "?", count: 14).joined(separator: ", ")
    static let assignments = columns.split(separator: ",")
        .map { "\($0.trimmingCharacters(in: .whitespaces)) = ?" }
        .joined(separator: ", ")

    let arguments: StatementArguments

    init(_ state: SagaState) throws {
        arguments = [
            state.id, state.name, state.status.rawValue, state.currentStep, state.attempt,
            try StoreCoding.json(state.payload), try StoreCoding.json(state.context),
            try StoreCoding.json(state.history),
            state.failureReason, state.deadline.map(StoreCoding.milliseconds), state.reapAttempts,
            StoreCoding.milliseconds(state.createdAt), StoreCoding.milliseconds(state.updatedAt), state.version,
        ]
    }

    static func state(from row: Row) throws -> SagaState {
        let id: String = row["id"]
        return SagaState(
            id: id,
            name: row["name"],
            status: try StoreCoding.status(row["status"], sagaID: id),
            currentStep: row["current_step"],
            attempt: row["attempt"],
            payload: try StoreCoding.decode(JSONObject.self, json: row["payload"], column: "payload", sagaID: id),
            context: try StoreCoding.decode([String: String].self, json: row["context"], column: "context", sagaID: id),
            history: try StoreCoding.decode([StepRecord].self, json: row["history"], column: "history", sagaID: id),
            failureReason: row["failure_reason"],
            deadline: (row["deadline"] as Int64?).map(StoreCoding.date(milliseconds:)),
            reapAttempts: row["reap_attempts"],
            createdAt: StoreCoding.date(milliseconds: row["created_at"]),
            updatedAt: StoreCoding.date(milliseconds: row["updated_at"]),
            version: row["version"]
        )
    }
}

/// An outbox message as column values.
struct OutboxRow: Sendable {
    /// The columns ``message(from:)`` reads.
    static let columns = "id, saga_id, exchange, routing_key, body, headers, created_at, attempts"

    let arguments: StatementArguments

    /// The values of id, saga_id, exchange, routing_key, body, headers, created_at, topology and
    /// next_attempt_at (due at once).
    init(_ message: OutboxMessage) throws {
        let createdAt = StoreCoding.milliseconds(message.createdAt)
        arguments = [
            message.id, message.sagaID, message.exchange, message.routingKey, Data(message.body),
            try StoreCoding.json(message.headers), createdAt, message.topology, createdAt,
        ]
    }

    static func message(from row: Row) throws -> OutboxMessage {
        let id: String = row["id"]
        let body: Data = row["body"]
        return OutboxMessage(
            id: id,
            sagaID: row["saga_id"],
            exchange: row["exchange"],
            routingKey: row["routing_key"],
            body: [UInt8](body),
            headers: try StoreCoding.decode(
                [String: String].self, json: row["headers"], column: "headers", sagaID: row["saga_id"]),
            createdAt: StoreCoding.date(milliseconds: row["created_at"]),
            publishAttempts: row["attempts"]
        )
    }
}

/// A saga to write with its outbox messages, as SQLite column values.
typealias EncodedSaga = EncodedWrite<SagaRow, OutboxRow>

/// A transition to commit: the saga's row and messages, and the handler's local writes.
struct SQLiteCommit: Sendable {
    let saga: EncodedSaga
    let localWrites: [LocalWrite]
}

extension LocalValue {
    /// The value as GRDB binds it.
    var sqliteValue: (any DatabaseValueConvertible)? {
        switch self {
        case .int(let value): value
        case .double(let value): value
        case .text(let value): value
        case .bool(let value): value
        case .null: nil
        case .bytes(let value): Data(value)
        }
    }
}

extension EncodedWrite<SagaRow, OutboxRow> {
    init(_ state: SagaState, expected: Int64, outbox: [OutboxMessage]) throws {
        try self.init(state, expected: expected, outbox: outbox, row: SagaRow.init, message: OutboxRow.init)
    }
}
