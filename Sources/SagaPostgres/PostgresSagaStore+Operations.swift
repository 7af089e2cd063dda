public import Foundation
import PostgresNIO
public import SagaCore

extension PostgresSagaStore {
    /// Creates a saga (version 1) with its outbox messages in one statement, unless a saga with
    /// that id exists: then nothing is written and the stored saga is returned. Concurrent
    /// creations share a statement (see ``PostgresSagaStore``).
    public func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation {
        var stored = state
        stored.version = 1
        try await lifecycle.waitUntilRunning()
        return try await creations.submit(try EncodedSaga(stored, expected: 0, outbox: outbox), key: state.id)
    }

    /// Loads a saga. Concurrent loads share a statement.
    /// - Throws: ``SagaCore/SagaError`` `unknownSaga`.
    public func load(_ id: SagaID) async throws -> SagaState {
        try await lifecycle.waitUntilRunning()
        return try SagaRow.state(from: try await loads.submit(id, key: id))
    }

    /// The compare-and-swap on the version and the outbox inserts, in one statement. Ends any
    /// reaper lease on the saga. Concurrent commits of different sagas share a statement; each
    /// saga's compare-and-swap is still its own.
    ///
    /// Transitions with local writes (``SagaCore/LocalWrite``) are batched too, in one
    /// transaction: per saga the same compare-and-swap and outbox statement, then its local
    /// writes (none after a lost compare-and-swap). A failing write fails its saga alone: the
    /// batch then runs again with a savepoint per saga, and the others share one durable commit.
    @discardableResult
    public func commit(_ transition: SagaTransition) async throws -> SagaState {
        var stored = transition.state
        stored.version = transition.expectedVersion + 1
        let saga = try EncodedSaga(stored, expected: transition.expectedVersion, outbox: transition.outbox)
        guard transition.localWrites.isEmpty else {
            for (index, write) in transition.localWrites.enumerated() {
                try write.validate(index: index, of: transition.localWrites.count)
            }
            try await lifecycle.waitUntilRunning()
            return try await localCommits.submit(PostgresBatches.LocalCommit(saga: saga, writes: transition.localWrites), key: stored.id)
        }
        try await lifecycle.waitUntilRunning()
        return try await commits.submit(saga, key: stored.id)
    }

    /// Runs a transition's local writes (``SagaCore/LocalWrite``).
    public var supportsLocalWrites: Bool { true }

    /// Sagas matching the query, most recently updated first (ties by id).
    public func list(_ query: SagaQuery) async throws -> [SagaState] {
        if let statuses = query.statuses, statuses.isEmpty { return [] }
        let statuses = query.statuses.map { $0.map(\.rawValue).sorted() }
        let before = query.updatedBefore.map(StoreCoding.milliseconds)
        // The version is a string in the context JSON; a saga without it is on version 1.
        let version = query.definitionVersion.map(String.init)
        let versionKey = SagaState.definitionVersionKey
        let minimumAttempt = query.minimumAttempt
        let minimumReapAttempts = query.minimumReapAttempts
        let deadlineBefore = query.deadlineBefore.map(StoreCoding.milliseconds)
        let currentStep = query.currentStep
        let result = try await rows(
            "list sagas",
            """
            SELECT \(unescaped: SagaRow.selection) FROM \(unescaped: namespace).sagas
            WHERE (\(statuses)::text[] IS NULL OR status = ANY(\(statuses)::text[]))
              AND (\(query.name)::text IS NULL OR name = \(query.name)::text)
              AND (\(before)::int8 IS NULL OR updated_at < timestamptz 'epoch' + \(before)::int8 * interval '1 millisecond')
              AND (\(version)::text IS NULL OR COALESCE(context->>\(versionKey)::text, '1') = \(version)::text)
              AND (\(minimumAttempt)::int8 IS NULL OR attempt >= \(minimumAttempt)::int8)
              AND (\(minimumReapAttempts)::int8 IS NULL OR reap_attempts >= \(minimumReapAttempts)::int8)
              AND (\(deadlineBefore)::int8 IS NULL
                OR deadline < timestamptz 'epoch' + \(deadlineBefore)::int8 * interval '1 millisecond')
              AND (\(currentStep)::int8 IS NULL OR current_step = \(currentStep)::int8)
              AND (\(query.topology)::text IS NULL
                OR coalesce(context ->> \(SagaState.topologyKey)::text, \(query.topology)::text) = \(query.topology)::text)
            ORDER BY updated_at DESC, id
            LIMIT \(max(0, query.limit))
            """
        )
        return try result.map(SagaRow.state(from:))
    }

