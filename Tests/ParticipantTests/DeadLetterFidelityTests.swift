import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

/// Dead letters carry the original message losslessly (issue 12 #2), on the real broker: a
/// command with every AMQP property set and headers of every type is dead-lettered by a
/// participant, read from the dead-letter queue, and requeued with the `saga` binary; the
/// dead letter and the requeued message are compared with the original, field by field.
@Suite(
    "Dead letters keep every property (broker and saga CLI)",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(3))
)
struct DeadLetterFidelityTests {
    /// Headers of every AMQP field type RabbitMQ accepts, as another client could send them.
    static let typedHeaders: MessageHeaders = [
        "x-saga-id": "s-fidelity", "text": "ünïcode", "bytes": .bytes([0, 255]), "flag": true, "i8": .int8(-1),
        "u8": .uint8(255), "i16": .int16(-300), "u16": .uint16(65_000), "i32": .int32(-70_000),
        "u32": .uint32(4_000_000_000), "i64": .int64(Int64.min), "f32": .float(0.25), "f64": .double(3.5e-300),
        "price": .decimal(scale: 2, value: 1999), "sent": .timestamp(1_700_000_000), "nothing": .void,
        "list": .array(["a", .int16(2), .array([.bool(false)]), .table(["k": .decimal(scale: 1, value: 5)])]),
        "meta": .table(["nested": .table(["deep": .timestamp(7)]), "tags": .array([])]),
    ]

