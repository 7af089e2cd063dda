import Foundation
import Participant
import SagaPostgres
import SagaTestSupport
import Testing

/// PostgreSQL stops while sagas are in flight and comes back: every saga finishes, each effect
/// once. Runs against a private server (its own port and data directory), so that stopping it
/// does not disturb the other tests.
@Suite(
    "PostgreSQL outage",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct StoreOutageTests {
    @Test func sagasFinishOncePostgreSQLIsBack() async throws {
        let servers = try IntegrationServers.require()
        let port = 25_000 + Int.random(in: 0..<5_000)
        try await TestPostgres.privateServer(["start"], port: port)
        do {
            try await runOutage(port: port, servers: servers)
        } catch {
            _ = try? await TestPostgres.privateServer(["stop"], port: port)
            throw error
        }
        try await TestPostgres.privateServer(["stop"], port: port)
    }

    private func runOutage(port: Int, servers: (amqp: String, postgres: String)) async throws {
        let url = try await TestPostgres.privateServer(["url"], port: port).trimmingCharacters(in: .whitespacesAndNewlines)
        var debugLogger = Logger(label: "outage-store")
        debugLogger.logLevel = ProcessInfo.processInfo.environment["OUTAGE_DEBUG"] != nil ? .debug : .critical
        let storeLogger = debugLogger
        var configuration = try PostgresSagaStore.Configuration(url: url)
        // A statement left unanswered by the shutdown is given up on after this long.
        configuration.statementTimeout = .seconds(3)
        let store = try PostgresSagaStore(configuration: configuration, logger: storeLogger)
        let storeRun = Task { try await store.run() }
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "outage-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let count = 30

        let finals = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            // Shipping fails once, so every saga waits a second in the delay queue: the outage
            // finds sagas at every step, some of them mid-step.
            let ids = try await withThrowingTaskGroup(of: SagaID.self) { group in
                for index in 0..<count {
                    group.addTask {
                        try await manager.start("order", payload: ["orderId": .string("db-\(index)"), "amount": 1, "failShippingTimes": 1])
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            try await waitUntil {
                for id in ids where try await store.load(id).currentStep >= 1 { return true }
                return false
            }
            try await TestPostgres.privateServer(["stop"], port: port)
            storeLogger.info("outage test: server stopped")
            try await Task.sleep(for: .seconds(2))
            try await TestPostgres.privateServer(["start"], port: port)
            storeLogger.info("outage test: server started")
            var finals: [SagaState] = []
            for id in ids {
                finals.append(try await manager.outcome(of: id, timeout: .seconds(90)))
                storeLogger.info("outage test: saga \(id) finished")
            }
            return finals
        }
        #expect(finals.count == count)
        #expect(finals.allSatisfy { $0.status == .completed }, "\(finals.map(\.status))")
        for saga in finals {
            #expect(ledger.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"], "saga \(saga.id)")
        }
        await bus.shutdown()
        await store.shutdown()
        try await storeRun.value
    }
}
