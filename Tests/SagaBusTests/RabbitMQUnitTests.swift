import SagaCore
import Testing

@testable import SagaRabbitMQ

/// Pure parts of the RabbitMQ transport, no broker needed.
@Suite("RabbitMQ transport units")
struct RabbitMQUnitTests {
    @Test("URL parsing: credentials, port, %2F vhost, defaults, query")
    func urlParsing() throws {
        let c = try RabbitMQConfiguration(url: "amqp://us%40er:p%3Ass@broker.local:5673/%2F?heartbeat=5")
        #expect(c.user == "us@er" && c.password == "p:ss")
        #expect(c.host == "broker.local" && c.port == 5673 && c.vhost == "/")
        #expect(c.heartbeat == .seconds(5))
        #expect(!c.redactedURL.contains("p:ss"))

        let d = try RabbitMQConfiguration(url: "amqp://localhost")
        #expect(d.host == "localhost" && d.port == 5672 && d.vhost == "/" && d.user == "guest")
        #expect(try RabbitMQConfiguration(url: "amqp://u:p@h/sagas").vhost == "sagas")
        #expect(try RabbitMQConfiguration(url: "amqp://u:p@[::1]:5000/v").host == "::1")

        #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "http://x") }
        #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://h:99999/") }
        #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://u:%zz@h/") }
        #expect(RabbitMQConfiguration.redacted("amqp://u:secret@h/") == "amqp://u:***@h/")
    }

    @Test("a returned publish counts as a lost route only where a recorded binding routes it (direct, fanout, topic)")
    func recordedRoutes() {
        let topology = Topology(
            exchanges: [
                ExchangeSpec(name: "c", kind: .direct), ExchangeSpec(name: "d", kind: .fanout), ExchangeSpec(name: "e", kind: .topic),
                ExchangeSpec(name: "unbound", kind: .fanout),
            ],
            queues: [QueueSpec(name: "q")],
            bindings: [
                BindingSpec(queue: "q", exchange: "c", routingKey: "svc.do"), BindingSpec(queue: "q", exchange: "d", routingKey: ""),
                BindingSpec(queue: "q", exchange: "e", routingKey: "order.*.done"),
                BindingSpec(queue: "q", exchange: "e", routingKey: "audit.#"),
            ])
        #expect(topology.declaresRoute(exchange: "c", routingKey: "svc.do"))
        #expect(!topology.declaresRoute(exchange: "c", routingKey: "svc.undo"))
        #expect(topology.declaresRoute(exchange: "d", routingKey: "anything"))
        #expect(!topology.declaresRoute(exchange: "unbound", routingKey: "x"), "no binding from it")
        #expect(!topology.declaresRoute(exchange: "elsewhere", routingKey: "svc.do"), "not declared here")
        #expect(topology.declaresRoute(exchange: "e", routingKey: "order.42.done"))
        #expect(!topology.declaresRoute(exchange: "e", routingKey: "order.42.x.done"))
        #expect(topology.declaresRoute(exchange: "e", routingKey: "audit"))
        #expect(topology.declaresRoute(exchange: "e", routingKey: "audit.a.b"))
        #expect(!topology.declaresRoute(exchange: "e", routingKey: "auditor"))
    }

    @Test("confirm tracker: single and multiple acks, returns, reset")
    func confirmTracker() {
        var tracker = ConfirmTracker<String>()
        for name in ["a", "b", "c", "d", "e"] { tracker.add(name) }
        #expect(tracker.count == 5)

        var done: [String] = []
        tracker.confirm(tag: 2, multiple: false) { done.append($0.item) }
        #expect(done == ["b"])
        tracker.confirm(tag: 4, multiple: true) { done.append($0.item) }
        #expect(done == ["b", "a", "c", "d"])
        tracker.confirm(tag: 4, multiple: true) { done.append($0.item) }  // duplicate: nothing
        tracker.confirm(tag: 99, multiple: false) { done.append($0.item) }  // unknown: nothing
        #expect(tracker.count == 1)

        tracker.add("f")
        let info = ConfirmTracker<String>.ReturnedInfo(replyCode: 312, replyText: "NO_ROUTE")
        #expect(tracker.markReturned(info) { $0 == "f" })
        #expect(!tracker.markReturned(info) { $0 == "f" })  // already returned
        var returned: [String] = []
        tracker.confirm(tag: 6, multiple: true) { entry in if entry.returned != nil { returned.append(entry.item) } }
        #expect(returned == ["f"])
        #expect(tracker.isEmpty)

        tracker.add("g")
        tracker.add("h")
        #expect(tracker.removeAll().map(\.item) == ["g", "h"])
        #expect(tracker.add("i") == 1)  // a new channel numbers from 1
    }

    @Test("confirm tracker stays correct across compaction")
    func confirmTrackerCompaction() {
        var tracker = ConfirmTracker<Int>()
        var confirmed = 0
        for i in 0..<10_000 {
            tracker.add(i)
            if i % 3 == 2 { tracker.confirm(tag: UInt64(i + 1), multiple: true) { _ in confirmed += 1 } }
        }
        tracker.confirm(tag: 10_000, multiple: true) { _ in confirmed += 1 }
        #expect(confirmed == 10_000)
        #expect(tracker.isEmpty)
    }