    /// The number of sagas in each status; every status is present, with 0 when none.
    public func countByStatus(name: String?) async throws -> [SagaStatus: Int] {
        try await countByStatus(name: name, topology: nil)
    }

    /// The number of sagas in each status, for one name and topology when given (see
    /// ``SagaCore/SagaQuery/topology``); every status is present, with 0 when none.
    public func countByStatus(name: String?, topology: String?) async throws -> [SagaStatus: Int] {
        let result = try await rows(
            "count sagas",
            """
            SELECT status, count(*) AS n FROM \(unescaped: namespace).sagas
            WHERE (\(name)::text IS NULL OR name = \(name)::text)
              AND (\(topology)::text IS NULL
                OR coalesce(context ->> \(SagaState.topologyKey)::text, \(topology)::text) = \(topology)::text)
            GROUP BY status
            """
        )
        var counts = Dictionary(uniqueKeysWithValues: SagaStatus.allCases.map { ($0, 0) })
        for row in result {
            let status = try StoreCoding.status(row["status"].decode(String.self), sagaID: "(any)")
            counts[status, default: 0] += try row["n"].decode(Int.self)
        }
        return counts
    }

    /// Deletes finished sagas last updated before the time, oldest first, keeping those with an
    /// unsent outbox message (see ``SagaCore/SagaStore/purgeFinished(before:topology:limit:)``).
    /// Not run again once sent: a delete whose reply was lost may have deleted the sagas.
    public func purgeFinished(before finishedBefore: Date, topology: String?, limit: Int) async throws -> Int {
        let before = StoreCoding.milliseconds(finishedBefore)
        let result = try await rows(
            "delete finished sagas",
            """
            DELETE FROM \(unescaped: namespace).sagas WHERE id IN (
                SELECT s.id FROM \(unescaped: namespace).sagas AS s
                WHERE s.status IN ('completed', 'compensated')
                  AND s.updated_at < timestamptz 'epoch' + \(before) * interval '1 millisecond'
                  AND NOT EXISTS (
                    SELECT 1 FROM \(unescaped: namespace).outbox AS o WHERE o.saga_id = s.id AND o.sent_at IS NULL)
                  AND (\(topology)::text IS NULL
                    OR coalesce(s.context ->> \(SagaState.topologyKey)::text, \(topology)::text) = \(topology)::text)
                ORDER BY s.updated_at, s.id
                LIMIT \(max(0, limit))
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id
            """,
            safety: .onlyIfNotSent
        )
        return result.count
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

    /// The statuses of sagas that have not ended, as SQL literals (`'running', …`): written into
    /// the statement, not bound, so that the server's generic plan knows how few rows they select
    /// and reads the status index (bound as an array, it read every saga of the name: 0.3–0.6 s
    /// for a million, against 55 ms).
    static let unfinishedStatuses = SagaStatus.unfinished.map { "'\($0.rawValue)'" }.joined(separator: ", ")

    /// The sagas of `name` (of the unfinished statuses only, with `unfinishedOnly`) counted by
    /// the definition version their context records and by status.
    private func versionCounts(
        name: String, topology: String?, unfinishedOnly: Bool
    ) async throws -> [(version: Int, status: SagaStatus, count: Int)] {
        let result = try await rows(
            unfinishedOnly ? "count unfinished sagas by version" : "count sagas by version",
            """
            SELECT COALESCE(context ->> \(SagaState.definitionVersionKey)::text, '1') AS version, status, count(*) AS n
            FROM \(unescaped: namespace).sagas
            WHERE \(unescaped: unfinishedOnly ? "status IN (\(Self.unfinishedStatuses)) AND " : "")name = \(name)::text
              AND (\(topology)::text IS NULL
                OR coalesce(context ->> \(SagaState.topologyKey)::text, \(topology)::text) = \(topology)::text)
            GROUP BY 1, 2
            """
        )
        return try result.map { row in
            // As SagaState.definitionVersion reads it: a version that is not a number is 1.
            (
                Int(try row["version"].decode(String.self)) ?? 1,
                try StoreCoding.status(row["status"].decode(String.self), sagaID: "(any)"),
                try row["n"].decode(Int.self)
            )
        }
    }

    /// Claims up to `limit` stalled sagas, oldest update first, in one statement that locks the
    /// candidates with `FOR UPDATE SKIP LOCKED`: a concurrent claimer skips them (and, once this
    /// claim commits, sees the new lease), so two claimers never take the same saga. A valid
    /// lease excludes everyone, its owner too.
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int
    ) async throws -> [SagaState] {
        try await claim(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit, topology: nil)
    }

