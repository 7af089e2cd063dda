import Foundation
import Participant
import PostgresNIO
import SagaPostgres
import SagaTestSupport
import Testing

/// The `saga` tool opens the store and the broker with every setting the services read, not
/// only their URLs: a PostgreSQL store's schema and password (`SAGAKIT_STORE_SCHEMA`,
/// `SAGAKIT_STORE_PASSWORD`), the broker's `AMQP_*` keys. Before, the tool read the two URLs
/// alone, so against services that keep their tables in another schema it opened (and created)
/// SagaKit's tables in `public` and said there were no sagas.
@Suite(
    "saga reads the store and broker settings the services read",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct OperatorSettingsTests {
    /// The test's environment without any SagaKit or broker setting of its own, plus `extra`.
    static func environment(_ extra: [String: String]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("SAGAKIT_") && !$0.key.hasPrefix("AMQP_") && $0.key != "POSTGRES_URL"
        }
        environment.merge(extra) { $1 }
        return environment
    }

    @Test func theStoresSchemaAndPasswordComeFromTheirOwnKeys() async throws {
        let servers = try IntegrationServers.require()
        let schema = "cli_settings_\(UUID().uuidString.prefix(8).lowercased())"
        let (store, close) = try await openStore(servers.postgres + "?schema=\(schema)")
        let now = Date()
        let id = "cli-settings-\(UUID().uuidString.prefix(8))"
        _ = try await store.create(
            SagaState(
                id: id, name: "trip", status: .running, currentStep: 0, attempt: 1, payload: [:], context: [:], history: [],
                createdAt: now, updatedAt: now, version: 0),
            outbox: [])
        await close()

        // The URL without its password; the password and the schema as the services set them.
        var url = try #require(URLComponents(string: servers.postgres))
        let password = url.password ?? ""
        url.password = nil
        let run = await CommandRun.run(
            SagaCLI.executable.path, ["list", "--ids", "--all-topologies"],
            environment: Self.environment([
                "SAGAKIT_STORE_URL": try #require(url.string), "SAGAKIT_STORE_PASSWORD": password,
                "SAGAKIT_STORE_SCHEMA": schema, "AMQP_URL": servers.amqp,
            ]))
        #expect(run.status == 0, "\(run)")
        #expect(run.stdout.split(separator: "\n").map(String.init) == [id], "\(run)")
        // It says which schema it reads.
        #expect(run.stderr.contains("(schema \(schema))"), "\(run)")
        // An empty or malformed schema setting is named, not read as `public`.
        for bad in ["", "Rental-Trial"] {
            let refused = await CommandRun.run(
                SagaCLI.executable.path, ["list", "--ids"],
                environment: Self.environment(["SAGAKIT_STORE_URL": servers.postgres, "SAGAKIT_STORE_SCHEMA": bad]))
            #expect(refused.status != 0 && refused.stderr.contains("SAGAKIT_STORE_SCHEMA"), "\(refused)")
        }
        if password.count >= 4 {
            #expect(!run.stdout.contains(password) && !run.stderr.contains(password), "the password was printed")
        }
    }

    /// The tool neither creates a store's schema nor migrates an older one: a schema name that
    /// names no store is reported (it was created, empty, and the tool said "no sagas"), and a
    /// newer tool leaves an older services' store as it is (it migrated it, and the services
    /// then refused to start: "schema too new"). `SAGAKIT_STORE_SCHEMA_MIGRATE=true` allows both.
    @Test func theToolNeitherCreatesNorMigratesAStoresSchema() async throws {
        let servers = try IntegrationServers.require()
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let (missing, older) = ("cli_missing_\(suffix)", "cli_older_\(suffix)")
        let (store, close) = try await openStore(servers.postgres + "?schema=\(older)")
        let postgres = try #require(store as? PostgresSagaStore)
        _ = try await store.countByStatus(name: nil)  // waits until the store runs (and has migrated)
        func version() async throws -> Int? {
            try await postgres.client.query(PostgresQuery(unsafeSQL: "SELECT version FROM \(older).sagakit_schema"))
                .collect().first?.decode(Int.self)
        }
        let current = try #require(try await version())
        _ = try await postgres.client.query(PostgresQuery(unsafeSQL: "UPDATE \(older).sagakit_schema SET version = version - 1"))
            .collect()
        func list(schema: String, _ extra: [String: String] = [:]) async -> CommandRun {
            await CommandRun.run(
                SagaCLI.executable.path, ["list", "--ids", "--all-topologies"],
                environment: Self.environment(
                    ["SAGAKIT_STORE_URL": servers.postgres, "SAGAKIT_STORE_SCHEMA": schema].merging(extra) { $1 }))
        }
        func schemaExists(_ name: String) async throws -> Bool {
            let rows = try await postgres.client.query(
                "SELECT count(*)::int8 FROM information_schema.schemata WHERE schema_name = \(name)"
            ).collect()
            return try rows.first?.decode(Int.self) == 1
        }

        let none = await list(schema: missing)
        #expect(none.status != 0, "\(none)")
        #expect(none.stderr.contains("has no SagaKit tables") && none.stderr.contains("SAGAKIT_STORE_SCHEMA"), "\(none)")
        #expect(try await schemaExists(missing) == false, "the refused start left the schema it began to create")

        let old = await list(schema: older)
        #expect(old.status != 0, "\(old)")
        #expect(old.stderr.contains("has schema version") && old.stderr.contains("does not migrate it"), "\(old)")
        #expect(try await version() == current - 1, "the tool migrated the store")

        let created = await list(schema: missing, ["SAGAKIT_STORE_SCHEMA_MIGRATE": "true"])
        #expect(created.status == 0 && created.stdout.isEmpty, "\(created)")
        for schema in [missing, older] {
            _ = try? await postgres.client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA IF EXISTS \(schema) CASCADE")).collect()
        }
        await close()
    }

    @Test func aMalformedBrokerSettingIsRefusedByItsName() async throws {
        let servers = try IntegrationServers.require()
        let run = await CommandRun.run(
            SagaCLI.executable.path, ["events", "--count", "1", "--timeout", "1"],
            environment: Self.environment([
                "AMQP_URL": servers.amqp, "AMQP_HEARTBEAT_SECONDS": "soon", "SAGAKIT_STORE_URL": servers.postgres,
            ]))
        #expect(run.status != 0, "\(run)")
        #expect(run.stderr.contains("AMQP_HEARTBEAT_SECONDS") && run.stderr.contains("'soon'"), "\(run)")
    }
}
