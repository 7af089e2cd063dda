import Foundation
import Logging
import PostgresNIO
import SagaCore
import SagaTestSupport
import SagaTesting
import Testing

@testable import SagaPostgres

@Suite("PostgreSQL store", .timeLimit(.minutes(2)))
struct PostgresStoreTests {
    @Test func urlsAreParsed() throws {
        let full = try PostgresSagaStore.Configuration(
            url: "postgres://app:p%40ss@db.internal:6543/shop?sslmode=require&schema=sagas"
        )
        #expect(full.host == "db.internal")
        #expect(full.port == 6543)
        #expect(full.username == "app")
        #expect(full.password == "p@ss")
        #expect(full.database == "shop")
        #expect(full.tls == .require)
        #expect(full.schema == "sagas")
        #expect(full.location == "db.internal:6543/shop")

        let local = try PostgresSagaStore.Configuration(url: "postgresql://app@127.0.0.1/shop")
        #expect(local.port == 5432)
        #expect(local.password == nil)
        #expect(local.tls == .disable)
        #expect(local.schema == "public")
        #expect(local.applicationName.hasPrefix("sagakit "))
        #expect(try PostgresSagaStore.Configuration(url: "postgres://app@h/d?application_name=orders").applicationName == "orders")
        #expect(try PostgresSagaStore.Configuration(url: "postgres://app@db.internal/shop").tls == .prefer)

        for bad in ["mysql://a@b/c", "postgres:///db", "postgres://host/db", "postgres://a@h/d?sslmode=sometimes"] {
            #expect(throws: SagaError.self, "\(bad)") { try PostgresSagaStore.Configuration(url: bad) }
        }
        #expect(throws: SagaError.self) { try PostgresSagaStore.quotedSchema("bad\"name") }
        #expect(throws: SagaError.self) { try PostgresSagaStore.quotedSchema("1abc") }
        #expect(try PostgresSagaStore.quotedSchema("sagas_2") == "\"sagas_2\"")
    }

    @Test func anUnreachableServerIsStoreUnavailableSayingWhere() async throws {
        // Nothing listens on port 1.
        let store = try PostgresSagaStore(url: "postgres://sagakit:secret@127.0.0.1:1/sagakit")
        let error = await Conformance.expectSagaError(.storeUnavailable) {
            try await store.withRunning { _ in }
        }
        #expect(error?.message.contains("127.0.0.1:1/sagakit") == true, "\(String(describing: error))")
        #expect(error?.message.contains("secret") == false)
    }