    @Test("broker reply texts become errors that name the queue and the argument")
    func brokerErrorText() {
        let conflict = BrokerErrorText.channelError(
            code: 406,
            text: "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'orders' in vhost '/': "
                + "received the value '5000' of type 'signedint' but current is none",
            operation: "declaring queue 'orders'")
        #expect(conflict.code == .preconditionFailed)
        #expect(conflict.message.contains("'orders'") && conflict.message.contains("'x-message-ttl'"))

        let missing = BrokerErrorText.channelError(
            code: 404, text: "NOT_FOUND - no exchange 'ex' in vhost '/'", operation: "publishing")
        #expect(missing.code == .notFound && missing.message.contains("'ex'"))

        let login = BrokerErrorText.connectionRefusal(
            code: 403, text: "ACCESS_REFUSED - Login was refused", user: "bob", vhost: "/", place: "h:1")
        #expect(login.code == .authenticationFailed && login.message.contains("'bob'") && login.message.contains("'/'"))

        let vhost = BrokerErrorText.connectionRefusal(
            code: 530, text: "NOT_ALLOWED - vhost nope not found", user: "bob", vhost: "nope", place: "h:1")
        #expect(vhost.code == .vhostNotFound && vhost.message.contains("'nope'"))
    }
}

@Suite("Ack coalescing")
struct AckCoalescerTests {
    @Test("in-order acks become one multiple ack")
    func inOrder() {
        var acks = AckCoalescer()
        for tag in 1...5 as ClosedRange<UInt64> { acks.ack(tag) }
        let frames = acks.flush()
        #expect(frames.multipleUpTo == 5 && frames.singles.isEmpty)
        #expect(acks.flush().multipleUpTo == nil)
    }

    @Test("a held delivery is never covered by a multiple ack")
    func gap() {
        var acks = AckCoalescer()
        acks.ack(1)
        acks.ack(2)
        acks.ack(4)  // 3 is still held by the application
        let first = acks.flush()
        #expect(first.multipleUpTo == 2 && first.singles == [4])
        acks.settledOtherwise(3)  // nacked
        acks.ack(5)
        let second = acks.flush()
        #expect(second.multipleUpTo == 5 && second.singles.isEmpty)
        #expect(acks.lowestUnsettled == 6)
    }

    @Test("a multiple ack never ends on a tag that was settled before")
    func endsOnAnOutstandingTag() {
        var acks = AckCoalescer()
        acks.ack(2)
        #expect(acks.flush() == (nil, [2]))  // 1 is still held
        acks.settledOtherwise(3)  // nacked
        acks.ack(1)
        // Everything up to 3 is settled now, but 2 and 3 are no longer outstanding at the broker.
        let frames = acks.flush()
        #expect(frames.multipleUpTo == 1 && frames.singles.isEmpty)
        #expect(acks.lowestUnsettled == 4)
    }
}

@Suite("RabbitMQ configuration")
struct RabbitMQConfigurationTests {
    @Test("several hosts become endpoints; the redacted URL names them without the password")
    func endpoints() throws {
        let c = try RabbitMQConfiguration(url: "amqp://u:s3cret@h1:5673,h2/v?connection_timeout=4000")
        #expect(c.endpoints == [.init(host: "h1", port: 5673), .init(host: "h2", port: 5672)])
        #expect(c.host == "h1" && c.port == 5673 && c.vhost == "v" && c.connectTimeout == .seconds(4))
        // connection_timeout is in milliseconds, as in RabbitMQ's URI specification; a count that
        // looks like seconds is refused, saying what to write.
        let short = #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://u:s3cret@h/v?connection_timeout=30") }
        #expect(short?.description.contains("30 ms is too short") == true, "\(String(describing: short))")
        #expect(short?.recoverySuggestion?.contains("connection_timeout=30000") == true)
        #expect(c.redactedURL == "amqp://u@h1:5673,h2:5672/v")
        let error = #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://u:s3cret@h1:x/v") }
        #expect(error?.code == .invalidURL)
        #expect(error?.description.contains("s3cret") == false)
        // A malformed value of a query item the client uses is refused by name; others are ignored.
        let heartbeat = #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://u:s3cret@h/v?heartbeat=xyz") }
        #expect(heartbeat?.description.contains("the query item 'heartbeat'") == true, "\(String(describing: heartbeat))")
        #expect(heartbeat?.description.contains("not 'xyz'") == true && heartbeat?.description.contains("s3cret") == false)
        #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://h/?connection_timeout=-1") }
        #expect(try RabbitMQConfiguration(url: "amqp://h/?channel_max=7&heartbeat=12").heartbeat == .seconds(12))
        // amqps:// is TLS on 5671, verification on.
        let tls = try RabbitMQConfiguration(url: "amqps://u:p@h/?cacertfile=/etc/ca.pem")
        #expect(tls.endpoints == [.init(host: "h", port: 5671)] && tls.redactedURL == "amqps://u@h:5671/%2F")
        #expect(tls.tls == .init(caCertificateFile: "/etc/ca.pem", verifyPeer: true))
        #expect(try RabbitMQConfiguration(url: "amqps://u:p@h/?verify=verify_none").tls?.verifyPeer == false)
        #expect(throws: BusError.self) { try RabbitMQConfiguration(url: "amqp://u:p@h/?cacertfile=/etc/ca.pem") }
    }
}
