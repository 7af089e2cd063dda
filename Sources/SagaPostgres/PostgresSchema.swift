import Foundation
import Logging
import PostgresNIO
import SagaCore
import Synchronization

/// The PostgreSQL schema and its migrations.
///
/// Version 2 adds the functions behind the store's hot path (``PostgresBatches``), so a batch
/// costs the server the parse of one short call instead of a multi-CTE statement.
///
/// Version 3 gives every outbox message its topology (the prefix of its exchange, see
/// ``SagaCore/OutboxMessage/topology``), a count of failed publish attempts and the time it is
/// next due, so that a relay reads only its own topology's messages and a message that keeps
/// failing moves behind the others.
///
/// Version 4 adds `saga_definitions`: the canonical document of every registered saga
/// definition, by name and version (see ``SagaCore/SagaStore/register(_:)``).
///
/// Version 5 adds `saga_circuits`: the state of the steps' circuit breakers (see
/// ``SagaCore/SagaStore/circuit(_:)``), shared by every process of the store.
///
/// Version 6 recreates the hot-path functions so that they always run a generic plan (they
/// planned every call before) and so that a sent mark commits asynchronously (it no longer waits
/// for a WAL flush of its own: a lost mark only re-publishes a message that consumers ignore).
///
/// Version 7 adds `sagakit_keys`: the key that seals the copies of saga states that commands
/// carry (``PostgresStateSeal``), made by the first process that opens the store, shared by all;
/// and `sagakit_commit_with_writes`, which commits a batch of transitions with their local writes
/// in one statement (one round trip instead of `BEGIN`, the commit, one per write and `COMMIT`).
///
/// Version 8 adds `sagakit_commit_one` and `sagakit_create_one`: the same writes for a batch of
/// one saga, with the saga's columns as plain parameters and plain statements in place of the
/// array functions' `unnest` CTE (and, for a transition, without calling a second function).
/// With one saga at a time every step commits alone, and the array machinery was most of the
/// call's cost (measured: 0.47 → 0.34 ms a call, local write included).
///
/// Version 9 adds `saga_participants`: the participant processes that run, their services and
/// commands (see ``SagaCore/SagaStore/recordParticipant(_:)``).
///
/// `sagakit_schema` holds one row with the version of the schema. Opening a store runs, in one
/// transaction holding an advisory lock on the schema's name, every migration after the
/// recorded version; processes that open the store together take turns.
enum PostgresSchema {
    /// The version this SagaKit writes.
    static let currentVersion = 9