    /// Claims only the sagas of `topology` and those that name none (the topology is read from
    /// the saga's context).
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
        // Not run again once sent: a claim whose reply was lost would find its own lease and
        // claim nothing; the reaper's next round claims them when that lease ends.
        let result = try await rows(
            "claim stalled sagas",
            """
            UPDATE \(unescaped: namespace).sagas SET lease_owner = \(owner),
                lease_until = timestamptz 'epoch' + \(until) * interval '1 millisecond'
            WHERE id IN (
                SELECT id FROM \(unescaped: namespace).sagas
                WHERE status IN ('running', 'compensating')
                  AND updated_at < timestamptz 'epoch' + \(before) * interval '1 millisecond'
                  AND (lease_until IS NULL OR lease_until <= timestamptz 'epoch' + \(nowMS) * interval '1 millisecond')
                  AND (\(topology)::text IS NULL
                    OR coalesce(context ->> \(SagaState.topologyKey), \(topology)::text) = \(topology)::text)
                ORDER BY updated_at, id
                LIMIT \(max(0, limit))
                FOR UPDATE SKIP LOCKED
            )
            RETURNING \(unescaped: SagaRow.selection)
            """,
            safety: .onlyIfNotSent
        )
        return try result.map(SagaRow.state(from:)).sorted { lhs, rhs in
            lhs.updatedAt != rhs.updatedAt ? lhs.updatedAt < rhs.updatedAt : lhs.id < rhs.id
        }
    }

    /// Unsent messages of the topology, created before `createdBefore` and due at `now`, in the
    /// order they became due (ties by insertion order).
    public func pendingOutbox(topology: String, createdBefore: Date, now: Date, limit: Int) async throws -> [OutboxMessage] {
        let before = StoreCoding.milliseconds(createdBefore)
        let due = StoreCoding.milliseconds(now)
        let result = try await rows(
            "read the outbox",
            """
            SELECT \(unescaped: OutboxColumns.selection) FROM \(unescaped: namespace).outbox
            WHERE topology = \(topology) AND sent_at IS NULL
              AND next_attempt_at <= timestamptz 'epoch' + \(due) * interval '1 millisecond'
              AND created_at < timestamptz 'epoch' + \(before) * interval '1 millisecond'
            ORDER BY next_attempt_at, seq
            LIMIT \(max(0, limit))
            """
        )
        return try result.map(OutboxColumns.message(from:))
    }

    /// The due messages of `topology`, each not due again before `now + lease`: rows another
    /// relay is claiming at the same moment are skipped (`FOR UPDATE SKIP LOCKED`), so two relays
    /// never claim the same message. Not run again once sent: a claim whose reply was lost leases
    /// its messages until the lease ends, and the next claim after that takes them.
    public func claimPendingOutbox(topology: String, createdBefore: Date, now: Date, lease: Duration, limit: Int) async throws
        -> [OutboxMessage]
    {
        let before = StoreCoding.milliseconds(createdBefore)
        let due = StoreCoding.milliseconds(now)
        let until = due + StoreCoding.milliseconds(lease)
        let result = try await rows(
            "claim outbox messages",
            """
            UPDATE \(unescaped: namespace).outbox
            SET next_attempt_at = timestamptz 'epoch' + \(until) * interval '1 millisecond'
            WHERE seq IN (
                SELECT seq FROM \(unescaped: namespace).outbox
                WHERE topology = \(topology) AND sent_at IS NULL
                  AND next_attempt_at <= timestamptz 'epoch' + \(due) * interval '1 millisecond'
                  AND created_at < timestamptz 'epoch' + \(before) * interval '1 millisecond'
                ORDER BY next_attempt_at, seq
                LIMIT \(max(0, limit))
                FOR UPDATE SKIP LOCKED
            )
            RETURNING seq, \(unescaped: OutboxColumns.selection)
            """,
            safety: .onlyIfNotSent
        )
        return try result.sorted { try $0["seq"].decode(Int64.self) < $1["seq"].decode(Int64.self) }.map(OutboxColumns.message(from:))
    }

    /// One saga's outbox messages not yet marked sent, oldest first (the unsent rows are few:
    /// the partial index of the relay's reads finds them).
    public func pendingOutbox(of sagaID: SagaID) async throws -> [OutboxMessage] {
        let result = try await rows(
            "read a saga's outbox",
            """
            SELECT \(unescaped: OutboxColumns.selection) FROM \(unescaped: namespace).outbox
            WHERE sent_at IS NULL AND saga_id = \(sagaID)
            ORDER BY seq
            """
        )
        return try result.map(OutboxColumns.message(from:))
    }

    /// Unsent messages of every topology created before `createdBefore`, oldest first.
    public func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage] {
        let before = StoreCoding.milliseconds(createdBefore)
        let result = try await rows(
            "read the outbox",
            """
            SELECT \(unescaped: OutboxColumns.selection) FROM \(unescaped: namespace).outbox
            WHERE sent_at IS NULL AND created_at < timestamptz 'epoch' + \(before) * interval '1 millisecond'
            ORDER BY created_at, seq
            LIMIT \(max(0, limit))
            """
        )
        return try result.map(OutboxColumns.message(from:))
    }

    /// Counts a failed publish of each message and defers it until `retryAt`, in one statement;
    /// unknown ids are ignored.
    public func recordFailedAttempts(_ ids: [String], retryAt: Date) async throws {
        guard !ids.isEmpty else { return }
        let retry = StoreCoding.milliseconds(retryAt)
        // An increment: not run twice.
        _ = try await rows(
            "record failed publish attempts",
            """
            UPDATE \(unescaped: namespace).outbox
            SET attempts = attempts + 1, next_attempt_at = timestamptz 'epoch' + \(retry) * interval '1 millisecond'
            WHERE id = ANY(\(ids)::text[]) AND sent_at IS NULL
            """,
            safety: .onlyIfNotSent
        )
    }

    /// Marks messages as sent; unknown ids are ignored. Concurrent calls share a statement.
    public func markSent(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        try await lifecycle.waitUntilRunning()
        try await marks.submit(ids, key: UniqueTag.next())
    }

    func fetchSaga(_ id: SagaID) async throws -> SagaState? {
        try await lifecycle.waitUntilRunning()
        return try await batches.fetch([id])[id]
    }
}