    @Test("a dead-lettered command keeps every property and header; saga dlq requeue republishes the original")
    func deadLetterAndRequeueKeepEveryProperty() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let user = try RabbitMQConfiguration(url: url).user
        let storeURL =
            "sqlite://"
            + FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-dlf-\(UUID().uuidString).db").path
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: url)
        let topology = SagaTopology(prefix: "dlf-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        // A copy of every message published to inventory.reserve: the original, and later the requeued one.
        let capture = "\(topology.prefix).capture"
        try await bus.declare(topology.shared)
        try await bus.declare(
            Topology(
                queues: [QueueSpec(name: capture)],
                bindings: [BindingSpec(queue: capture, exchange: topology.commandsExchange, routingKey: "inventory.reserve")]))
        // Every property set, none to its default: a participant cannot read it as a command.
        let sent = OutgoingMessage(
            exchange: topology.commandsExchange, routingKey: "inventory.reserve", body: Array("{\"not\": \"a command\"}".utf8),
            headers: Self.typedHeaders, messageId: "fidelity-1", contentType: "application/json", type: "inventory.reserve",
            correlationId: "c-fidelity", contentEncoding: "identity", replyTo: "replies.fidelity", appId: "fidelity-test",
            userId: user, priority: 7, timestamp: 1_700_000_123, expiration: .seconds(600), persistent: false)

        let letter = try await withParticipants(
            orderHandlers(ledger: Ledger()), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { _ in
            try await bus.publish(sent)
            return try await Self.peek(on: bus, queue: topology.deadLetterQueue, within: .seconds(20))
        }

        // The dead letter: the original's body, headers and properties, plus SagaKit's reason headers.
        // Its expiration and user-id travel as headers (an expiration would expire it from the dead-letter
        // queue; a user-id is refused from another user).
        #expect(letter.body == sent.body)
        var kept = letter.headers
        for key in DeadLetters.deadLetterHeaders { kept.removeValue(forKey: key) }
        #expect(letter.headers[field: SagaHeaders.deadLetterOriginalExpiration] == .int64(600_000))
        #expect(letter.headers[SagaHeaders.deadLetterOriginalUserID] == user)
        kept.removeValue(forKey: SagaHeaders.deadLetterOriginalExpiration)
        kept.removeValue(forKey: SagaHeaders.deadLetterOriginalUserID)
        #expect(kept == Self.typedHeaders)
        #expect(letter.headers[SagaHeaders.deadLetterReason]?.contains("not a saga command") == true)
        #expect(letter.messageId == sent.messageId && letter.contentType == sent.contentType && letter.type == sent.type)
        #expect(letter.correlationId == sent.correlationId && letter.contentEncoding == sent.contentEncoding)
        #expect(letter.replyTo == sent.replyTo && letter.appId == sent.appId)
        #expect(letter.priority == sent.priority && letter.timestamp == sent.timestamp)
        #expect(letter.persistent == false)
        #expect(letter.expiration == nil && letter.userId == nil)

        // `saga dlq requeue`, the binary: the message goes back where it was published, as it was.
        let cli = SagaCLI(store: storeURL, amqp: url, prefix: topology.prefix)
        let requeued = try await cli.json(["dlq", "requeue", "--id", "fidelity-1"]) as? [String: Any]
        #expect((requeued?["requeued"] as? [Any])?.count == 1, "\(requeued ?? [:])")
        let copies = try await Self.take(2, on: bus, queue: capture, within: .seconds(20))
        #expect(copies.count == 2)
        for (index, copy) in copies.enumerated() {
            let which = index == 0 ? "the original as the broker delivered it" : "the requeued message"
            #expect(copy.exchange == sent.exchange && copy.routingKey == sent.routingKey, "\(which)")
            #expect(copy.body == sent.body, "\(which)")
            #expect(copy.headers == sent.headers, "\(which): \(copy.headers)")
            #expect(copy.messageId == sent.messageId && copy.contentType == sent.contentType, "\(which)")
            #expect(copy.type == sent.type && copy.correlationId == sent.correlationId, "\(which)")
            #expect(copy.contentEncoding == sent.contentEncoding && copy.replyTo == sent.replyTo, "\(which)")
            #expect(copy.appId == sent.appId && copy.userId == sent.userId, "\(which)")
            #expect(copy.priority == sent.priority && copy.timestamp == sent.timestamp, "\(which)")
            #expect(copy.expiration == sent.expiration && copy.persistent == sent.persistent, "\(which)")
        }
        // `saga dlq drop`: the named dead letter is gone for good, another one stays.
        // The one kept holds a card number behind 600 bytes of notes (after it in sorted order).
        let secretBody = "{\"notes\": \"\(String(repeating: "n", count: 600))\", \"cardNumber\": \"4111111111111111\"}"
        for (id, body) in [("drop-me", "{}"), ("keep-me", secretBody)] {
            try await bus.publish(
                OutgoingMessage(
                    exchange: topology.deadLetterExchange, routingKey: topology.deadLetterQueue, body: Array(body.utf8), messageId: id,
                    correlationId: "saga-\(id)"))
        }
        let dropped = try await cli.json(["dlq", "drop", "--id", "drop-me"]) as? [String: Any]
        #expect((dropped?["dropped"] as? [[String: Any]])?.map { $0["messageId"] as? String } == ["drop-me"], "\(dropped ?? [:])")
        let left = try await cli.json(["dlq", "list"]) as? [[String: Any]]
        #expect(left?.compactMap { $0["messageId"] as? String } == ["keep-me"], "\(left ?? [])")
        // --redact masks the key in the whole body before it is shortened (a shortened body is no
        // longer JSON), for people and as JSON; SAGAKIT_REDACT does the same.
        let listed = try await cli.succeed(["dlq", "list", "--redact", "cardNumber"])
        #expect(listed.contains("\"cardNumber\":\"••••\"") && !listed.contains("4111"), "\(listed)")
        #expect(listed.contains("body        \(secretBody.utf8.count) bytes: {"), "\(listed)")
        let redactedJSON = try await cli.json(["dlq", "list"], environment: ["SAGAKIT_REDACT": "email,cardNumber"]) as? [[String: Any]]
        let shownBody = redactedJSON?.first?["body"] as? String ?? ""
        #expect(shownBody.hasPrefix("{\"cardNumber\":\"••••\",\"notes\":\"nnn") && shownBody.hasSuffix("…"), "\(shownBody)")
        // A dead letter without a message id is selected by the hash of its body, as listed.
        try await bus.publish(
            OutgoingMessage(exchange: topology.deadLetterExchange, routingKey: topology.deadLetterQueue, body: Array("poison".utf8)))
        let withAnonymous = try await cli.json(["dlq", "list"]) as? [[String: Any]] ?? []
        let anonymous = withAnonymous.first { $0["messageId"] == nil }
        let anonymousID = anonymous?["id"] as? String ?? ""
        #expect(anonymousID.hasPrefix("body-"), "\(withAnonymous)")
        #expect(try await cli.succeed(["dlq", "list"]).contains("\(anonymousID) (no message id: select it by this)"))
        let droppedAnonymous = try await cli.json(["dlq", "drop", "--id", anonymousID]) as? [String: Any]
        #expect((droppedAnonymous?["dropped"] as? [[String: Any]])?.map { $0["id"] as? String } == [anonymousID])
        // --saga: one saga's dead letters (by its command's saga id, else the correlation id).
        let ofSaga = try await cli.json(["dlq", "list", "--saga", "saga-keep-me"]) as? [[String: Any]]
        #expect(ofSaga?.compactMap { $0["messageId"] as? String } == ["keep-me"], "\(ofSaga ?? [])")
        let ofAnother = try await cli.succeed(["dlq", "list", "--saga", "saga-nobody"])
        #expect(ofAnother.contains("no dead letter of saga-nobody among the 1 in \(topology.deadLetterQueue)"), "\(ofAnother)")
        for key in [capture, topology.deadLetterQueue] + ["inventory", "payment", "shipping"].map(topology.queue(forService:)) {
            try? await bus.deleteQueue(key)
        }
        await bus.shutdown()
        await close()
    }

    /// The first delivery on `queue`, handed back to the queue (not acknowledged) before returning.
    static func peek(on bus: RabbitMQBus, queue: String, within limit: Duration) async throws -> Delivery {
        try await firstDelivery(on: bus, queue: queue, within: limit, settlement: .nack(requeue: true))
    }

    /// The first `count` deliveries on `queue` (acknowledged), or what arrived within `limit`.
    static func take(_ count: Int, on bus: RabbitMQBus, queue: String, within limit: Duration) async throws -> [Delivery] {
        let stream = try await bus.consume(queue: queue, prefetch: count)
        return try await withThrowingTaskGroup(of: [Delivery]?.self) { group in
            group.addTask {
                var taken: [Delivery] = []
                for try await delivery in stream {
                    try await delivery.ack()
                    taken.append(delivery)
                    if taken.count == count { return taken }
                }
                return taken
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let taken = try await group.next() ?? nil else {
                throw TestFailure("fewer than \(count) deliveries arrived on \(queue) within \(limit)")
            }
            return taken
        }
    }
}
