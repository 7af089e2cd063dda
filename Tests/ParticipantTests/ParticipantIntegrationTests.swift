import Foundation
import Participant
import SagaPostgres
import SagaSQLite
import SagaTestSupport
import Synchronization
import Testing

/// Where the integration tests find their servers: `AMQP_URL` and `POSTGRES_URL` (set by
/// `scripts/test.sh`, which starts both). Without them the tests are disabled locally; in CI
/// (`CI` set) a missing server fails them.
enum IntegrationServers {
    static let amqpURL = ProcessInfo.processInfo.environment["AMQP_URL"]
    static let postgresURL = ProcessInfo.processInfo.environment["POSTGRES_URL"]
    static var available: Bool {
        (amqpURL != nil && postgresURL != nil) || ProcessInfo.processInfo.environment["CI"] != nil
    }

    static func require() throws -> (amqp: String, postgres: String) {
        guard let amqpURL, let postgresURL else {
            throw TestFailure(
                "CI is set but AMQP_URL or POSTGRES_URL is not: run the tests with `make test`, which starts RabbitMQ and PostgreSQL")
        }
        return (amqpURL, postgresURL)
    }
}

/// The stores the integration tests run against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }

    /// A store URL for one test: a new SQLite file, or the shared PostgreSQL database.
    func url(postgres: String) -> String {
        switch self {
        case .sqlite: "sqlite://" + FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-it-\(UUID().uuidString).db").path
        case .postgres: postgres
        }
    }
}

/// Opens a store by URL and runs it; the caller shuts it down with the returned closure.
func openStore(_ url: String) async throws -> (any SagaStore, @Sendable () async -> Void) {
    if url.hasPrefix("postgres") {
        return running(try PostgresSagaStore(url: url, logger: quietTestLogger)) { await $0.shutdown() }
    }
    return running(try SQLiteSagaStore(url: url, logger: quietTestLogger)) { await $0.shutdown() }
}

/// Runs a store service until the returned closure shuts it down (its run spans several scopes
/// of the tests that use it).
func running<Store: SagaStore & Service>(
    _ store: Store, shutdown: @escaping @Sendable (Store) async -> Void
) -> (any SagaStore, @Sendable () async -> Void) {
    let runner = Task { try await store.run() }
    return (
        store,
        {
            await shutdown(store)
            if case .failure(let error) = await runner.result { Issue.record("the store failed: \(error)") }
        }
    )
}

@Suite(
    "Participants on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct ParticipantIntegrationTests {
    @Test(arguments: StoreKind.allCases)
    func sagasCompleteAndCompensateAcrossSeparateConnections(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "it-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        // One connection per participant and one for the starter, as in separate services.
        var connections: [RabbitMQBus] = []
        for _ in 0..<4 { connections.append(try await RabbitMQBus.connect(url: servers.amqp)) }
        let buses = connections
        let results = try await withParticipants(
            orderHandlers(ledger: ledger), buses: Array(buses.dropFirst()), starterBus: buses[0], store: store, topology: topology
        ) { manager in
            // A malformed message on the inventory queue while sagas flow.
            try await buses[0].publish(
                OutgoingMessage(
                    exchange: topology.commandsExchange, routingKey: "inventory.reserve", body: Array("garbage".utf8),
                    contentType: "application/json"))
            return try await withThrowingTaskGroup(of: SagaState.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        let id = try await manager.start(
                            "order",
                            payload: [
                                "orderId": .string("it-\(index)"), "amount": 5, "declinePayment": .bool(index % 4 == 0),
                                "failShippingTimes": .number(index % 5 == 0 ? 1 : 0),
                            ])
                        return try await manager.outcome(of: id, timeout: .seconds(60))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        #expect(results.filter { $0.status == .completed }.count == 15)
        #expect(results.filter { $0.status == .compensated }.count == 5)
        for saga in results {
            let expected: Set<String> =
                saga.status == .completed
                ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
            #expect(ledger.effects(of: saga.id) == expected, "saga \(saga.id) \(saga.status)")
        }
        // The malformed message is in the dead-letter queue with its reason.
        let letter = try await firstMessage(on: buses[0], queue: topology.deadLetterQueue)
        #expect(
            letter.headers[SagaHeaders.deadLetterReason]
                == "body is not a saga command (not valid JSON: unexpected 'g', a value was expected at byte 0)")
        #expect(letter.headers[SagaHeaders.deadLetterQueue] == topology.queue(forService: "inventory"))
        #expect(letter.body == Array("garbage".utf8))
        for bus in buses { await bus.shutdown() }
        await close()
    }

    @Test(arguments: StoreKind.allCases)
    func aCommandDeliveredTwiceAppliesItsEffectOnce(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "it-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        // The same charge command published twice at once, before either is processed: both
        // deliveries may run the handler, the idempotency key keeps the effect single.
        let final = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            let (state, first) = SagaStateMachine(definition: TestSagas.order).start(
                id: UUID().uuidString, payload: ["orderId": "dup", "amount": 1], now: Date())
            var atCharge = state
            atCharge.currentStep = 1
            // Like every saga a manager starts: other tests' reapers sharing the store leave it alone.
            atCharge.context[SagaTopology.contextKey] = topology.prefix
            _ = try await store.create(atCharge, outbox: [])
            var command = first.command
            command.command = "payment.charge"
            command.step = 1
            command.stepName = "charge-card"
            for _ in 0..<2 {
                try await bus.publish(
                    OutgoingMessage(
                        exchange: topology.commandsExchange, routingKey: "payment.charge", body: Array(try JSONCoding.encode(command)),
                        contentType: "application/json"))
            }
            return try await manager.outcome(of: state.id, timeout: .seconds(30))
        }
        #expect(final.status == .completed)
        #expect(ledger.effects(of: final.id) == ["payment.charge", "shipping.ship"])
        // Whether the second delivery ran the handler or was found stale, the saga advanced once:
        // one completed record per step. (The ship handler itself may run twice: when the
        // machine is loaded enough that committing and publishing take longer than the relay's
        // grace period, the relay sends the command too, and both copies can be handled at once.)
        #expect(ledger.calls("payment.charge", of: final.id) >= 1)
        let completed = final.history.filter { $0.outcome == .completed }.map(\.stepName)
        #expect(completed == ["charge-card", "ship"])
        await bus.shutdown()
        await close()
    }

    private func firstMessage(on bus: RabbitMQBus, queue: String) async throws -> Delivery {
        for try await delivery in try await bus.consume(queue: queue, prefetch: 1) {
            try await delivery.ack()
            return delivery
        }
        throw TestFailure("the queue \(queue) ended")
    }
}
