import Foundation
import GRDB
import MetricsTestKit
import Participant
import PostgresNIO
import SagaPostgres
import SagaSQLite
import SagaTestSupport
import Synchronization
import Testing

/// Handlers that write to the service's tables with their outcome (`writing:`), on the real
/// broker with SQLite and PostgreSQL, while every command is delivered twice.
@Suite(
    "Local writes on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct LocalWriteIntegrationTests {
    /// Every command is published twice at once, so that both copies are often handled at the
    /// same time; the handlers keep no idempotency key and their tables no unique key. Each
    /// effect is still recorded exactly once: the copy whose compare-and-swap loses rolls its
    /// writes back.
    @Test(arguments: StoreKind.allCases)
    func everyEffectIsWrittenOnceWithTheStepDespiteDuplicateDeliveries(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let tables = try await ServiceTables(store: store)
        let bus = DuplicatingBus(try await RabbitMQBus.connect(url: servers.amqp))
        let calls = HandlerCalls()
        let topology = SagaTopology(prefix: "lw-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let count = 12
        let results = try await withParticipants(
            tables.handlers(calls: calls), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            try await withThrowingTaskGroup(of: SagaState.self) { group in
                for index in 0..<count {
                    group.addTask {
                        let id = try await manager.start(
                            "order", payload: ["orderId": .string("lw-\(index)"), "amount": 5, "declinePayment": .bool(index % 4 == 0)])
                        return try await manager.outcome(of: id, timeout: .seconds(60))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        #expect(results.filter { $0.status == .completed }.count == 9)
        #expect(results.filter { $0.status == .compensated }.count == 3)
        var effects = 0
        for saga in results {
            let expected =
                saga.status == .completed
                ? ["inventory.reserve", "payment.charge", "shipping.ship"]
                : ["inventory.release", "inventory.reserve", "payment.declined"]
            let written = try await tables.effects(of: saga.id)
            #expect(written == expected, "saga \(saga.id) \(saga.status)")
            effects += written.count
        }
        // Reserved by every saga, released by the compensated ones: once each.
        #expect(try await tables.reserved() == 9)
        // The duplicates did run handlers (the test would prove nothing otherwise).
        #expect(calls.count > effects, "handler calls \(calls.count), effects \(effects)")
        #expect(bus.duplicated > 0)
        try await tables.drop()
        await bus.shutdown()
        await close()
    }

    /// A deployment that forgot a migration: the handlers' table does not exist. No saga is
    /// compensated for it and no retry is spent: the commands are redelivered, the sagas wait at
    /// their first step, and once the table is created they all complete.
    @Test(arguments: StoreKind.allCases)
    func aMissingTableMakesSagasWaitUntilItIsCreatedNotCompensate(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let metrics = TestMetricsBackend.shared
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let tables = try await ServiceTables(store: store)
        try await tables.dropEffects()
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "lwm-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let results = try await withParticipants(
            tables.handlers(calls: HandlerCalls()), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            var ids: [SagaID] = []
            for index in 0..<4 {
                ids.append(try await manager.start("order", payload: ["orderId": .string("lwm-\(index)"), "amount": 5]))
            }
            // Several redeliveries (every half second) later, every saga still waits at its first step.
            try await Task.sleep(for: .seconds(3))
            for id in ids {
                let waiting = try await store.load(id)
                #expect(waiting.status == .running && waiting.currentStep == 0 && waiting.attempt == 1, "\(waiting)")
                #expect(waiting.history.isEmpty, "\(waiting.history)")
            }
            // Counted for the alert on a service that cannot process its commands.
            #expect(try metrics.expectCounter("saga_processing_failures_total", [("service", "inventory")]).totalValue >= 2)
            try await tables.createEffects()
            var results: [SagaState] = []
            for id in ids { results.append(try await manager.outcome(of: id, timeout: .seconds(60))) }
            return results
        }
        for saga in results {
            #expect(saga.status == .completed, "\(saga.failureReason ?? "")")
            #expect(try await tables.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
        }
        try await tables.drop()
        await bus.shutdown()
        await close()
    }
}

/// The service's own tables, in the saga store's database: `effects` (one row per effect, no
/// unique key) and `stock` (one counter).
private struct ServiceTables: Sendable {
    let store: any SagaStore
    let effectsTable = "lw_effects_\(UUID().uuidString.prefix(8).lowercased())"
    let stockTable = "lw_stock_\(UUID().uuidString.prefix(8).lowercased())"

    init(store: any SagaStore) async throws {
        self.store = store
        _ = try await store.countByStatus(name: nil)  // waits until the store runs
        try await execute("CREATE TABLE \(effectsTable) (saga_id TEXT NOT NULL, command TEXT NOT NULL)")
        try await execute("CREATE TABLE \(stockTable) (sku TEXT PRIMARY KEY, reserved BIGINT NOT NULL)")
        try await execute("INSERT INTO \(stockTable) (sku, reserved) VALUES ('sku-1', 0)")
    }

    func handlers(calls: HandlerCalls) -> [String: SagaHandlerRegistry] {
        let (effects, stock) = (effectsTable, stockTable)
        @Sendable func effect(_ context: SagaContext, _ name: String? = nil) -> LocalWrite {
            LocalWrite(
                "INSERT INTO \(effects) (saga_id, command) VALUES ($1, $2)", .text(context.sagaID), .text(name ?? context.command),
                expecting: .rows(1))
        }
        // Long enough for a duplicate delivery to find the step still current and run too.
        @Sendable func begin() async throws {
            calls.add()
            try await Task.sleep(for: .milliseconds(20))
        }
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            try await begin()
            try await context.completeStep(
                merging: ["reservationId": .string("r-\(context.sagaID)")],
                writing: [
                    effect(context),
                    LocalWrite("UPDATE \(stock) SET reserved = reserved + 1 WHERE sku = $1", "sku-1", expecting: .rows(1)),
                ])
        }
        inventory.register("inventory.release") { context in
            try await begin()
            try await context.completeCompensation(writing: [
                effect(context), LocalWrite("UPDATE \(stock) SET reserved = reserved - 1 WHERE sku = $1", "sku-1", expecting: .rows(1)),
            ])
        }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { context in
            try await begin()
            let order = try context.payload(as: OrderPayload.self)
            if order.declinePayment == true {
                try await context.failAndCompensate(reason: "card declined", writing: [effect(context, "payment.declined")])
            } else {
                try await context.completeStep(writing: [effect(context)])
            }
        }
        payment.register("payment.refund") { context in
            try await begin()
            try await context.completeCompensation(writing: [effect(context)])
        }
        var shipping = SagaHandlerRegistry()
        shipping.register("shipping.ship") { context in
            try await begin()
            try await context.completeStep(writing: [effect(context)])
        }
        return ["inventory": inventory, "payment": payment, "shipping": shipping]
    }

    /// The effects recorded for a saga, sorted.
    func effects(of id: SagaID) async throws -> [String] {
        try await strings("SELECT command FROM \(effectsTable) WHERE saga_id = '\(id)' ORDER BY command")
    }

    func reserved() async throws -> Int {
        Int(try await strings("SELECT CAST(reserved AS TEXT) FROM \(stockTable)").first ?? "") ?? -1
    }

    /// Removes the effects table (a forgotten migration) and creates it again.
    func dropEffects() async throws { try await execute("DROP TABLE \(effectsTable)") }
    func createEffects() async throws { try await execute("CREATE TABLE \(effectsTable) (saga_id TEXT NOT NULL, command TEXT NOT NULL)") }

    func drop() async throws {
        try await execute("DROP TABLE \(effectsTable)")
        try await execute("DROP TABLE \(stockTable)")
    }

    private func execute(_ sql: String) async throws {
        if let postgres = store as? PostgresSagaStore {
            _ = try await postgres.client.query(PostgresQuery(unsafeSQL: sql)).collect()
        } else if let sqlite = store as? SQLiteSagaStore {
            try await Self.database(sqlite).write { db in try db.execute(sql: sql) }
        }
    }

    private func strings(_ sql: String) async throws -> [String] {
        if let postgres = store as? PostgresSagaStore {
            var values: [String] = []
            for try await row in try await postgres.client.query(PostgresQuery(unsafeSQL: sql)) {
                values.append(try row.decode(String.self))
            }
            return values
        } else if let sqlite = store as? SQLiteSagaStore {
            return try await Self.database(sqlite).read { db in try String.fetchAll(db, sql: sql) }
        }
        return []
    }

    private static func database(_ store: SQLiteSagaStore) throws -> DatabaseQueue {
        var configuration = GRDB.Configuration()
        configuration.busyMode = .timeout(10)
        return try DatabaseQueue(path: store.path, configuration: configuration)
    }
}

/// How many times handlers ran.
private final class HandlerCalls: Sendable {
    private let value = Mutex(0)
    var count: Int { value.withLock { $0 } }
    func add() { value.withLock { $0 += 1 } }
}

/// A bus that publishes every command twice (a duplicate delivery for every step).
private final class DuplicatingBus: MessageBus {
    private let base: any MessageBus
    private let count = Mutex(0)

    init(_ base: any MessageBus) { self.base = base }

    var duplicated: Int { count.withLock { $0 } }

    func declare(_ topology: Topology) async throws { try await base.declare(topology) }

    func publish(_ message: OutgoingMessage) async throws {
        guard message.exchange.hasSuffix(".commands") else { return try await base.publish(message) }
        async let first: Void = base.publish(message)
        async let second: Void = base.publish(message)
        _ = try await (first, second)
        count.withLock { $0 += 1 }
    }

    func consume(queue: String, prefetch: Int) async throws -> DeliveryStream { try await base.consume(queue: queue, prefetch: prefetch) }

    func shutdown() async { await base.shutdown() }
}
