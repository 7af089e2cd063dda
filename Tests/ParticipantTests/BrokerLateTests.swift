import Foundation
import Participant
import SagaTestSupport
import Testing

/// A service started before its broker keeps trying (with backoff and log lines) instead of
/// exiting, and takes part in sagas once the broker answers.
@Suite(
    "Broker started after the services",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct BrokerLateTests {
    @Test func participantsWaitForABrokerThatStartsLater() async throws {
        // scripts/rabbitmq.sh gives the broker the distribution port `port + 20,000`. Both stay
        // below Linux's ephemeral range (32,768 and up), where any outgoing connection may hold
        // the port (a CI run failed on that), and neither may answer already.
        func free(_ port: Int) -> Bool {
            !TestPostgres.answers(host: "127.0.0.1", port: port) && !TestPostgres.answers(host: "127.0.0.1", port: port + 20_000)
        }
        var port = 11_000 + Int.random(in: 0..<1_500)
        while !free(port) { port = 11_000 + Int.random(in: 0..<1_500) }
        let url = TestBroker.privateBrokerURL(port: port)
        do {
            try await run(url: url, port: port)
        } catch {
            _ = try? await TestBroker.runScript(["stop"], port: port)
            throw error
        }
        try await TestBroker.runScript(["stop"], port: port)
    }

    private func run(url: String, port: Int) async throws {
        let store = InMemorySagaStore()
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "late-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        var configuration = try RabbitMQConfiguration(url: url)
        configuration.logger = quietTestLogger
        configuration.reconnectDelayMax = .seconds(1)
        // Calls wait 2 s for a connection, then fail: the participants' declare is retried
        // several times while the broker boots (about 20 s).
        configuration.operationTimeout = .seconds(2)
        let bus = RabbitMQBus(configuration: configuration)
        let runtime = SagaRuntime(definitions: orderDefinitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        let clock = ContinuousClock()
        let began = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The bus and the participants start first, with no broker anywhere.
            group.addTask { try await bus.run() }
            for (service, handlers) in orderHandlers(ledger: ledger) {
                let participant = SagaParticipant(
                    configuration: ParticipantConfiguration(service: service, reaper: nil), handlers: handlers, runtime: runtime)
                group.addTask { try await participant.run() }
            }
            // Longer than the bus's operation timeout.
            try await Task.sleep(for: .seconds(3))
            try await TestBroker.runScript(["start"], port: port)
            print("late broker: answering \(clock.now - began) after the services started")
            let manager = SagaManager(runtime: runtime)
            let id = try await manager.start("order", payload: ["orderId": "late-1", "amount": 1])
            let final = try await manager.outcome(of: id, timeout: .seconds(60))
            #expect(final.status == .completed)
            #expect(ledger.effects(of: id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
            print("late broker: first saga completed \(clock.now - began) after the services started")
            group.cancelAll()
        }
    }
}
