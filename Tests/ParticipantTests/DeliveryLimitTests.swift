import Foundation
import Participant
import SagaTestSupport
import Testing

/// A store outage does not spend a command's deliveries. RabbitMQ 4 gives quorum queues a
/// `delivery-limit` of 20 by default: a message handed back to its queue (`nack` with requeue)
/// more often is dead-lettered. A participant used to hand a command back every 0.5 s while the
/// store failed it, so a store outage of about 10 s would have sent commands to the dead-letter
/// queue; it now tries the command again in place while the delivery is still its own.
///
/// The test broker is RabbitMQ 3.10, whose quorum queues count deliveries the same way but have
/// no limit by default: a policy sets one of 2 on this test's queues, so that the old behaviour
/// would dead-letter the command within about a second and a half of an outage that lasts four.
@Suite(
    "Delivery limits and store outages (quorum queues, real broker)",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(2))
)
struct DeliveryLimitTests {
    @Test func aStoreOutageDoesNotSpendTheCommandsDeliveries() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        guard (try? await TestBroker.runScript(["controllable"])) != nil else {
            Issue.record("the broker at AMQP_URL is not scripts/rabbitmq.sh's: its policies cannot be set")
            return
        }
        let tag = UUID().uuidString.prefix(8).lowercased()
        let topology = SagaTopology(prefix: "dlim-\(tag)", queueKind: .quorum, delayLevels: [1])
        let policy = "sagakit-test-dlim-\(tag)"
        try await TestBroker.runScript([
            "ctl", "set_policy", "--apply-to", "queues", policy, "^dlim-\(tag)\\.", #"{"delivery-limit": 2}"#,
        ])
        defer { Task { _ = try? await TestBroker.runScript(["ctl", "clear_policy", policy]) } }
        let bus = try await RabbitMQBus.connect(url: url)
        let store = OutageStore()
        let ledger = Ledger()
        do {
            let (id, final, dead) = try await withParticipants(
                orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology,
                waitUntilConsuming: true
            ) { manager in
                // The policy applies to queues declared before it too, once the broker has seen it.
                try await Task.sleep(for: .milliseconds(500))
                store.down.store(true, ordering: .relaxed)
                let id = try await manager.start("order", payload: ["orderId": "dl-1", "amount": 3])
                try await Task.sleep(for: .seconds(4))
                store.down.store(false, ordering: .relaxed)
                let final = try await manager.outcome(of: id, timeout: .seconds(30))
                let dead = try? await DeadLetterFidelityTests.take(1, on: bus, queue: topology.deadLetterQueue, within: .seconds(1))
                return (id, final, dead ?? [])
            }
            #expect(final.status == .completed, "\(final.status): \(final.failureReason ?? "")")
            #expect(dead.isEmpty, "dead-lettered: \(dead.map { $0.headers })")
            #expect(ledger.effects(of: id) == ["inventory.reserve", "payment.charge", "shipping.ship"], "\(ledger.effects(of: id))")
        } catch {
            await bus.shutdown()
            throw error
        }
        await bus.shutdown()
    }
}