/// A saga as bind values.
struct SagaRow {
    static let columns = """
        id, name, status, current_step, attempt, payload, context, history, failure_reason, deadline, \
        reap_attempts, created_at, updated_at, version
        """
    /// The columns as ``state(from:)`` reads them: JSON as text, times as Unix milliseconds.
    static let selection = """
        id, name, status, current_step, attempt, payload::text AS payload, context::text AS context, \
        history::text AS history, failure_reason, (extract(epoch FROM deadline) * 1000)::int8 AS deadline, \
        reap_attempts, (extract(epoch FROM created_at) * 1000)::int8 AS created_at, \
        (extract(epoch FROM updated_at) * 1000)::int8 AS updated_at, version
        """

    let id: String
    let name: String
    let status: String
    let currentStep: Int
    let attempt: Int
    let payload: String
    let context: String
    let history: String
    let failureReason: String?
    let deadline: Int64?
    let reapAttempts: Int
    let createdAt: Int64
    let updatedAt: Int64

    init(_ state: SagaState) throws {
        id = state.id
        name = state.name
        status = state.status.rawValue
        currentStep = state.currentStep
        attempt = state.attempt
        payload = try StoreCoding.json(state.payload)
        context = try StoreCoding.json(state.context)
        history = try StoreCoding.json(state.history)
        failureReason = state.failureReason.map(Self.text)
        deadline = state.deadline.map(StoreCoding.milliseconds)
        reapAttempts = state.reapAttempts
        createdAt = StoreCoding.milliseconds(state.createdAt)
        updatedAt = StoreCoding.milliseconds(state.updatedAt)
    }

