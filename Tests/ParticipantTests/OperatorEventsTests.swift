import Foundation
import Participant
import SagaTestSupport
import Testing

/// `saga events` prints the lifecycle events of sagas it was not built with, as they happen.
@Suite(
    "saga events on RabbitMQ",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct OperatorEventsTests {
    @Test func followsOneSagaToItsEndAsJSONLines() async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(StoreKind.sqlite.url(postgres: servers.postgres))
        let topology = SagaTopology(prefix: "cli-ev-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let id = "declined-\(UUID().uuidString.prefix(8).lowercased())"
        let events = try ProductProcess(
            "saga",
            [
                "events", "--saga", id, "--until-terminal", "--json", "--timeout", "90", "--amqp-url", servers.amqp, "--prefix",
                topology.prefix,
            ],
            environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil])
        #expect(
            try await events.waitForOutput(containing: "saga: listening on \(topology.eventsExchange)", timeout: .seconds(30)),
            "\(events.output)")

        let final = try await withParticipants(
            orderHandlers(ledger: Ledger()), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            try await manager.start("order", payload: ["orderId": "o-1", "amount": 5, "declinePayment": true], id: id)
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)
        let status = try await events.waitForExit(timeout: .seconds(30))
        #expect(status == 0, "\(events.output)")
        let lines = events.output.split(separator: "\n").filter { $0.hasPrefix("{") }
        let decoded = try lines.map { try JSONCoding.decode(SagaLifecycleEvent.self, from: Data($0.utf8)) }
        #expect(decoded.allSatisfy { $0.sagaID == id })
        #expect(decoded.last?.kind == .compensated, "\(events.output)")
        #expect(
            Set(decoded.map(\.kind)) == [
                .started, .stepCompleted, .stepFailed, .compensationStarted, .compensationStepCompleted, .compensated,
            ],
            "\(events.output)")
        await bus.shutdown()
        await close()
    }
}