    /// Migration `n` brings the schema from version `n` to `n + 1`; `S` stands for the quoted
    /// schema name.
    static let migrations: [[String]] = [
        // 0 → 1
        [
            """
            CREATE TABLE S.sagas (
                id text PRIMARY KEY,
                name text NOT NULL,
                status text NOT NULL,
                current_step integer NOT NULL,
                attempt integer NOT NULL,
                payload json NOT NULL,
                context json NOT NULL,
                history json NOT NULL,
                failure_reason text,
                deadline timestamptz,
                reap_attempts integer NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                version bigint NOT NULL,
                lease_owner text,
                lease_until timestamptz
            )
            """,
            "CREATE INDEX sagas_status_updated ON S.sagas (status, updated_at)",
            "CREATE INDEX sagas_name ON S.sagas (name)",
            """
            CREATE TABLE S.outbox (
                seq bigserial PRIMARY KEY,
                id text NOT NULL UNIQUE,
                saga_id text NOT NULL,
                exchange text NOT NULL,
                routing_key text NOT NULL,
                body bytea NOT NULL,
                headers json NOT NULL,
                created_at timestamptz NOT NULL,
                sent_at timestamptz
            )
            """,
            "CREATE INDEX outbox_pending ON S.outbox (created_at, seq) WHERE sent_at IS NULL",
            "CREATE INDEX outbox_saga ON S.outbox (saga_id)",
        ],
        // 1 → 2
        [
            // Nothing reads the outbox by saga, and every message paid for this index.
            "DROP INDEX IF EXISTS S.outbox_saga",
            commitFunction,
            createFunction,
            loadFunction,
            markSentFunction,
        ],
        // 2 → 3
        [
            "ALTER TABLE S.outbox ADD COLUMN IF NOT EXISTS topology text",
            "ALTER TABLE S.outbox ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0",
            "ALTER TABLE S.outbox ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz",
            // Messages recorded before this version: their topology from their exchange (the
            // rule of OutboxMessage.topology(ofExchange:)), due since their creation.
            #"""
            UPDATE S.outbox SET topology = regexp_replace(exchange, '^(.+)\.(commands|dead-letter|delay\.[0-9]+s)$', '\1'),
                next_attempt_at = created_at
            WHERE topology IS NULL
            """#,
            "ALTER TABLE S.outbox ALTER COLUMN topology SET NOT NULL, ALTER COLUMN next_attempt_at SET NOT NULL",
            "DROP INDEX IF EXISTS S.outbox_pending",
            "CREATE INDEX IF NOT EXISTS outbox_due ON S.outbox (topology, next_attempt_at, seq) WHERE sent_at IS NULL",
            // The functions take each message's topology now.
            "DROP FUNCTION IF EXISTS S.sagakit_commit",
            "DROP FUNCTION IF EXISTS S.sagakit_create",
            commitFunction,
            createFunction,
        ],
        // 3 → 4
        [
            """
            CREATE TABLE IF NOT EXISTS S.saga_definitions (
                name text NOT NULL,
                version integer NOT NULL,
                hash text NOT NULL,
                document text NOT NULL,
                registered_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (name, version)
            )
            """
        ],
        // 4 → 5
        [
            """
            CREATE TABLE IF NOT EXISTS S.saga_circuits (
                key text PRIMARY KEY,
                failures integer NOT NULL,
                opened_at timestamptz,
                version bigint NOT NULL,
                updated_at timestamptz NOT NULL
            )
            """
        ],
        // 5 → 6: the hot-path functions with a generic plan, and sent marks committed
        // asynchronously (see the type's documentation).
        [commitFunction, createFunction, loadFunction, markSentFunction],
        // 6 → 7: the key that seals state copies in commands (made by `migrate` when missing),
        // and transitions with local writes in one statement.
        [
            commitWithWritesFunction,
            """
            CREATE TABLE IF NOT EXISTS S.sagakit_keys (
                name text PRIMARY KEY,
                key bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ],
        // 7 → 8: one saga's transition (with its local writes) and creation without arrays.
        [commitOneFunction, createOneFunction],
        // 8 → 9
        [
            """
            CREATE TABLE IF NOT EXISTS S.saga_participants (
                topology text NOT NULL,
                service text NOT NULL,
                instance text NOT NULL,
                commands text[] NOT NULL,
                started_at timestamptz NOT NULL,
                last_seen timestamptz NOT NULL,
                report_interval_ms bigint NOT NULL,
                PRIMARY KEY (topology, service, instance)
            )
            """
        ],
    ]

    /// The name of the state seal's key in `sagakit_keys`.
    static let stateSealKeyName = "state-seal"

    /// The sagas with these ids, JSON as text and times as Unix milliseconds.
    private static let loadFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_load(p_ids text[])
        RETURNS TABLE (id text, name text, status text, current_step integer, attempt integer, payload text,
            context text, history text, failure_reason text, deadline int8, reap_attempts integer,
            created_at int8, updated_at int8, version int8)
        LANGUAGE plpgsql STABLE \(indexOnly) AS $$
        BEGIN
            RETURN QUERY
            SELECT s.id, s.name, s.status, s.current_step, s.attempt, s.payload::text, s.context::text,
                s.history::text, s.failure_reason, (extract(epoch FROM s.deadline) * 1000)::int8, s.reap_attempts,
                (extract(epoch FROM s.created_at) * 1000)::int8, (extract(epoch FROM s.updated_at) * 1000)::int8,
                s.version
            FROM S.sagas AS s WHERE s.id = ANY(p_ids);
        END
        $$
        """

    /// Deletes sent messages (they are of no further use). Its transaction commits
    /// asynchronously: a mark lost in a crash of the server only makes the relay publish the
    /// message again, which consumers ignore (the saga's version has moved on), so the mark does
    /// not wait for a WAL flush of its own.
    private static let markSentFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_mark_sent(p_ids text[]) RETURNS void LANGUAGE plpgsql \(indexOnly) AS $$
        BEGIN
            PERFORM set_config('synchronous_commit', 'off', true);
            DELETE FROM S.outbox AS o WHERE o.id = ANY(p_ids);
        END
        $$
        """

    /// Compare-and-swap of many sagas; outbox rows for the sagas that were updated. Returns the
    /// ids of the updated sagas.
    private static let commitFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_commit(\(sagaParameters), \(outboxParameters))
        RETURNS SETOF text LANGUAGE plpgsql \(indexOnly) AS $$
        BEGIN
            RETURN QUERY
            WITH updated AS (
                UPDATE S.sagas AS s SET name = u.name, status = u.status, current_step = u.current_step,
                    attempt = u.attempt, payload = u.payload::json, context = u.context::json,
                    history = u.history::json,
                    failure_reason = CASE WHEN u.has_failure THEN u.failure_reason END,
                    deadline = \(deadline), reap_attempts = u.reap_attempts,
                    created_at = timestamptz 'epoch' + u.created_at * interval '1 millisecond',
                    updated_at = timestamptz 'epoch' + u.updated_at * interval '1 millisecond',
                    version = u.expected + 1, lease_owner = NULL, lease_until = NULL
                FROM \(sagaRows)
                WHERE s.id = u.id AND s.version = u.expected
                RETURNING s.id
            ), messages AS (
                \(insertOutbox(from: "updated"))
            )
            SELECT updated.id FROM updated;
        END
        $$
        """

    /// ``commitFunction`` and then, in the same statement (so in one transaction), the local writes
    /// of the sagas whose compare-and-swap held, in order, each with `EXECUTE … USING` its
    /// parameters as text (the statement refers to `($1)[n]` with a cast; see
    /// ``PostgresBatches``). A write that affects a number of rows its expectation refuses
    /// (`-1` any, `-2` at least one, another value exactly that many) raises `P0001`; any failure rolls the
    /// whole statement back, and the caller runs the batch again with a savepoint per saga. Not
    /// `indexOnly`: those settings would apply to the services' own statements.
    private static let commitWithWritesFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_commit_with_writes(\(sagaParameters), \(outboxParameters),
            w_saga_ids text[], w_statements text[], w_values text[], w_first int4[], w_counts int4[], w_expected int8[])
        RETURNS SETOF text LANGUAGE plpgsql AS $$
        DECLARE
            swapped text[];
            affected int8;
        BEGIN
            SELECT coalesce(array_agg(c.id), '{}') INTO swapped
            FROM S.sagakit_commit(p_ids, p_expected, p_names, p_statuses, p_steps, p_attempts, p_payloads, p_contexts,
                p_histories, p_failure_reasons, p_has_failure, p_deadlines, p_reap_attempts, p_created_at, p_updated_at,
                m_ids, m_saga_ids, m_exchanges, m_routing_keys, m_bodies, m_headers, m_created_at, m_topologies) AS c(id);
            FOR i IN 1 .. coalesce(array_length(w_statements, 1), 0) LOOP
                CONTINUE WHEN NOT (w_saga_ids[i] = ANY (swapped));
                \(runLocalWrite)
            END LOOP;
            RETURN QUERY SELECT unnest(swapped);
        END
        $$
        """

    /// Local write `i` of the commit functions' arrays, run with `EXECUTE … USING` its parameters
    /// as text; a row count its expectation refuses (`-1` any, `-2` at least one, another value
    /// exactly that many) raises `P0001`. Needs `affected int8` declared.
    private static let runLocalWrite = """
        EXECUTE w_statements[i] USING w_values[w_first[i] : w_first[i] + w_counts[i] - 1];
                        GET DIAGNOSTICS affected = ROW_COUNT;
                        IF (w_expected[i] = -2 AND affected < 1) OR (w_expected[i] NOT IN (-1, -2) AND affected <> w_expected[i]) THEN
                            RAISE EXCEPTION 'local write % affected % rows', i, affected USING ERRCODE = 'P0001';
                        END IF;
        """

    /// One saga's compare-and-swap, its outbox rows and then its local writes (each with `EXECUTE …
    /// USING` its parameters as text, checked as in ``commitWithWritesFunction``), in one
    /// statement. Returns the saga's id, or `NULL` when the compare-and-swap found another version
    /// (or no saga), in which case nothing is written. The saga's statements look it up by primary
    /// key with a generic plan (``indexOnly``); the local writes run with the session's own
    /// `enable_seqscan` and `plan_cache_mode` (`SET LOCAL … TO DEFAULT`, undone when the function
    /// returns), as they do in ``commitWithWritesFunction``.
    private static let commitOneFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_commit_one(\(sagaScalarParameters), \(outboxParameters),
            w_statements text[], w_values text[], w_first int4[], w_counts int4[], w_expected int8[])
        RETURNS text LANGUAGE plpgsql \(indexOnly) AS $$
        DECLARE
            affected int8;
        BEGIN
            UPDATE S.sagas AS s SET name = p_name, status = p_status, current_step = p_step, attempt = p_attempt,
                payload = p_payload::json, context = p_context::json, history = p_history::json,
                failure_reason = CASE WHEN p_has_failure THEN p_failure_reason END,
                deadline = \(scalarDeadline), reap_attempts = p_reap_attempts,
                created_at = timestamptz 'epoch' + p_created_at * interval '1 millisecond',
                updated_at = timestamptz 'epoch' + p_updated_at * interval '1 millisecond',
                version = p_expected + 1, lease_owner = NULL, lease_until = NULL
            WHERE s.id = p_id AND s.version = p_expected;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            \(insertOneSagasOutbox);
            IF coalesce(array_length(w_statements, 1), 0) > 0 THEN
                SET LOCAL enable_seqscan TO DEFAULT;
                SET LOCAL plan_cache_mode TO DEFAULT;
                FOR i IN 1 .. array_length(w_statements, 1) LOOP
                    \(runLocalWrite)
                END LOOP;
            END IF;
            RETURN p_id;
        END
        $$
        """

    /// One saga's creation with its outbox rows, when its id is new. Returns the saga's id, or
    /// `NULL` when a saga with that id exists (nothing is written then).
    private static let createOneFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_create_one(\(sagaScalarParameters), \(outboxParameters))
        RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
        BEGIN
            INSERT INTO S.sagas (id, name, status, current_step, attempt, payload, context, history,
                failure_reason, deadline, reap_attempts, created_at, updated_at, version)
            VALUES (p_id, p_name, p_status, p_step, p_attempt, p_payload::json, p_context::json, p_history::json,
                CASE WHEN p_has_failure THEN p_failure_reason END, \(scalarDeadline), p_reap_attempts,
                timestamptz 'epoch' + p_created_at * interval '1 millisecond',
                timestamptz 'epoch' + p_updated_at * interval '1 millisecond', 1)
            ON CONFLICT (id) DO NOTHING;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            \(insertOneSagasOutbox);
            RETURN p_id;
        END
        $$
        """

    /// Creation of many sagas (those whose id is new) with their outbox rows. Returns the ids of
    /// the created sagas.
    private static let createFunction = """
        CREATE OR REPLACE FUNCTION S.sagakit_create(\(sagaParameters), \(outboxParameters))
        RETURNS SETOF text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
        BEGIN
            RETURN QUERY
            WITH inserted AS (
                INSERT INTO S.sagas AS t (id, name, status, current_step, attempt, payload, context, history,
                    failure_reason, deadline, reap_attempts, created_at, updated_at, version)
                SELECT u.id, u.name, u.status, u.current_step, u.attempt, u.payload::json, u.context::json,
                    u.history::json, CASE WHEN u.has_failure THEN u.failure_reason END, \(deadline),
                    u.reap_attempts, timestamptz 'epoch' + u.created_at * interval '1 millisecond',
                    timestamptz 'epoch' + u.updated_at * interval '1 millisecond', 1
                FROM \(sagaRows)
                ON CONFLICT (id) DO NOTHING
                RETURNING t.id
            ), messages AS (
                \(insertOutbox(from: "inserted"))
            )
            SELECT inserted.id FROM inserted;
        END
        $$
        """

    /// The functions that look sagas or messages up by id forbid sequential scans and always use
    /// a generic plan. PL/pgSQL would otherwise choose per connection between a generic plan and
    /// planning every call: it planned every call (measured with `pg_stat_statements`, planning
    /// took as long as running the statement: about 0.5 ms of each 1.4 ms commit call), and a
    /// generic plan made while a table was small scanned the table instead of its primary key
    /// (measured, this halved the saga benchmark's throughput from run to run). The primary key
    /// is always the right access path for them, so the generic plan is the right plan.
    private static let indexOnly = "SET enable_seqscan = off SET plan_cache_mode = force_generic_plan"

    /// The saga columns as function parameters, in the order ``SagaColumns`` binds them.
    private static let sagaParameters = """
        p_ids text[], p_expected int8[], p_names text[], p_statuses text[], p_steps int8[], p_attempts int8[], \
        p_payloads text[], p_contexts text[], p_histories text[], p_failure_reasons text[], p_has_failure bool[], \
        p_deadlines int8[], p_reap_attempts int8[], p_created_at int8[], p_updated_at int8[]
        """
    /// One saga's columns as function parameters, in the order ``SagaScalars`` binds them (the
    /// expected version is `p_expected`).
    private static let sagaScalarParameters = """
        p_id text, p_expected int8, p_name text, p_status text, p_step int8, p_attempt int8, p_payload text, \
        p_context text, p_history text, p_failure_reason text, p_has_failure bool, p_deadline int8, \
        p_reap_attempts int8, p_created_at int8, p_updated_at int8
        """
    /// The outbox columns as function parameters, in the order ``OutboxRows`` binds them.
    private static let outboxParameters = """
        m_ids text[], m_saga_ids text[], m_exchanges text[], m_routing_keys text[], m_bodies bytea[], \
        m_headers text[], m_created_at int8[], m_topologies text[]
        """
    /// The saga parameters as rows.
    private static let sagaRows = """
        unnest(p_ids, p_expected, p_names, p_statuses, p_steps, p_attempts, p_payloads, p_contexts, p_histories, \
        p_failure_reasons, p_has_failure, p_deadlines, p_reap_attempts, p_created_at, p_updated_at)
        AS u(id, expected, name, status, current_step, attempt, payload, context, history, failure_reason, \
        has_failure, deadline, reap_attempts, created_at, updated_at)
        """
    /// A saga row's deadline (`u.deadline`, Unix milliseconds; ``PostgresBatches/noDeadline``
    /// for none) as a `timestamptz`.
    private static let deadline = """
        CASE WHEN u.deadline = \(PostgresBatches.noDeadline) THEN NULL \
        ELSE timestamptz 'epoch' + u.deadline * interval '1 millisecond' END
        """

    /// ``deadline`` for the scalar parameter `p_deadline`.
    private static let scalarDeadline = """
        CASE WHEN p_deadline = \(PostgresBatches.noDeadline) THEN NULL \
        ELSE timestamptz 'epoch' + p_deadline * interval '1 millisecond' END
        """

    /// The outbox `INSERT` of every message of the arrays (all of one saga), in order.
    private static let insertOneSagasOutbox = """
        INSERT INTO S.outbox (id, saga_id, exchange, routing_key, body, headers, created_at, topology, next_attempt_at)
                SELECT m.id, m.saga_id, m.exchange, m.routing_key, m.body, m.headers::json,
                    timestamptz 'epoch' + m.created_at * interval '1 millisecond', m.topology,
                    timestamptz 'epoch' + m.created_at * interval '1 millisecond'
                FROM unnest(m_ids, m_saga_ids, m_exchanges, m_routing_keys, m_bodies, m_headers, m_created_at, m_topologies)
                    WITH ORDINALITY AS m(id, saga_id, exchange, routing_key, body, headers, created_at, topology, n)
                ORDER BY m.n
                ON CONFLICT (id) DO NOTHING
        """

    /// The outbox `INSERT` of the messages whose saga is in the CTE `source`.
    private static func insertOutbox(from source: String) -> String {
        """
        INSERT INTO S.outbox (id, saga_id, exchange, routing_key, body, headers, created_at, topology,
                        next_attempt_at)
                    SELECT m.id, m.saga_id, m.exchange, m.routing_key, m.body, m.headers::json,
                        timestamptz 'epoch' + m.created_at * interval '1 millisecond', m.topology,
                        timestamptz 'epoch' + m.created_at * interval '1 millisecond'
                    FROM unnest(m_ids, m_saga_ids, m_exchanges, m_routing_keys, m_bodies, m_headers, m_created_at,
                        m_topologies)
                        WITH ORDINALITY AS m(id, saga_id, exchange, routing_key, body, headers, created_at, topology, n)
                    WHERE m.saga_id IN (SELECT \(source).id FROM \(source))
                    ORDER BY m.n
                    ON CONFLICT (id) DO NOTHING
        """
    }

    /// Creates or migrates the schema in one transaction under a transaction-scoped advisory lock.
    /// Every statement goes through ``PostgresStatement`` (so a connection the server closes
    /// fails the migration instead of hanging it), and the whole migration gives up after
    /// `timeout` (cancelling it closes the connection), so a store's `run()` never waits for ever
    /// at start-up.
    ///
    /// Returns the key of the state seal (``PostgresStateSeal``), made from `newKey` by the first
    /// process that opens the store. With `migrates` false, a schema that is missing or older
    /// fails with `schemaTooOld` and the transaction (with whatever it created) is rolled back.
    static func migrate(
        _ connection: PostgresConnection, namespace: String, schema: String, location: String,
        timeout: Duration, newKey: [UInt8], migrates: Bool = true, logger: Logger
    ) async throws -> [UInt8] {
        @Sendable func run(_ query: PostgresQuery) async throws -> PostgresQueryResult {
            try await PostgresStatement.run(query, on: connection, logger: logger)
        }
        @Sendable func run(_ sql: String) async throws {
            let text = sql.replacingOccurrences(of: "S.", with: "\(namespace).")
            _ = try await run(PostgresQuery(unsafeSQL: text))
        }
        let lockKey = "sagakit.schema.\(schema)"
        let holder = Mutex<LockHolder?>(nil)
        let keyHex = Hex.text(newKey)
        let keyName = stateSealKeyName
        let steps: @Sendable () async throws -> (Int, Int, [UInt8]) = {
            _ = try await run("BEGIN")
            do {
                let tryLock: PostgresQuery = "SELECT pg_try_advisory_xact_lock(hashtext(\(lockKey)))"
                // Processes starting together take turns within milliseconds; one that waits
                // longer (a second, at most a quarter of the time it has) says for whom.
                let quietUntil = ContinuousClock.now + min(.seconds(1), timeout / 4)
                var locked = false
                while true {
                    for row in try await run(tryLock).rows { locked = try row.decode(Bool.self) }
                    guard !locked, ContinuousClock.now < quietUntil else { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                if !locked {
                    // Another session is creating or migrating the schema, or is stuck doing so:
                    // say who, then wait for it (bounded by `timeout`).
                    let found = try await lockHolder(lockKey, run: run)
                    holder.withLock { $0 = found }
                    logger.warning(
                        "waiting for another session's migration of the PostgreSQL saga store's schema",
                        metadata: [
                            "store.location": "\(location)", "store.schema.name": "\(schema)",
                            "store.lock.holder": "\(found?.description ?? "(gone)")",
                        ])
                    let lock: PostgresQuery = "SELECT pg_advisory_xact_lock(hashtext(\(lockKey)))"
                    _ = try await run(lock)
                }
                try await run("CREATE SCHEMA IF NOT EXISTS \(namespace)")
                try await run(
                    """
                    CREATE TABLE IF NOT EXISTS S.sagakit_schema (
                        id integer PRIMARY KEY CHECK (id = 1),
                        version integer NOT NULL,
                        migrated_at timestamptz NOT NULL
                    )
                    """
                )
                var found = 0
                let rows = try await run(
                    PostgresQuery(unsafeSQL: "SELECT version FROM \(namespace).sagakit_schema WHERE id = 1"))
                for row in rows.rows { found = try row.decode(Int.self) }
                guard found <= currentVersion else {
                    throw SagaError(
                        .schemaTooNew,
                        "the PostgreSQL store at \(location) (schema \(schema)) has schema version \(found); this SagaKit knows up to \(currentVersion)",
                        recoverySuggestion: "upgrade SagaKit in this process, or use another schema"
                    )
                }
                if found < currentVersion && !migrates {
                    throw SagaError.schemaNotMigrated(
                        found: found, current: currentVersion, store: "the PostgreSQL store at \(location) (schema \(schema))",
                        check: "the schema (SAGAKIT_STORE_SCHEMA, or the URL's ?schema=) and the database")
                }
                if found < currentVersion {
                    for version in found..<currentVersion {
                        for statement in migrations[version] { try await run(statement) }
                    }
                    let record: PostgresQuery = """
                        INSERT INTO \(unescaped: namespace).sagakit_schema (id, version, migrated_at) VALUES (1, \(currentVersion), now())
                        ON CONFLICT (id) DO UPDATE SET version = excluded.version, migrated_at = excluded.migrated_at
                        """
                    _ = try await run(record)
                }
                // The key: made by the first process (under the lock), read by every other one,
                // which then writes nothing. Bound, never part of the statement's text.
                let selectKey: PostgresQuery =
                    "SELECT encode(key, 'hex') FROM \(unescaped: namespace).sagakit_keys WHERE name = \(keyName)"
                var key: [UInt8] = []
                for row in try await run(selectKey).rows { key = try Self.key(row.decode(String.self)) }
                if key.isEmpty {
                    let insertKey: PostgresQuery = """
                        INSERT INTO \(unescaped: namespace).sagakit_keys (name, key) VALUES (\(keyName), decode(\(keyHex), 'hex'))
                        ON CONFLICT (name) DO NOTHING
                        """
                    _ = try await run(insertKey)
                    for row in try await run(selectKey).rows { key = try Self.key(row.decode(String.self)) }
                }
                _ = try await run("COMMIT")
                return (found, currentVersion, key)
            } catch {
                // Ends the transaction (and its lock) on a connection that lives on; fails
                // harmlessly on one that is gone.
                _ = try? await run("ROLLBACK")
                throw error
            }
        }
        let (from, to, key) = try await withTimeLimit(
            timeout,
            timedOut: {
                let message =
                    "the PostgreSQL store at \(location) did not finish creating or migrating its schema (\(schema)) within \(timeout)"
                if let found = holder.withLock({ $0 }) {
                    return SagaError(
                        .storeUnavailable,
                        "\(message): \(found.description) holds the schema's migration lock",
                        recoverySuggestion:
                            "if that session is stuck, end it (SELECT pg_terminate_backend(\(found.pid))) and start again"
                    )
                }
                return SagaError(
                    .storeUnavailable, message,
                    recoverySuggestion:
                        "check that the server answers, and that no other session holds a lock on the schema's tables for long"
                )
            }, steps)
        if from != to {
            logger.info(
                "migrated the PostgreSQL saga store",
                metadata: ["store.location": "\(location)", "store.schema.from": "\(from)", "store.schema.to": "\(to)"]
            )
        }
        return key
    }

    /// A session holding the schema's migration lock, as `pg_stat_activity` shows it.
    struct LockHolder: Sendable, CustomStringConvertible {
        var pid: Int
        var applicationName: String
        var client: String
        var state: String
        /// How long its transaction has been open, in seconds.
        var transactionSeconds: Int?

        var description: String {
            let application = applicationName.isEmpty ? "" : ", application '\(PrintableText.escaped(applicationName))'"
            let open = transactionSeconds.map { ", transaction open for \($0) s" } ?? ""
            return "session \(pid) (\(PrintableText.escaped(client))\(application), \(PrintableText.escaped(state))\(open))"
        }
    }

    /// The session that holds the advisory lock on `lockKey` now, if any (a lock on one 64-bit
    /// key: its high half in `classid`, its low half in `objid`, `objsubid` 1).
    static func lockHolder(
        _ lockKey: String, run: @Sendable (PostgresQuery) async throws -> PostgresQueryResult
    ) async throws -> LockHolder? {
        let query: PostgresQuery = """
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'),
                coalesce(a.state, 'unknown'), extract(epoch FROM now() - a.xact_start)::int8
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND ((l.classid::int8 << 32) | l.objid::int8) = hashtext(\(lockKey))::int8
            LIMIT 1
            """
        for row in try await run(query).rows {
            let (pid, application, client, state, seconds) = try row.decode((Int, String, String, String, Int?).self)
            return LockHolder(
                pid: pid, applicationName: application, client: client, state: state, transactionSeconds: seconds)
        }
        return nil
    }

    /// The key as `encode(key, 'hex')` reads it.
    static func key(_ text: String) throws -> [UInt8] {
        guard let bytes = Hex.bytes(text) else { throw SagaError(.invalidState, "a key in sagakit_keys is not hexadecimal") }
        return bytes
    }
}
