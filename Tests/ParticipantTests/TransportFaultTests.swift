import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

/// Transport faults seen by a participant on the real broker (issue 12), with a SQLite store.
@Suite("Participant transport faults on RabbitMQ", .enabled(if: TestBroker.shouldRunIntegrationTests), .timeLimit(.minutes(3)))
struct TransportFaultTests {
    @Test("a message too large to be dead-lettered by the participant is rejected to the dead-letter queue, not looped")
    func oversizedMessageIsRejectedToTheDeadLetterQueue() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let storeURL =
            "sqlite://" + FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-tf-\(UUID().uuidString).db").path
        let (store, close) = try await openStore(storeURL)
        // The publisher may send what the participant's bus (16 MiB limit) cannot publish again.
        var large = try RabbitMQConfiguration(url: url)
        large.maxBodySize = 64 * 1024 * 1024
        let publisher = try await RabbitMQBus.connect(large)
        let bus = try await RabbitMQBus.connect(url: url)
        let topology = SagaTopology(prefix: "tf-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let size = 17 * 1024 * 1024
        let letter = try await withParticipants(
            orderHandlers(ledger: Ledger()), buses: [bus], starterBus: publisher, store: store, topology: topology
        ) { _ in
            try await publisher.publish(
                OutgoingMessage(
                    exchange: topology.commandsExchange, routingKey: "inventory.reserve", body: Array(repeating: 0x20, count: size),
                    messageId: "too-large-1", contentType: "application/json"))
            return try await firstDelivery(on: publisher, queue: topology.deadLetterQueue, within: .seconds(30))
        }
        #expect(letter.body.count == size)
        #expect(letter.messageId == "too-large-1")
        #expect(letter.headers["x-first-death-reason"] == "rejected")
        #expect(letter.headers["x-first-death-queue"] == topology.queue(forService: "inventory"))
        await bus.shutdown()
        await publisher.shutdown()
        await close()
    }
}

/// The first delivery on `queue` (acknowledged), or a failure after `limit`.
func firstDelivery(on bus: RabbitMQBus, queue: String, within limit: Duration) async throws -> Delivery {
    let stream = try await bus.consume(queue: queue, prefetch: 1)
    return try await withThrowingTaskGroup(of: Delivery?.self) { group in
        group.addTask {
            for try await delivery in stream {
                try await delivery.ack()
                return delivery
            }
            return nil
        }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let delivery = try await group.next() ?? nil else {
            throw TestFailure("nothing arrived on \(queue) within \(limit)")
        }
        return delivery
    }
}
