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
        // `saga dlq list` says why, and `requeue` knows where it came from.
        let reason = DeadLetters.reason(of: letter) ?? ""
        #expect(reason.contains("rejected") && reason.contains("\(size) bytes"), "\(reason)")
        #expect(DeadLetters.original(of: letter, topology: topology).routingKey == "inventory.reserve")
        await bus.shutdown()
        await publisher.shutdown()
        await close()
    }

    /// Headers of every AMQP field type, as another client could send them.
    static let typedHeaders: MessageHeaders = [
        "x-saga-id": "s-typed", "text": "ünïcode", "bytes": .bytes([0, 255]), "flag": true, "i8": .int8(-1), "u8": .uint8(255),
        "i16": .int16(-300), "u16": .uint16(65_000), "i32": .int32(-70_000), "u32": .uint32(4_000_000_000),
        "i64": .int64(Int64.min), "f32": .float(0.25), "f64": .double(3.5e-300), "price": .decimal(scale: 2, value: 1999),
        "sent": .timestamp(1_700_000_000), "nothing": .void,
        "list": .array(["a", .int16(2), .array([.bool(false)]), .table(["k": .decimal(scale: 1, value: 5)])]),
        "meta": .table(["nested": .table(["deep": .timestamp(7)]), "tags": .array([])]),
    ]

    @Test("dead-lettering keeps every typed header; requeue restores the original message")
    func deadLetterAndRequeueKeepTypedHeaders() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let storeURL =
            "sqlite://" + FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-tf-\(UUID().uuidString).db").path
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: url)
        let topology = SagaTopology(prefix: "tf-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let sent = OutgoingMessage(
            exchange: topology.commandsExchange, routingKey: "inventory.reserve", body: Array("not a command".utf8),
            headers: Self.typedHeaders, messageId: "typed-1", contentType: "application/json", type: "inventory.reserve",
            correlationId: "c-1")
        let letter = try await withParticipants(
            orderHandlers(ledger: Ledger()), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { _ in
            try await bus.publish(sent)
            return try await firstDelivery(on: bus, queue: topology.deadLetterQueue, within: .seconds(20))
        }
        // The dead letter: every original header with its type, plus the reason headers.
        var kept = letter.headers
        for key in DeadLetters.deadLetterHeaders { kept.removeValue(forKey: key) }
        #expect(kept == Self.typedHeaders)
        #expect(letter.headers[SagaHeaders.deadLetterReason]?.contains("not a saga command") == true)
        #expect(DeadLetters.reason(of: letter)?.contains("not a saga command") == true)

        // Requeue: the original message, addressed where it was published, with the original headers only.
        let original = DeadLetters.original(of: letter, topology: topology)
        #expect(original.exchange == sent.exchange && original.routingKey == sent.routingKey)
        #expect(original.headers == sent.headers)
        #expect(original.body == sent.body && original.messageId == sent.messageId && original.type == sent.type)
        #expect(original.contentType == sent.contentType && original.correlationId == sent.correlationId)
        // … and on the wire: published (to a probe queue) and consumed again, it is the same message.
        let probe = "\(topology.prefix).probe"
        try await bus.declare(Topology(queues: [QueueSpec(name: probe)]))
        var redirected = original
        redirected.exchange = ""
        redirected.routingKey = probe
        try await bus.publish(redirected)
        let again = try await firstDelivery(on: bus, queue: probe, within: .seconds(10))
        #expect(again.headers == Self.typedHeaders)
        #expect(again.body == sent.body && again.messageId == sent.messageId)
        try await bus.deleteQueue(probe)
        await bus.shutdown()
        await close()
    }
}

/// The first delivery on `queue`, settled with `settlement` (acknowledged by default; `.nack(requeue: true)`
/// hands it back to the queue), or a failure after `limit`.
func firstDelivery(
    on bus: RabbitMQBus, queue: String, within limit: Duration, settlement: Settlement = .ack
) async throws -> Delivery {
    let stream = try await bus.consume(queue: queue, prefetch: 1)
    return try await withThrowingTaskGroup(of: Delivery?.self) { group in
        group.addTask {
            for try await delivery in stream {
                try await delivery.settler.settle(settlement)
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
