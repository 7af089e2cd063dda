import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Testing

/// One suite, run against every ``MessageBus`` implementation: what SagaKit relies on.
@Suite("MessageBus conformance", .timeLimit(.minutes(1)))
struct BusConformanceTests {
    @Test("publish → consume round trip (default exchange and a direct exchange)", arguments: BusKind.allCases)
    func roundTrip(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("round-trip")
            let exchange = f.name("commands")
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: exchange, kind: .direct)],
                    bindings: [BindingSpec(queue: queue, exchange: exchange, routingKey: "do.it")]))
            let inbox = try await f.consume(queue)

            try await f.publish(queue, body: "via default exchange")
            try await f.publish("do.it", exchange: exchange, body: "via direct exchange")

            let deliveries = try await inbox.take(2)
            #expect(deliveries.map(\.text) == ["via default exchange", "via direct exchange"])
            #expect(deliveries[0].exchange == "" && deliveries[0].routingKey == queue)
            #expect(deliveries[1].exchange == exchange && deliveries[1].routingKey == "do.it")
            #expect(deliveries.allSatisfy { $0.queue == queue && !$0.redelivered })
            for delivery in deliveries { try await delivery.ack() }
        }
    }

    @Test("headers and properties are preserved", arguments: BusKind.allCases)
    func headersAndProperties(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("properties")
            let inbox = try await f.consume(queue)
            let body: [UInt8] = [0, 1, 2, 255, 254] + Array("ünïcode".utf8)
            try await f.bus.publish(
                OutgoingMessage(
                    exchange: "", routingKey: queue, body: body,
                    headers: ["saga-id": "s-1", "attempt": "3", "trace": "00-abc-01"],
                    messageId: "m-42", contentType: "application/json", type: "ReserveStock",
                    correlationId: "c-7"))
            let delivery = try await inbox.next()
            #expect(delivery.body == body)
            #expect(delivery.headers == ["saga-id": "s-1", "attempt": "3", "trace": "00-abc-01"])
            #expect(delivery.messageId == "m-42")
            #expect(delivery.contentType == "application/json")
            #expect(delivery.type == "ReserveStock")
            #expect(delivery.correlationId == "c-7")
            try await delivery.ack()
        }
    }

    @Test("every basic property round-trips, and survives dead-lettering (but expiration)", arguments: BusKind.allCases)
    func everyPropertyRoundTrip(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let dlx = f.name("properties-dlx")
            let dead = f.name("properties-dead")
            let work = try await f.queue("every-property") { $0.deadLetterExchange = dlx }
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: dlx, kind: .fanout)], queues: [QueueSpec(name: dead)],
                    bindings: [BindingSpec(queue: dead, exchange: dlx, routingKey: "")]))
            let inbox = try await f.consume(work)
            let deadInbox = try await f.consume(dead)
            let full = OutgoingMessage(
                exchange: "", routingKey: work, body: Array("every property".utf8), headers: Self.everyFieldType,
                messageId: "m-every", contentType: "application/json", type: "Every", correlationId: "c-every",
                contentEncoding: "gzip", replyTo: "replies.here", appId: "conformance", userId: f.user,
                priority: 9, timestamp: 1_700_000_123, expiration: .seconds(600), persistent: false)
            let bare = OutgoingMessage(exchange: "", routingKey: work, body: Array("no property".utf8))
            try await f.bus.publish(full)
            try await f.bus.publish(bare)
            let deliveries = try await inbox.take(2)
            let (got, plain) = (deliveries[0], deliveries[1])
            Self.expectProperties(got, equal: full)
            #expect(got.expiration == .seconds(600))
            #expect(got.persistent == false)
            // Unset properties are nil, not empty; the bus always sends a delivery mode.
            #expect(plain.headers.isEmpty && plain.messageId == nil && plain.contentType == nil)
            #expect(plain.contentEncoding == nil && plain.type == nil && plain.correlationId == nil && plain.replyTo == nil)
            #expect(plain.appId == nil && plain.userId == nil && plain.priority == nil && plain.timestamp == nil)
            #expect(plain.expiration == nil && plain.persistent == true)

            // Republished from the delivery, it is the same message.
            try await f.bus.publish(OutgoingMessage(republishing: got, exchange: "", routingKey: work))
            let again = try await inbox.next()
            Self.expectProperties(again, equal: full)
            #expect(again.expiration == .seconds(600) && again.persistent == false)

            // Dead-lettered by the broker: every property kept but the expiration (as RabbitMQ does).
            try await again.reject()
            let letter = try await deadInbox.next()
            var headers = letter.headers
            for key in ["x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange"] {
                headers.removeValue(forKey: key)
            }
            #expect(headers == Self.everyFieldType)
            var withoutHeaders = full
            withoutHeaders.headers = letter.headers
            Self.expectProperties(letter, equal: withoutHeaders)
            #expect(letter.expiration == nil && letter.persistent == false)
            for delivery in deliveries + [letter] { try await delivery.ack() }
        }
    }

    /// Body, headers and every property but `expiration` and the delivery mode.
    static func expectProperties(_ delivery: Delivery, equal message: OutgoingMessage, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(delivery.body == message.body, sourceLocation: sourceLocation)
        #expect(delivery.headers == message.headers, sourceLocation: sourceLocation)
        #expect(delivery.messageId == message.messageId, sourceLocation: sourceLocation)
        #expect(delivery.contentType == message.contentType, sourceLocation: sourceLocation)
        #expect(delivery.contentEncoding == message.contentEncoding, sourceLocation: sourceLocation)
        #expect(delivery.type == message.type, sourceLocation: sourceLocation)
        #expect(delivery.correlationId == message.correlationId, sourceLocation: sourceLocation)
        #expect(delivery.replyTo == message.replyTo, sourceLocation: sourceLocation)
        #expect(delivery.appId == message.appId, sourceLocation: sourceLocation)
        #expect(delivery.userId == message.userId, sourceLocation: sourceLocation)
        #expect(delivery.priority == message.priority, sourceLocation: sourceLocation)
        #expect(delivery.timestamp == message.timestamp, sourceLocation: sourceLocation)
    }

    @Test("nack(requeue: true) redelivers with the redelivered flag", arguments: BusKind.allCases)
    func nackRequeue(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("requeue")
            let inbox = try await f.consume(queue)
            try await f.publish(queue, body: "again")
            let first = try await inbox.next()
            #expect(!first.redelivered)
            try await first.nack(requeue: true)
            let second = try await inbox.next()
            #expect(second.text == "again")
            #expect(second.redelivered)
            try await second.ack()
            try await second.ack()  // settling twice does nothing
            try await Task.sleep(for: .milliseconds(100))
            #expect(inbox.count == 0)
        }
    }

    @Test("reject and nack(requeue: false) dead-letter", arguments: BusKind.allCases)
    func rejectDeadLetters(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let dlx = f.name("dlx")
            let dead = f.name("dead")
            let work = f.name("work")
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: dlx, kind: .fanout)],
                    queues: [QueueSpec(name: dead), QueueSpec(name: work, deadLetterExchange: dlx)],
                    bindings: [BindingSpec(queue: dead, exchange: dlx, routingKey: "")]))
            let inbox = try await f.consume(work)
            let deadInbox = try await f.consume(dead)
            try await f.publish(work, body: "rejected")
            try await f.publish(work, body: "nacked")
            let deliveries = try await inbox.take(2)
            try await deliveries[0].reject()
            try await deliveries[1].nack(requeue: false)

            let deadLettered = try await deadInbox.take(2)
            #expect(deadLettered.map(\.text) == ["rejected", "nacked"])
            #expect(deadLettered.allSatisfy { $0.headers["x-first-death-reason"] == "rejected" })
            #expect(deadLettered.allSatisfy { $0.headers["x-first-death-queue"] == work })
            #expect(deadLettered.allSatisfy { $0.exchange == dlx && $0.queue == dead })
            for delivery in deadLettered { try await delivery.ack() }
        }
    }

    /// Every AMQP field type RabbitMQ accepts, nested in tables and arrays too.
    static let everyFieldType: MessageHeaders = [
        "string": "ünïcode ✓", "empty-string": "", "bytes": .bytes([0, 1, 2, 255]), "true": true, "false": false,
        "int8": .int8(-8), "uint8": .uint8(200), "int16": .int16(-1600), "uint16": .uint16(60_000),
        "int32": .int32(-320_000), "uint32": .uint32(4_000_000_000), "int64": .int64(-6_400_000_000_000),
        "float": .float(1.5), "double": .double(-2.25e100), "decimal": .decimal(scale: 2, value: 12_345),
        "timestamp": .timestamp(1_700_000_000), "void": .void,
        "array": .array(["a", .int32(1), .bool(true), .array([.double(0.5)]), .table(["k": "v"])]),
        "empty-array": .array([]),
        "table": .table([
            "nested": .table(["deeper": .decimal(scale: 0, value: 7), "list": .array([.timestamp(1), .void])]),
            "n": .int64(42),
        ]),
        "empty-table": .table([:]),
    ]

    @Test("typed headers (tables, arrays, decimals, typed numbers …) survive publish and dead-lettering", arguments: BusKind.allCases)
    func typedHeadersRoundTrip(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let dlx = f.name("typed-dlx")
            let dead = f.name("typed-dead")
            let work = f.name("typed-work")
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: dlx, kind: .fanout)],
                    queues: [QueueSpec(name: dead), QueueSpec(name: work, deadLetterExchange: dlx)],
                    bindings: [BindingSpec(queue: dead, exchange: dlx, routingKey: "")]))
            let inbox = try await f.consume(work)
            let deadInbox = try await f.consume(dead)
            try await f.bus.publish(
                OutgoingMessage(exchange: "", routingKey: work, body: [1, 2, 3], headers: Self.everyFieldType, messageId: "typed-1"))
            let delivery = try await inbox.next()
            #expect(delivery.headers == Self.everyFieldType)
            try await delivery.reject()

            // The broker dead-letters it: the same headers, plus its own x-death (written by the broker, so its
            // types check the decoding independently of the encoding).
            let letter = try await deadInbox.next()
            var original = letter.headers
            for key in ["x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange"] {
                original.removeValue(forKey: key)
            }
            #expect(original == Self.everyFieldType)
            guard case .array(let deaths)? = letter.headers[field: "x-death"], case .table(let death)? = deaths.first else {
                Issue.record("no x-death array of tables: \(letter.headers[field: "x-death"].map { "\($0)" } ?? "none")")
                return
            }
            #expect(death[field: "count"] == .int64(1))
            #expect(death["reason"] == "rejected")
            #expect(death["queue"] == work)
            #expect(death[field: "routing-keys"] == .array([.string(work)]))
            if case .timestamp(let seconds)? = death[field: "time"] {
                #expect(abs(Double(seconds) - Date().timeIntervalSince1970) < 120)
            } else {
                Issue.record("x-death time is not a timestamp: \(death[field: "time"].map { "\($0)" } ?? "none")")
            }

            // Published again as consumed (what a dead-letter requeue does): the same table arrives.
            let again = f.name("typed-again")
            try await f.declare(Topology(queues: [QueueSpec(name: again)]))
            let againInbox = try await f.consume(again)
            try await f.bus.publish(OutgoingMessage(exchange: "", routingKey: again, body: letter.body, headers: letter.headers))
            #expect(try await againInbox.next().headers == letter.headers)
            try await letter.ack()
        }
    }

    @Test("a mandatory message that matches no queue fails with unroutable", arguments: BusKind.allCases)
    func unroutable(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let exchange = f.name("nowhere")
            try await f.declare(Topology(exchanges: [ExchangeSpec(name: exchange, kind: .direct)]))
            let error = await #expect(throws: BusError.self) {
                try await f.publish("no.such.key", exchange: exchange, body: "lost?")
            }
            #expect(error?.matches(.unroutable, mentioning: [exchange, "no.such.key"]) == true, "\(String(describing: error))")
            // Not mandatory: accepted and dropped (broker semantics).
            try await f.publish("no.such.key", exchange: exchange, body: "dropped", mandatory: false)
            // A routable publish after the failure still works.
            let queue = try await f.queue("after-unroutable")
            try await f.publish(queue, body: "fine")
        }
    }

    @Test("a queue TTL dead-letters back to the command exchange (retry delay)", arguments: BusKind.allCases)
    func ttlDeadLettersBack(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let commands = f.name("commands")
            let work = f.name("work")
            let retry = f.name("retry-200ms")
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: commands, kind: .direct)],
                    queues: [
                        QueueSpec(name: work),
                        QueueSpec(
                            name: retry, deadLetterExchange: commands, deadLetterRoutingKey: "work",
                            messageTTL: .milliseconds(200)),
                    ],
                    bindings: [BindingSpec(queue: work, exchange: commands, routingKey: "work")]))
            let inbox = try await f.consume(work)
            let start = ContinuousClock.now
            try await f.publish(retry, body: "later", headers: ["attempt": "2"])
            let delivery = try await inbox.next(timeout: .seconds(5))
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(150), "arrived after \(waited)")
            #expect(delivery.text == "later")
            #expect(delivery.headers["attempt"] == "2")
            #expect(delivery.headers["x-first-death-reason"] == "expired")
            #expect(delivery.exchange == commands && delivery.routingKey == "work")
            try await delivery.ack()
        }
    }

    @Test("prefetch bounds unsettled deliveries per consumer", arguments: BusKind.allCases)
    func prefetchRespected(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("prefetch")
            for i in 0..<5 { try await f.publish(queue, body: "m\(i)") }
            let inbox = try await f.consume(queue, prefetch: 2)
            let firstTwo = try await inbox.take(2)
            try await Task.sleep(for: .milliseconds(200))
            #expect(inbox.count == 0, "a third delivery arrived although prefetch is 2")
            try await firstTwo[0].ack()
            let third = try await inbox.next()
            #expect(third.text == "m2")
            try await Task.sleep(for: .milliseconds(100))
            #expect(inbox.count == 0)
            for delivery in [firstTwo[1], third] { try await delivery.ack() }
            let rest = try await inbox.take(2)
            #expect(rest.map(\.text) == ["m3", "m4"])
            for delivery in rest { try await delivery.ack() }
        }
    }

    @Test("redeclaring is idempotent; conflicting arguments name the queue and the argument", arguments: BusKind.allCases)
    func redeclare(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let name = f.name("redeclare")
            let spec = QueueSpec(name: name, messageTTL: .seconds(60))
            let exchange = ExchangeSpec(name: f.name("x"), kind: .topic)
            let topology = Topology(
                exchanges: [exchange], queues: [spec],
                bindings: [BindingSpec(queue: name, exchange: exchange.name, routingKey: "a.#")])
            try await f.declare(topology)
            try await f.declare(topology)

            var conflicting = spec
            conflicting.messageTTL = .seconds(5)
            let error = await #expect(throws: BusError.self) { try await f.declare(Topology(queues: [conflicting])) }
            #expect(error?.matches(.preconditionFailed, mentioning: [name, "x-message-ttl"]) == true, "\(String(describing: error))")

            let exchangeError = await #expect(throws: BusError.self) {
                try await f.declare(Topology(exchanges: [ExchangeSpec(name: exchange.name, kind: .fanout)]))
            }
            #expect(exchangeError?.code == .preconditionFailed)
            #expect(exchangeError?.description.contains(exchange.name) == true)

            // The bus still works after the refused declarations.
            try await f.declare(topology)
            let inbox = try await f.consume(name)
            try await f.publish("a.b.c", exchange: exchange.name, body: "topic")
            try await inbox.next().ack()
        }
    }

    @Test("fanout and topic exchanges route like RabbitMQ", arguments: BusKind.allCases)
    func exchangeKinds(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let fanout = f.name("events")
            let topic = f.name("topic")
            let a = f.name("a")
            let b = f.name("b")
            try await f.declare(
                Topology(
                    exchanges: [ExchangeSpec(name: fanout, kind: .fanout), ExchangeSpec(name: topic, kind: .topic)],
                    queues: [QueueSpec(name: a), QueueSpec(name: b)],
                    bindings: [
                        BindingSpec(queue: a, exchange: fanout, routingKey: ""),
                        BindingSpec(queue: b, exchange: fanout, routingKey: ""),
                        BindingSpec(queue: a, exchange: topic, routingKey: "order.*.created"),
                        BindingSpec(queue: b, exchange: topic, routingKey: "order.#"),
                    ]))
            let inboxA = try await f.consume(a)
            let inboxB = try await f.consume(b)
            try await f.publish("anything", exchange: fanout, body: "both")
            try await f.publish("order.eu.created", exchange: topic, body: "both-topic")
            try await f.publish("order", exchange: topic, body: "b-only")
            let gotA = try await inboxA.take(2)
            let gotB = try await inboxB.take(3)
            #expect(gotA.map(\.text) == ["both", "both-topic"])
            #expect(gotB.map(\.text) == ["both", "both-topic", "b-only"])
            for delivery in gotA + gotB { try await delivery.ack() }
        }
    }

    @Test("a consumer that stops hands the deliveries it releases unsettled to the next one", arguments: BusKind.allCases)
    func cancelledConsumerRequeues(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("handover")
            try await f.publish(queue, body: "held")
            let first = try await f.consume(queue)
            var dropped: Delivery? = try await first.next()
            #expect(dropped != nil)
            first.stop()
            try await Task.sleep(for: .milliseconds(200))  // the stream has ended
            dropped = nil  // released unsettled: back to the queue
            let second = try await f.consume(queue)
            let again = try await second.next()
            #expect(again.text == "held")
            #expect(again.redelivered)
            try await again.ack()
        }
    }

    /// A participant that stops gracefully lets its running handlers finish: the delivery a
    /// handler still holds must not go to another consumer meanwhile (it did on RabbitMQ, whose
    /// channel was closed at once: every graceful stop of a slow service ran its in-flight steps
    /// a second time, concurrently, elsewhere). What the stopped consumer releases unsettled goes
    /// back at once.
    @Test("a consumer that stops keeps the delivery a handler holds until it is settled", arguments: BusKind.allCases)
    func stoppedConsumerKeepsHeldDeliveries(kind: BusKind) async throws {
        try await BusFixture.with(kind) { f in
            let queue = try await f.queue("held-on-stop")
            for i in 0..<2 { try await f.publish(queue, body: "m\(i)") }
            let first = try await f.consume(queue)
            var taken = try await first.take(2)
            let held = taken.removeFirst()
            #expect(held.text == "m0")
            first.stop()
            try await Task.sleep(for: .milliseconds(200))  // the stream has ended
            taken.removeAll()  // m1 released unsettled: back to the queue

            let second = try await f.consume(queue)
            let handedBack = try await second.next()
            #expect(handedBack.text == "m1" && handedBack.redelivered)
            try await Task.sleep(for: .milliseconds(700))
            #expect(second.count == 0, "the delivery a handler still holds went to another consumer")
            try await held.ack()
            try await Task.sleep(for: .milliseconds(500))
            #expect(second.count == 0, "an acknowledged delivery came back")
            try await handedBack.ack()
        }
    }

    @Test("errors: body over the limit, missing queue, missing exchange", arguments: BusKind.allCases)
    func errors(kind: BusKind) async throws {
        try await BusFixture.with(kind, maxBodySize: 1024) { f in
            let queue = try await f.queue("limits")
            let tooLarge = await #expect(throws: BusError.self) {
                try await f.bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array(repeating: 1, count: 1025)))
            }
            #expect(tooLarge?.matches(.messageTooLarge, mentioning: ["1025", "1024"]) == true)
            try await f.bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array(repeating: 1, count: 1024)))

            let missing = f.name("missing")
            let noQueue = await #expect(throws: BusError.self) { _ = try await f.bus.consume(queue: missing, prefetch: 1) }
            #expect(noQueue?.matches(.notFound, mentioning: [missing]) == true, "\(String(describing: noQueue))")

            let noExchange = await #expect(throws: BusError.self) { try await f.publish("k", exchange: missing, body: "x") }
            #expect(noExchange?.matches(.notFound, mentioning: [missing]) == true, "\(String(describing: noExchange))")

            // The bus still publishes and consumes afterwards.
            let inbox = try await f.consume(queue)
            let delivery = try await inbox.next()
            #expect(delivery.body.count == 1024)
            try await delivery.ack()
        }
    }

    @Test("shutdown ends consumer streams and refuses new work", arguments: BusKind.allCases)
    func shutdown(kind: BusKind) async throws {
        guard let f = try await BusFixture.make(kind) else { return }
        let queue = try await f.queue("shutdown")
        let inbox = try await f.consume(queue)
        try await f.publish(queue, body: "last")
        let delivery = try await inbox.next()
        try await delivery.ack()
        if let rabbit = f.bus as? RabbitMQBus { try await rabbit.deleteQueue(queue) }
        await f.bus.shutdown()
        let end = try await inbox.waitForEnd()
        #expect((try? end.get()) != nil)
        let error = await #expect(throws: BusError.self) { try await f.publish(queue, body: "too late") }
        #expect(error?.code == .closed)
        await f.bus.shutdown()  // twice is fine
    }
}
