import Foundation
import Participant
import SagaPrometheus
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A service started before its broker keeps trying (with backoff and log lines) instead of
/// exiting, and takes part in sagas once the broker answers. Its readiness probe
/// (`/health/ready`) says 503 and why while the broker is missing, 200 once it serves.
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
        // The process's parts report to a registry of this test's own, served over HTTP.
        let health = SagaHealth()
        configuration.health = health
        var metricsPort = 12_600 + Int.random(in: 0..<1_000)
        while TestPostgres.answers(host: "127.0.0.1", port: metricsPort) { metricsPort = 12_600 + Int.random(in: 0..<1_000) }
        let endpoint = PrometheusMetricsService(port: metricsPort, health: health, logger: quietTestLogger)
        let bus = RabbitMQBus(configuration: configuration)
        let runtime = SagaRuntime(definitions: orderDefinitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        let clock = ContinuousClock()
        let began = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The bus and the participants start first, with no broker anywhere.
            group.addTask { try await bus.run() }
            group.addTask { try await endpoint.run() }
            for (service, handlers) in orderHandlers(ledger: ledger) {
                var participantConfiguration = ParticipantConfiguration(service: service, reaper: nil)
                participantConfiguration.health = health
                let participant = SagaParticipant(configuration: participantConfiguration, handlers: handlers, runtime: runtime)
                group.addTask { try await participant.run() }
            }
            // Longer than the bus's operation timeout.
            try await Task.sleep(for: .seconds(3))
            // Not ready, and the probe says why: no broker, the participants wait to declare.
            let (waitingStatus, waitingBody) = try await get("http://127.0.0.1:\(metricsPort)/health/ready")
            #expect(waitingStatus == 503, "\(waitingBody)")
            let waiting = health.report()
            #expect(!waiting.isReady)
            #expect(
                waitingBody.contains(#""status":"not ready""#)
                    && waitingBody.contains("Cannot reach the RabbitMQ broker at 127.0.0.1:\(port)"), "\(waitingBody)")
            for service in ["inventory", "payment", "shipping"] {
                let entry = waiting.components.first { $0.name == "participant '\(service)'" }
                #expect(entry?.ready == false && entry?.detail.contains("declaring queue") == true, "\(waiting)")
            }
            #expect(waiting.components.contains { $0.name.hasPrefix("broker connection") && !$0.ready }, "\(waiting)")
            let (liveStatus, _) = try await get("http://127.0.0.1:\(metricsPort)/health/live")
            #expect(liveStatus == 200)
            try await TestBroker.runScript(["start"], port: port)
            print("late broker: answering \(clock.now - began) after the services started")
            let manager = SagaManager(runtime: runtime)
            let id = try await manager.start("order", payload: ["orderId": "late-1", "amount": 1])
            let final = try await manager.outcome(of: id, timeout: .seconds(60))
            #expect(final.status == .completed)
            #expect(ledger.effects(of: id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
            print("late broker: first saga completed \(clock.now - began) after the services started")
            // Ready: both broker connections up, every participant consuming its queue.
            let (readyStatus, readyBody) = try await get("http://127.0.0.1:\(metricsPort)/health/ready")
            #expect(readyStatus == 200, "\(readyBody)")
            let ready = health.report()
            #expect(ready.isReady)
            #expect(
                Set(ready.components.map(\.name)).isSuperset(of: [
                    "broker connection (publisher)", "broker connection (consumer)", "participant 'inventory'", "participant 'payment'",
                    "participant 'shipping'",
                ]), "\(ready)")
            #expect(ready.components.contains { $0.detail.contains("consuming queue '\(topology.prefix).payment'") }, "\(ready)")
            // Nothing in the body holds the broker's password (the URL's `guest`).
            #expect(!readyBody.contains("guest") && !waitingBody.contains("guest"))
            group.cancelAll()
        }
    }

    private func get(_ url: String) async throws -> (Int, String) {
        let (data, response) = try await URLSession.shared.data(from: try #require(URL(string: url)))
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }
}
