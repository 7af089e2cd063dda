import Foundation
import PostgresNIO
import SagaCore
import SagaTestSupport
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
        let error = await expectSagaError(.storeUnavailable) {
            _ = try await PostgresSagaStore(url: "postgres://sagakit:secret@127.0.0.1:1/sagakit")
        }
        #expect(error?.message.contains("127.0.0.1:1/sagakit") == true, "\(String(describing: error))")
        #expect(error?.message.contains("secret") == false)
    }

    @Test func aWrongPasswordIsStoreUnavailable() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.password = "wrong-\(UUID())"
        let error = await expectSagaError(.storeUnavailable) {
            _ = try await PostgresSagaStore(configuration: configuration)
        }
        #expect(error?.message.contains(configuration.location) == true, "\(String(describing: error))")
    }

    @Test func aSchemaFromANewerSagaKitIsRefused() async throws {
        guard let fixture = try await makePostgresStore() else { return }
        let store = try #require(fixture.store as? PostgresSagaStore)
        try await store.executeForTesting(
            "UPDATE \(store.namespace).sagakit_schema SET version = \(PostgresSagaStore.schemaVersion + 1)"
        )
        var configuration = try PostgresSagaStore.Configuration(url: try await TestPostgres.requireURL())
        configuration.schema = store.schema
        let error = await expectSagaError(.schemaTooNew) {
            _ = try await PostgresSagaStore(configuration: configuration)
        }
        #expect(error?.message.contains("\(PostgresSagaStore.schemaVersion + 1)") == true)
        try await fixture.cleanup()
    }

    /// A database left by SagaKit's first schema (version 1: no functions, an index on the
    /// outbox's saga id, sent messages kept with `sent_at`) is upgraded in place, keeps its sagas
    /// and works with the batched functions.
    @Test func aVersion1SchemaIsUpgradedWithItsData() async throws {
        guard let fixture = try await makePostgresStore() else { return }
        let store = try #require(fixture.store as? PostgresSagaStore)
        let namespace = store.namespace
        let saga = try await store.create(makeState(payload: ["n": 1]), outbox: []).state
        let pending = makeMessage(sagaID: saga.id)
        try await store.commit(SagaTransition(state: saga, expectedVersion: 1, outbox: [pending]))
        for statement in [
            "DROP FUNCTION \(namespace).sagakit_commit", "DROP FUNCTION \(namespace).sagakit_create",
            "DROP FUNCTION \(namespace).sagakit_load", "DROP FUNCTION \(namespace).sagakit_mark_sent",
            "CREATE INDEX outbox_saga ON \(namespace).outbox (saga_id)",
            """
            INSERT INTO \(namespace).outbox (id, saga_id, exchange, routing_key, body, headers, created_at, sent_at)
            VALUES ('sent-by-v1', '\(saga.id)', 'sagas', 'order.reserve', '\\x00', '{}', now() - interval '1 hour', now())
            """,
            "UPDATE \(namespace).sagakit_schema SET version = 1",
        ] {
            try await store.executeForTesting(statement)
        }

        var configuration = try PostgresSagaStore.Configuration(url: try await TestPostgres.requireURL())
        configuration.schema = store.schema
        let upgraded = try await PostgresSagaStore(configuration: configuration)
        let versions = try await upgraded.rows("read", "SELECT version FROM \(unescaped: namespace).sagakit_schema")
        #expect(try versions.first?["version"].decode(Int.self) == PostgresSagaStore.schemaVersion)
        let index = try await upgraded.rows(
            "read", "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = \(store.schema) AND indexname = 'outbox_saga'")
        #expect(try index.first?["n"].decode(Int.self) == 0)

        let loaded = try await upgraded.load(saga.id)
        #expect(loaded.version == 2)
        var next = loaded
        next.payload["n"] = 2
        let committed = try await upgraded.commit(SagaTransition(state: next, expectedVersion: 2, outbox: []))
        #expect(committed.version == 3)
        let outbox = try await upgraded.pendingOutbox(createdBefore: .distantFuture, limit: 10)
        #expect(outbox.map(\.id) == [pending.id], "a message sent under version 1 stays sent")
        try await upgraded.markSent([pending.id])
        #expect(try await upgraded.pendingOutbox(createdBefore: .distantFuture, limit: 10).isEmpty)
        await upgraded.shutdown()
        try await fixture.cleanup()
    }

    @Test func processesMigratingTogetherTakeTurns() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
        configuration.maximumConnections = 2
        let finalConfiguration = configuration
        let stores = try await withThrowingTaskGroup(of: PostgresSagaStore.self) { group in
            for _ in 0..<6 { group.addTask { try await PostgresSagaStore(configuration: finalConfiguration) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(stores.count == 6)
        let state = makeState()
        _ = try await stores[0].create(state, outbox: [])
        #expect(try await stores[5].load(state.id).id == state.id)
        try await stores[0].executeForTesting("DROP SCHEMA \(stores[0].namespace) CASCADE")
        for store in stores { await store.shutdown() }
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
            let store = try await PostgresSagaStore(client: client, schema: schema, location: configuration.location)
            let state = makeState()
            _ = try await store.create(state, outbox: [])
            #expect(try await store.load(state.id).id == state.id)
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
            await store.shutdown()  // does nothing: the client is ours
            group.cancelAll()
        }
    }
}
