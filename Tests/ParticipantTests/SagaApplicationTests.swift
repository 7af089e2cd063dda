import Configuration
import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// `SagaApplication.withManager(store:services:_:)`, what a starter's `main` calls: the store, the
/// bus, the manager and the caller's services run around the body, the body's sagas run to their end on the real broker, and
/// everything stops once it returns; what it throws comes out.
@Suite(
    "SagaApplication on RabbitMQ",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(2))
)
struct SagaApplicationTests {
    @Test func withManagerRunsTheBodyWithARunningManagerAndStopsAfterIt() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let topology = SagaTopology(prefix: "app-\(UUID().uuidString.prefix(8).lowercased())", delayLevels: [1])
        let values: [AbsoluteConfigKey: ConfigValue] = [
            "amqp.url": ConfigValue(stringLiteral: amqp), "sagakit.prefix": ConfigValue(stringLiteral: topology.prefix),
            "sagakit.delay.levels": "1",
        ]
        let app = try SagaApplication(
            service: "starter", definitions: orderDefinitions.all, config: ConfigReader(provider: InMemoryProvider(values: values)),
            bootstrapLogging: false)
        #expect(app.topology.prefix == topology.prefix)
        let store = InMemorySagaStore()
        let participantsBus = try await RabbitMQBus.connect(url: amqp)
        let ledger = Ledger()
        let exporter = RecordingService()
        // The services run beside the starter, on a connection of their own.
        let outcomes = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [participantsBus], starterBus: participantsBus, store: store, topology: topology,
            waitUntilConsuming: true
        ) { _ in
            try await app.withManager(store: store, services: [exporter]) { manager in
                // A service passed in runs while the body does.
                #expect(exporter.events == ["started"])
                let completed = try await manager.start("order", payload: ["orderId": "app-1", "amount": 5])
                let declined = try await manager.start("order", payload: ["orderId": "app-2", "amount": 5, "declinePayment": true])
                return [
                    try await manager.outcome(of: completed, timeout: .seconds(30)).status,
                    try await manager.outcome(of: declined, timeout: .seconds(30)).status,
                ]
            }
        }
        #expect(outcomes == [.completed, .compensated])
        #expect(exporter.events == ["started", "stopped"], "stopped gracefully after the body, like a tracer's exporter")

        // What the body throws comes out, after everything stopped (a process runs once: a
        // second application for it).
        struct Refused: Error {}
        let another = try SagaApplication(
            service: "starter", definitions: orderDefinitions.all, config: ConfigReader(provider: InMemoryProvider(values: values)),
            bootstrapLogging: false)
        await #expect(throws: Refused.self) {
            try await another.withManager(store: store) { _ in throw Refused() }
        }
        await participantsBus.shutdown()
    }
}

/// A service of the process beside the manager (a tracer's exporter, say): records that it ran
/// and that it was stopped gracefully.
private final class RecordingService: Service {
    private let recorded = Mutex<[String]>([])
    var events: [String] { recorded.withLock { $0 } }

    func run() async throws {
        recorded.withLock { $0.append("started") }
        try? await gracefulShutdown()
        recorded.withLock { $0.append("stopped") }
    }
}