    /// `text` as a PostgreSQL `text` value holds it: U+0000, which PostgreSQL refuses in text
    /// (SQLSTATE 22021), becomes U+FFFD. A failure reason is free text (a handler's error, an
    /// operator's reason); refused, it would fail its transition's commit on every delivery. (The
    /// JSON columns keep it, escaped.)
    static func text(_ text: String) -> String {
        text.contains("\u{0}") ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text
    }

    static func state(from row: PostgresRandomAccessRow) throws -> SagaState {
        let id = try row["id"].decode(String.self)
        return SagaState(
            id: id,
            name: try row["name"].decode(String.self),
            status: try StoreCoding.status(row["status"].decode(String.self), sagaID: id),
            currentStep: try row["current_step"].decode(Int.self),
            attempt: try row["attempt"].decode(Int.self),
            payload: try StoreCoding.decode(
                JSONObject.self, json: row["payload"].decode(String.self), column: "payload", sagaID: id
            ),
            context: try StoreCoding.decode(
                [String: String].self, json: row["context"].decode(String.self), column: "context", sagaID: id
            ),
            history: try StoreCoding.decode(
                [StepRecord].self, json: row["history"].decode(String.self), column: "history", sagaID: id
            ),
            failureReason: try row["failure_reason"].decode(String?.self),
            deadline: try row["deadline"].decode(Int64?.self).map(StoreCoding.date(milliseconds:)),
            reapAttempts: try row["reap_attempts"].decode(Int.self),
            createdAt: StoreCoding.date(milliseconds: try row["created_at"].decode(Int64.self)),
            updatedAt: StoreCoding.date(milliseconds: try row["updated_at"].decode(Int64.self)),
            version: try row["version"].decode(Int64.self)
        )
    }
}

/// Reading outbox rows.
enum OutboxColumns {
    /// The columns ``message(from:)`` reads.
    static let selection = """
        id, saga_id, exchange, routing_key, body, headers::text AS headers, \
        (extract(epoch FROM created_at) * 1000)::int8 AS created_at, attempts
        """

    static func message(from row: PostgresRandomAccessRow) throws -> OutboxMessage {
        let sagaID = try row["saga_id"].decode(String.self)
        let body = try row["body"].decode(ByteBuffer.self)
        return OutboxMessage(
            id: try row["id"].decode(String.self),
            sagaID: sagaID,
            exchange: try row["exchange"].decode(String.self),
            routingKey: try row["routing_key"].decode(String.self),
            body: Array(body.readableBytesView),
            headers: try StoreCoding.decode(
                [String: String].self, json: row["headers"].decode(String.self), column: "headers", sagaID: sagaID
            ),
            createdAt: StoreCoding.date(milliseconds: try row["created_at"].decode(Int64.self)),
            publishAttempts: try row["attempts"].decode(Int.self)
        )
    }
}

/// Outbox messages as parallel arrays, for `unnest`.
struct OutboxRows {
    var ids: [String] = []
    var sagaIDs: [String] = []
    var exchanges: [String] = []
    var routingKeys: [String] = []
    var bodies: [ByteBuffer] = []
    var headers: [String] = []
    var createdAt: [Int64] = []
    var topologies: [String] = []

    init(_ messages: [EncodedOutboxMessage]) {
        for message in messages {
            ids.append(message.id)
            sagaIDs.append(message.sagaID)
            exchanges.append(message.exchange)
            routingKeys.append(message.routingKey)
            bodies.append(message.body)
            headers.append(message.headers)
            createdAt.append(message.createdAt)
            topologies.append(message.topology)
        }
    }

    /// Binds id, saga_id, exchange, routing_key, body, headers, created_at, topology (the
    /// functions' outbox parameters); returns the placeholders.
    func bind(_ binder: inout Binder) -> String {
        let columns = [
            binder.bind(ids, as: "text[]"), binder.bind(sagaIDs, as: "text[]"), binder.bind(exchanges, as: "text[]"),
            binder.bind(routingKeys, as: "text[]"), binder.bind(bodies, as: "bytea[]"), binder.bind(headers, as: "text[]"),
            binder.bind(createdAt, as: "int8[]"), binder.bind(topologies, as: "text[]"),
        ]
        return columns.joined(separator: ", ")
    }
}
