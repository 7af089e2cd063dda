import Configuration
import SagaCore
import Testing

@testable import SagaPostgres
@testable import SagaSQLite

@Suite("Store configuration from swift-configuration")
struct StoreConfigurationTests {
    @Test func postgresKeysOverrideTheURL() throws {
        let reader = ConfigReader(
            provider: InMemoryProvider(values: [
                "sagakit.store.url": ConfigValue("postgres://app:pw@db.internal:6543/shop?schema=fromurl", isSecret: true),
                "sagakit.store.password": ConfigValue("from-a-secret", isSecret: true),
                "sagakit.store.schema": "sagas",
                "sagakit.store.tls": "require",
                "sagakit.store.connect.timeout.seconds": "2.5",
                "sagakit.store.connections.max": "7",
                "sagakit.store.connections.held": "3",
                "sagakit.store.keepalive.seconds": "45",
                "sagakit.store.statement.timeout.seconds": "9",
                "sagakit.store.startup.timeout.seconds": "60",
            ]))
        let configuration = try PostgresSagaStore.Configuration(reader: reader.scoped(to: "sagakit.store"))
        #expect(configuration.host == "db.internal" && configuration.port == 6543 && configuration.database == "shop")
        #expect(configuration.username == "app" && configuration.password == "from-a-secret")
        #expect(configuration.schema == "sagas" && configuration.tls == .require)
        #expect(configuration.connectTimeout == .milliseconds(2500) && configuration.maximumConnections == 7)
        #expect(configuration.statementTimeout == .seconds(9) && configuration.startupTimeout == .seconds(60))
        #expect(configuration.keepAliveInterval == .seconds(45))
        #expect(configuration.heldConnections == 3)
        // postgres-nio pings only the connections in its pool: with a keep-alive, none are held.
        #expect(PostgresSagaStore.heldConnections(configuration) == 0)

        let minimal = try PostgresSagaStore.Configuration(
            reader: ConfigReader(provider: InMemoryProvider(values: ["url": "postgres://app@127.0.0.1/shop"])))
        #expect(minimal.tls == .disable && minimal.schema == "public" && minimal.maximumConnections == 20)
        #expect(minimal.keepAliveInterval == nil)
        #expect(minimal.heldConnections == 2 && PostgresSagaStore.heldConnections(minimal) == 2)
        var small = minimal
        small.maximumConnections = 2
        #expect(PostgresSagaStore.heldConnections(small) == 1, "the pool keeps at least one connection")
        small.heldConnections = 0
        #expect(PostgresSagaStore.heldConnections(small) == 0)
        for off in ["0", "0.0", "off", " OFF "] {
            let reader = ConfigReader(
                provider: InMemoryProvider(values: [
                    "url": "postgres://app@127.0.0.1/shop", "keepalive.seconds": ConfigValue(stringLiteral: off),
                ]))
            #expect(try PostgresSagaStore.Configuration(reader: reader).keepAliveInterval == nil, "\(off)")
        }
        _ = try PostgresSagaStore(reader: ConfigReader(provider: InMemoryProvider(values: ["url": "postgres://app@127.0.0.1/shop"])))
    }

    @Test func postgresErrorsNameTheKeyAndHideThePassword() {
        let missing = #expect(throws: SagaError.self) {
            try PostgresSagaStore.Configuration(reader: ConfigReader(provider: InMemoryProvider(values: [:])))
        }
        #expect(missing?.message.contains("'url'") == true)
        let bad = #expect(throws: SagaError.self) {
            try PostgresSagaStore.Configuration(
                reader: ConfigReader(
                    provider: InMemoryProvider(values: ["url": "postgres://app:s3cret@h/db", "connections.max": "lots"])))
        }
        #expect(bad?.message.contains("connections.max") == true)
        let refusals: [(String, [AbsoluteConfigKey: ConfigValue])] = [
            ("keepalive.seconds", ["url": "postgres://app:s3cret@h/db", "keepalive.seconds": "soon"]),
            ("connections.held", ["url": "postgres://app:s3cret@h/db", "connections.held": "-1"]),
        ]
        for (key, values) in refusals {
            let refused = #expect(throws: SagaError.self, "\(key)") {
                try PostgresSagaStore.Configuration(reader: ConfigReader(provider: InMemoryProvider(values: values)))
            }
            #expect(refused?.message.contains(key) == true && refused?.description.contains("s3cret") == false)
        }
        for url in ["postgres://app:s3cret@h:port/db", "mysql://app:s3cret@h/db", "postgres://app:s3cret@h1,h2/db"] {
            let error = #expect(throws: SagaError.self, "\(url)") { try PostgresSagaStore.Configuration(url: url) }
            #expect(error?.description.contains("s3cret") == false, "\(url)")
        }
    }

    @Test func sqliteKeys() throws {
        let reader = ConfigReader(
            provider: InMemoryProvider(values: [
                "url": ConfigValue("sqlite:///var/lib/shop/sagas.db", isSecret: true),
                "busy.timeout.seconds": "3",
                "synchronous": "NORMAL",
                "readers.max": "2",
                "startup.timeout.seconds": "5",
            ]))
        let configuration = try SQLiteSagaStore.Configuration(reader: reader)
        #expect(configuration.path == "/var/lib/shop/sagas.db")
        #expect(configuration.busyTimeout == .seconds(3) && configuration.synchronous == .normal)
        #expect(configuration.maximumReaderCount == 2 && configuration.startupTimeout == .seconds(5))
        let byPath = try SQLiteSagaStore(reader: ConfigReader(provider: InMemoryProvider(values: ["path": "/tmp/x/sagas.db"])))
        #expect(byPath.path == "/tmp/x/sagas.db" && byPath.configuration.synchronous == .full)

        for values: [AbsoluteConfigKey: ConfigValue] in [[:], ["url": "sqlite:///a.db", "synchronous": "sometimes"]] {
            #expect(throws: SagaError.self) {
                try SQLiteSagaStore.Configuration(reader: ConfigReader(provider: InMemoryProvider(values: values)))
            }
        }
    }
}