    @Test func aWrongPasswordIsStoreUnavailable() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.password = "wrong-\(UUID())"
        let error = await Conformance.expectSagaError(.storeUnavailable) {
            try await PostgresSagaStore(configuration: configuration).withRunning { _ in }
        }
        #expect(error?.message.contains(configuration.location) == true, "\(String(describing: error))")
    }

    @Test func aSchemaFromANewerSagaKitIsRefused() async throws {
        try await withPostgresStore { _, store in
            try await store.executeForTesting(
                "UPDATE \(store.namespace).sagakit_schema SET version = \(PostgresSagaStore.schemaVersion + 1)"
            )
            var configuration = try PostgresSagaStore.Configuration(url: try await TestPostgres.requireURL())
            configuration.schema = store.schema
            let newer = try PostgresSagaStore(configuration: configuration)
            let error = await Conformance.expectSagaError(.schemaTooNew) { try await newer.withRunning { _ in } }
            #expect(error?.message.contains("\(PostgresSagaStore.schemaVersion + 1)") == true)
            // An operation on the store that failed to start says why.
            let again = await Conformance.expectSagaError(.schemaTooNew) { _ = try await newer.load("any") }
            #expect(again?.message == error?.message)
        }
    }

    /// A database left by SagaKit's first schema (version 1: no functions, an index on the
    /// outbox's saga id, sent messages kept with `sent_at`, no topology on outbox messages) is
    /// upgraded in place, keeps its sagas and messages and works with the batched functions.
    @Test func aVersion1SchemaIsUpgradedWithItsData() async throws {
        try await withPostgresStore { _, store in
            let namespace = store.namespace
            let saga = try await store.create(Conformance.makeState(payload: ["n": 1]), outbox: []).state
            let pending = Conformance.makeMessage(sagaID: saga.id)
            try await store.commit(SagaTransition(state: saga, expectedVersion: 1, outbox: [pending]))
            for statement in [
                "DROP FUNCTION \(namespace).sagakit_commit", "DROP FUNCTION \(namespace).sagakit_create",
                "DROP FUNCTION \(namespace).sagakit_load", "DROP FUNCTION \(namespace).sagakit_mark_sent",
                "DROP INDEX \(namespace).outbox_due",
                "ALTER TABLE \(namespace).outbox DROP COLUMN topology, DROP COLUMN attempts, DROP COLUMN next_attempt_at",
                "CREATE INDEX outbox_pending ON \(namespace).outbox (created_at, seq) WHERE sent_at IS NULL",
                "CREATE INDEX outbox_saga ON \(namespace).outbox (saga_id)",
                """
                INSERT INTO \(namespace).outbox (id, saga_id, exchange, routing_key, body, headers, created_at, sent_at)
                VALUES ('sent-by-v1', '\(saga.id)', 'sagas', 'order.reserve', '\\x00', '{}', now() - interval '1 hour', now())
                """,
                """
                INSERT INTO \(namespace).outbox (id, saga_id, exchange, routing_key, body, headers, created_at)
                VALUES ('delayed-by-v1', '\(saga.id)', 'shop.delay.30s', 'order.reserve', '\\x00', '{}', now() - interval '1 hour')
                """,
                "UPDATE \(namespace).sagakit_schema SET version = 1",
            ] {
                try await store.executeForTesting(statement)
            }

            var configuration = try PostgresSagaStore.Configuration(url: try await TestPostgres.requireURL())
            configuration.schema = store.schema
            try await PostgresSagaStore(configuration: configuration).withRunning { upgraded in
                let versions = try await upgraded.rows("read", "SELECT version FROM \(unescaped: namespace).sagakit_schema")
                #expect(try versions.first?["version"].decode(Int.self) == PostgresSagaStore.schemaVersion)
                let index = try await upgraded.rows(
                    "read",
                    "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = \(store.schema) AND indexname = 'outbox_saga'")
                #expect(try index.first?["n"].decode(Int.self) == 0)

                let loaded = try await upgraded.load(saga.id)
                #expect(loaded.version == 2)
                var next = loaded
                next.payload["n"] = 2
                let committed = try await upgraded.commit(SagaTransition(state: next, expectedVersion: 2, outbox: []))
                #expect(committed.version == 3)
                let outbox = try await upgraded.pendingOutbox(createdBefore: .distantFuture, limit: 10)
                #expect(outbox.map(\.id) == ["delayed-by-v1", pending.id], "a message sent under version 1 stays sent")
                // Messages of version 1 got their topology from their exchange.
                let shop = try await upgraded.pendingOutbox(topology: "shop", createdBefore: .distantFuture, now: Date(), limit: 10)
                #expect(shop.map(\.id) == ["delayed-by-v1"])
                let sagas = try await upgraded.pendingOutbox(topology: "sagas", createdBefore: .distantFuture, now: Date(), limit: 10)
                #expect(sagas.map(\.id) == [pending.id])
                try await upgraded.markSent([pending.id, "delayed-by-v1"])
                #expect(try await upgraded.pendingOutbox(createdBefore: .distantFuture, limit: 10).isEmpty)
            }
        }
    }

    @Test func processesMigratingTogetherTakeTurns() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
        configuration.maximumConnections = 2
        let stores = try (0..<6).map { _ in try PostgresSagaStore(configuration: configuration) }
        let state = Conformance.makeState()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for store in stores { group.addTask { try await store.run() } }
            // Each waits until its store has migrated (or failed to).
            _ = try await stores[0].create(state, outbox: [])
            for store in stores { #expect(try await store.load(state.id).id == state.id) }
            try await stores[0].executeForTesting("DROP SCHEMA \(stores[0].namespace) CASCADE")
            for store in stores { await store.shutdown() }
            try await group.waitForAll()
        }
    }

    /// The state seal's key is made once per schema and shared by every store on it: a copy one
    /// process sealed verifies in another, a changed copy or a seal from another schema does not,
    /// and a store seals nothing before it has read the key.
    @Test func theStateSealsKeyIsSharedByTheSchemasStoresAndNoOthers() async throws {
        guard let shared = try await testPostgresConfiguration(), let another = try await testPostgresConfiguration() else { return }
        let bytes = Array(#"{"id":"s-1","payload":{"amount":5}}"#.utf8)
        let first = try PostgresSagaStore(configuration: shared)
        #expect(first.stateSeal?.seal(bytes) == nil)
        let seal = try await first.withRunning { store in try #require(store.stateSeal?.seal(bytes)) }
        #expect(seal.count == 64 && seal.allSatisfy(\.isHexDigit))
        try await PostgresSagaStore(configuration: shared).withRunning { second in
            let verifier = try #require(second.stateSeal)
            #expect(verifier.verifies(seal, of: bytes))
            #expect(!verifier.verifies(seal, of: Array(#"{"id":"s-1","payload":{"amount":500}}"#.utf8)))
            #expect(!verifier.verifies(String(seal.dropLast()) + (seal.last == "0" ? "1" : "0"), of: bytes))
            #expect(!verifier.verifies("not a seal", of: bytes))
            let keys = try await second.rows("read", "SELECT name, length(key) AS bytes FROM \(unescaped: second.namespace).sagakit_keys")
            #expect(keys.count == 1)
            #expect(try keys.first?["bytes"].decode(Int.self) == 32)
            try await second.executeForTesting("DROP SCHEMA \(second.namespace) CASCADE")
        }
        try await PostgresSagaStore(configuration: another).withRunning { other in
            #expect(other.stateSeal?.verifies(seal, of: bytes) == false)
            try await other.executeForTesting("DROP SCHEMA \(other.namespace) CASCADE")
        }
    }

    /// A batch of transitions with local writes is one statement (`sagakit_commit_with_writes`):
    /// every parameter type reads back exactly, a lost compare-and-swap runs none of its saga's
    /// writes, and a row count the expectation refuses rolls the whole statement back. (The
    /// store falls back to a transaction with savepoints when this statement fails, so the
    /// conformance checks alone would pass without it.)
    @Test func aBatchWithLocalWritesIsOneStatement() async throws {
        try await withPostgresStore { _, store in
            let table = "\(store.namespace).local_values"
            try await store.executeForTesting(
                "CREATE TABLE \(table) (k text PRIMARY KEY, i int8, d float8, t text, b bool, y bytea, n int8)")
            let state = Conformance.makeState()
            _ = try await store.create(state, outbox: [])
            func commit(expected: Int64, _ writes: [LocalWrite]) async throws -> [String] {
                var next = state
                next.version = expected + 1
                next.currentStep = Int(expected)
                let item = PostgresBatches.LocalCommit(saga: try EncodedSaga(next, expected: expected, outbox: []), writes: writes)
                return try await store.batches.rows("test", store.batches.commitWithWritesQuery([item])).map {
                    try $0["id"].decode(String.self)
                }
            }
            let text = "it's \"quoted\", $1 and $$dollars$$ -- not a comment"
            let insert = LocalWrite(
                "INSERT INTO \(table) VALUES ($1, $2, $3, $4, $5, $6, $7) -- $8 is no placeholder",
                parameters: [.text("a"), .int(-42), .double(0.1), .text(text), .bool(true), .bytes([0, 255, 16]), .null],
                expecting: .rows(1))
            #expect(
                try await commit(expected: 1, [insert, LocalWrite("UPDATE \(table) SET i = i + $1 WHERE k = 'a'", .int(2))]) == [state.id])
            let row = try #require(
                try await store.rows("read", "SELECT i, d, t, b, encode(y, 'hex') AS y, n FROM \(unescaped: table) WHERE k = 'a'").first)
            #expect(try row["i"].decode(Int64.self) == -40)
            #expect(try row["d"].decode(Double.self) == 0.1)
            #expect(try row["t"].decode(String.self) == text)
            #expect(try row["b"].decode(Bool.self) == true)
            #expect(try row["y"].decode(String.self) == "00ff10")
            #expect(try row["n"].decode(Int64?.self) == nil)

            // A lost compare-and-swap (version 1 is gone) runs none of its writes.
            let other = LocalWrite("INSERT INTO \(table) (k) VALUES ($1)", .text("lost"))
            #expect(try await commit(expected: 1, [other]).isEmpty)
            // A refused row count rolls everything back: the saga stays at version 2.
            let refused = LocalWrite("UPDATE \(table) SET i = 0 WHERE k = $1", parameters: [.text("a")], expecting: .rows(2))
            await #expect(throws: (any Error).self) { try await commit(expected: 2, [other, refused]) }
            #expect(try await store.load(state.id).version == 2)
            let count = try await store.rows("count", "SELECT count(*) AS n FROM \(unescaped: table)")
            #expect(try count.first?["n"].decode(Int64.self) == 1)
        }
    }

    /// PostgreSQL's `text` cannot hold U+0000: a failure reason with one (a handler's error text)
    /// is stored with U+FFFD instead of failing its transition's commit on every delivery; the
    /// history (JSON) keeps it. Data the server refuses is `storeRefused` and says so, not
    /// "check the server".
    /// Statements that stop getting answers — here another session holds a lock on the sagas'
    /// table, as a paused or unreachable server would look — are reported once they have been
    /// waiting for the threshold, and their end is reported too (an operator's outside trial:
    /// a 20 s pause of PostgreSQL logged nothing of SagaKit's while every saga waited).
    @Test func statementsThatGetNoAnswerAreReportedAndSoIsTheirEnd() async throws {
        guard var configuration = try await testPostgresConfiguration() else { return }
        let logs = CapturedLogs()
        configuration.maximumConnections = 4
        try await PostgresSagaStore(configuration: configuration, logger: logs.logger).withRunning { store in
            let state = Conformance.makeState()
            _ = try await store.create(state, outbox: [])
            // Holds the lock for 13 s, from a connection of its own pool.
            let holder = try PostgresSagaStore(configuration: configuration)
            try await holder.withRunning { holder in
                async let held: Void = holder.executeForTesting(
                    "DO $$ BEGIN LOCK TABLE \(store.namespace).sagas IN ACCESS EXCLUSIVE MODE; PERFORM pg_sleep(13); END $$")
                // The lock is held (on a busy machine the holder can take seconds to get there).
                let heldQuery: PostgresQuery = """
                    SELECT count(*)::int8 AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                    JOIN pg_namespace s ON s.oid = c.relnamespace \
                    WHERE s.nspname = \(configuration.schema) AND c.relname = 'sagas' AND l.mode = 'AccessExclusiveLock' AND l.granted
                    """
                var isHeld = false
                for _ in 0..<100 where !isHeld {
                    isHeld = try await holder.rows("held", heldQuery).first?["n"].decode(Int.self) == 1
                    if !isHeld { try await Task.sleep(for: .milliseconds(50)) }
                }
                try #require(isHeld, "the lock was not taken within 5 s")
                let started = ContinuousClock.now
                let loaded = try await store.load(state.id)
                let waited = started.duration(to: .now)
                try await held
                #expect(loaded.id == state.id)
                #expect(waited >= .seconds(9), "the load waited \(waited)")
                let stalls = logs.warnings.filter { $0.contains("had no answer to a statement for") }
                #expect(stalls.count == 1, "\(logs.warnings)")
                #expect(stalls.first?.contains("at \(configuration.location)") == true)
                #expect(stalls.first?.contains("nothing is lost") == true)
                #expect(stalls.first?.contains("store.waitingStatements=") == true, "\(stalls)")
                // The end is said within a tick after the statement finished.
                try await Task.sleep(for: .milliseconds(600))
                #expect(logs.all.contains { $0.contains("answers again, after") }, "\(logs.all.suffix(5))")
            }
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
        }
    }

    @Test func aFailureReasonWithANulCharacterIsStored() async throws {
        try await withPostgresStore { _, store in
            let state = Conformance.makeState()
            _ = try await store.create(state, outbox: [])
            var next = state
            next.failureReason = "card\u{0}declined"
            next.history = [
                StepRecord(
                    step: 0, stepName: "charge", phase: .action, attempt: 1, startedAt: Date(), finishedAt: Date(), outcome: .failed,
                    error: "card\u{0}declined")
            ]
            try await store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: []))
            let stored = try await store.load(state.id)
            #expect(stored.version == 2 && stored.failureReason == "card\u{FFFD}declined")
            #expect(stored.history.first?.error == "card\u{0}declined")

            let refused = await Conformance.expectSagaError(.storeRefused) {
                _ = try await store.rows("refused", "SELECT 'x'::int")
            }
            #expect(refused?.recoverySuggestion?.contains("SQLSTATE 22P02") == true, "\(String(describing: refused))")
            #expect(refused?.recoverySuggestion?.contains("check that the server runs") == false)
            // A statement the server refuses itself (SQLSTATE class 42) is an operator's fix
            // after which it works: not refused data, and the suggestion says what to check.
            let missing = await Conformance.expectSagaError(.storeUnavailable) {
                _ = try await store.rows("missing", "SELECT * FROM sagakit_no_such_table")
            }
            #expect(missing?.recoverySuggestion?.contains("SQLSTATE 42P01") == true, "\(String(describing: missing))")
            #expect(missing?.recoverySuggestion?.contains("migrated by this SagaKit") == true)
        }
    }

    /// A migration that cannot finish (here: another session holds the schema's lock for good)
    /// makes `run()` fail with a clear error after twice the statement timeout (at least 10 s), instead of
    /// waiting for ever at start-up; the start says within a second that it waits, and both name the
    /// session that holds the lock (a user's store waited 23 s without a word).
    @Test func aMigrationThatCannotFinishFailsTheStart() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
        configuration.statementTimeout = .seconds(2)
        let holder = try await PostgresConnection.connect(
            configuration: PostgresConnection.Configuration(
                host: configuration.host, port: configuration.port, username: configuration.username,
                password: configuration.password, database: configuration.database, tls: .disable),
            id: 1, logger: Logger(label: "test"))
        let lockKey = "sagakit.schema.\(configuration.schema)"
        _ = try await holder.query("SET application_name = 'stuck-migrator'", logger: Logger(label: "test"))
        _ = try await holder.query("SELECT pg_advisory_lock(hashtext(\(lockKey)))", logger: Logger(label: "test"))
        var holderPID = 0
        for try await pid in try await holder.query("SELECT pg_backend_pid()", logger: Logger(label: "test"))
            .decode(Int.self)
        { holderPID = pid }
        let logs = CapturedLogs()
        let store = try PostgresSagaStore(configuration: configuration, logger: logs.logger)
        let started = ContinuousClock.now
        await #expect {
            try await store.run()
        } throws: { error in
            let message = "\(error)"
            return (error as? SagaError)?.code == .storeUnavailable
                && message.contains("did not finish creating or migrating its schema")
                && message.contains("session \(holderPID) (")
                && message.contains("application 'stuck-migrator'")
                && (error as? SagaError)?.recoverySuggestion?.contains("pg_terminate_backend(\(holderPID))") == true
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .seconds(10) && waited < .seconds(25), "run() failed after \(waited)")
        let waiting = logs.warnings.filter { $0.contains("waiting for another session's migration") }
        #expect(waiting.count == 1, "\(logs.warnings)")
        #expect(waiting.first?.contains("session \(holderPID) (") == true, "\(waiting)")
        try await holder.close()
    }

    /// The store's connections carry its application name, so an operator looking at
    /// `pg_stat_activity` sees which process holds a session.
    @Test func connectionsNameTheApplication() async throws {
        guard var configuration = try await testPostgresConfiguration() else { return }
        let name = "sagakit-test-\(UUID().uuidString.prefix(8).lowercased())"
        configuration.applicationName = name
        let store = try PostgresSagaStore(configuration: configuration)
        let observer = try await PostgresConnection.connect(
            configuration: PostgresConnection.Configuration(
                host: configuration.host, port: configuration.port, username: configuration.username,
                password: configuration.password, database: configuration.database, tls: .disable),
            id: 1, logger: Logger(label: "test"))
        try await store.withRunning { store in
            _ = try await store.list(SagaQuery(limit: 1))
            var sessions = 0
            for try await count in try await observer.query(
                "SELECT count(*)::int8 FROM pg_stat_activity WHERE application_name = \(name)", logger: Logger(label: "test")
            ).decode(Int.self) { sessions = count }
            #expect(sessions >= 1)
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
        }
        try await observer.close()
    }

    @Test func aStoreCanUseAClientTheCallerRuns() async throws {
        guard let url = try await TestPostgres.url() else { return }
        let configuration = try PostgresSagaStore.Configuration(url: url)
        let client = PostgresClient(
            configuration: PostgresClient.Configuration(
                host: configuration.host, port: configuration.port, username: configuration.username,
                password: configuration.password, database: configuration.database, tls: .disable
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            let schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
            let store = try PostgresSagaStore(client: client, schema: schema, location: configuration.location)
            try await store.withRunning { store in
                let state = Conformance.makeState()
                _ = try await store.create(state, outbox: [])
                #expect(try await store.load(state.id).id == state.id)
                // The key was read through the caller's client too.
                #expect(store.stateSeal?.seal([1, 2, 3]) != nil)
                try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
            }
            // The store's shutdown left our client running.
            let rows = try await client.query("SELECT 1 AS one")
            for try await one in rows.decode(Int.self) { #expect(one == 1) }
            group.cancelAll()
        }
    }

    /// The store's own client keeps no connection open when unused (postgres-nio 1.33's pool
    /// fails a precondition with kept connections while one closes) and pings idle connections
    /// only when a keep-alive interval is set: postgres-nio arms a keep-alive timer on every
    /// return of a connection otherwise.
    @Test func theOwnClientPingsIdleConnectionsOnlyWhenAsked() throws {
        var configuration = try PostgresSagaStore.Configuration(url: "postgres://app@127.0.0.1/shop")
        var client = PostgresSagaStore.clientConfiguration(configuration)
        #expect(client.options.minimumConnections == 0 && client.options.maximumConnections == 20)
        #expect(client.options.keepAliveBehavior == nil)
        configuration.maximumConnections = 2
        configuration.keepAliveInterval = .seconds(45)
        client = PostgresSagaStore.clientConfiguration(configuration)
        #expect(client.options.minimumConnections == 0 && client.options.maximumConnections == 2)
        #expect(client.options.keepAliveBehavior?.frequency == .seconds(45))
        configuration.keepAliveInterval = .zero
        #expect(PostgresSagaStore.clientConfiguration(configuration).options.keepAliveBehavior == nil)
    }

    /// A statement the server does not answer, and one that waits for a connection the pool
    /// cannot give, each end after the statement timeout with an error that says so; the
    /// store's attempt watch keeps their deadlines (no timer per statement) and forgets them
    /// afterwards, and the store goes on working.
    @Test func statementsThatDoNotAnswerEndAfterTheStatementTimeout() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
        // The schema first, with the default timeouts (a loaded machine may take seconds).
        try await PostgresSagaStore(configuration: configuration).withRunning { _ in }
        configuration.statementTimeout = .seconds(2)
        configuration.maximumConnections = 1
        let store = try PostgresSagaStore(configuration: configuration)
        try await store.withRunning { store in
            let watch = store.batches.watch
            // Runs `sql` and returns how long it took to fail with the statement timeout's error.
            @Sendable func timeToTimeout(_ sql: String) async -> Duration {
                let started = ContinuousClock.now
                await #expect {
                    try await store.executeForTesting(sql)
                } throws: { error in
                    (error as? SagaError)?.code == .storeUnavailable && "\(error)".contains("did not answer within 2")
                }
                return ContinuousClock.now - started
            }
            // A statement the server answers late.
            try await withThrowingTaskGroup(of: Duration.self) { group in
                group.addTask { await timeToTimeout("SELECT pg_sleep(20)") }
                // The watch has the statement before it ends.
                let seen = ContinuousClock.now + .seconds(5)
                while watch.watchedCount == 0 && ContinuousClock.now < seen { try await Task.sleep(for: .milliseconds(10)) }
                #expect(watch.watchedCount >= 1)
                for try await waited in group {
                    #expect(waited >= .milliseconds(1900) && waited < .seconds(6), "pg_sleep ended after \(waited)")
                }
            }
            // A statement waiting for a connection the pool cannot give: the pool's only
            // connection is held (as a statement's lease) for longer than the timeout.
            let current = store.pool.current
            try await withThrowingTaskGroup(of: Void.self) { group in
                let held = OneShot<Void>()
                group.addTask {
                    try await current.client.withConnection { connection in
                        store.pool.leased(current.generation, connection)
                        defer { store.pool.released(current.generation, connection) }
                        held.set(())
                        try await Task.sleep(for: .seconds(5))
                    }
                }
                await held.value()
                let waited = await timeToTimeout("SELECT 1")
                #expect(waited >= .milliseconds(1900) && waited < .seconds(4.5), "SELECT 1 ended after \(waited)")
                try await group.waitForAll()
            }
            #expect(watch.watchedCount == 0)
            let state = Conformance.makeState()
            _ = try await store.create(state, outbox: [])
            #expect(try await store.load(state.id).id == state.id)
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
        }
    }
}
