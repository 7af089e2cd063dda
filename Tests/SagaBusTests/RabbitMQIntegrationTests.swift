import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Synchronization
import Testing

/// RabbitMQ-only behaviour against the test broker (`AMQP_URL` or the local default).
@Suite("RabbitMQ integration", .enabled(if: TestBroker.shouldRunIntegrationTests), .timeLimit(.minutes(2)))
struct RabbitMQIntegrationTests {
    private func configuration() throws -> RabbitMQConfiguration {
        var configuration = try RabbitMQConfiguration(url: TestBroker.url)
        configuration.connectTimeout = .seconds(3)
        configuration.shutdownTimeout = .seconds(5)
        return configuration
    }

    @Test("10,000 confirmed messages, none lost")
    func tenThousandConfirmed() async throws {
        var configuration = try configuration()
        configuration.confirmWindow = 64  // fewer than the 256 concurrent publishers: the window fills and reopens
        let bus = try await RabbitMQBus.connect(configuration)
        let queue = "test.ten-thousand.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        let total = 10_000
        let consumed = Mutex(Set<Int>())
        let stream = try await bus.consume(queue: queue, prefetch: 500)
        let consumer = Task {
            for try await delivery in stream {
                let n = Int(delivery.messageId ?? "") ?? -1
                let count = consumed.withLock { ids in
                    ids.insert(n)
                    return ids.count
                }
                try await delivery.ack()
                if count == total { return }
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            let lanes = 256
            for lane in 0..<lanes {
                group.addTask {
                    for n in stride(from: lane, to: total, by: lanes) {
                        try await bus.publish(
                            OutgoingMessage(
                                exchange: "", routingKey: queue, body: Array(repeating: UInt8(n % 251), count: 128),
                                messageId: String(n)))
                    }
                }
            }
            try await group.waitForAll()
        }
        try await withTimeout(.seconds(30)) { try await consumer.value }
        #expect(consumed.withLock { $0 } == Set(0..<total))
        try await bus.deleteQueue(queue)
        await bus.shutdown()
    }

    @Test("wrong password: the error names the user and the vhost")
    func wrongPassword() async throws {
        var configuration = try configuration()
        configuration.password = "definitely-wrong"
        let error = await #expect(throws: BusError.self) { try await RabbitMQBus.connect(configuration) }
        #expect(error?.code == .authenticationFailed)
        #expect(error?.description.contains("'\(configuration.user)'") == true, "\(String(describing: error))")
        #expect(error?.description.contains("vhost '\(configuration.vhost)'") == true)
        #expect(error?.description.contains("definitely-wrong") == false)
    }

    @Test("unreachable broker: the error names host:port")
    func unreachable() async throws {
        var configuration = try configuration()
        configuration.host = "127.0.0.1"
        configuration.port = 1
        let error = await #expect(throws: BusError.self) { try await RabbitMQBus.connect(configuration) }
        #expect(error?.matches(.unreachable, mentioning: ["127.0.0.1:1"]) == true, "\(String(describing: error))")
        #expect(error?.isRetryable == true)
    }

    @Test("missing vhost: the error names the vhost")
    func missingVhost() async throws {
        var configuration = try configuration()
        configuration.vhost = "no-such-vhost-\(UUID().uuidString.prefix(6))"
        let error = await #expect(throws: BusError.self) { try await RabbitMQBus.connect(configuration) }
        #expect(error?.matches(.vhostNotFound, mentioning: [configuration.vhost]) == true, "\(String(describing: error))")
    }

    @Test("shutdown stops consuming, waits for in-flight deliveries to be acked, then closes")
    func gracefulShutdown() async throws {
        let bus = try await RabbitMQBus.connect(configuration())
        let queue = "test.graceful.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        for n in 0..<3 {
            try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: [UInt8(n)]))
        }
        let inbox = Inbox(try await bus.consume(queue: queue, prefetch: 1))
        let inFlight = try await inbox.next()

        let start = ContinuousClock.now
        let shutdown = Task { await bus.shutdown() }
        try await Task.sleep(for: .milliseconds(300))
        try await inFlight.ack()  // still accepted while the bus drains
        await shutdown.value
        #expect(ContinuousClock.now - start < .seconds(3), "shutdown waited for its timeout instead of the ack")
        #expect((try? await inbox.waitForEnd().get()) != nil, "the stream ends normally")

        // The acked message is gone; the two never delivered are still there, not redelivered.
        let check = try await RabbitMQBus.connect(configuration())
        let remaining = Inbox(try await check.consume(queue: queue, prefetch: 10))
        let rest = try await remaining.take(2)
        #expect(rest.map(\.body) == [[1], [2]])
        #expect(rest.allSatisfy { !$0.redelivered })
        for delivery in rest { try await delivery.ack() }
        try await check.deleteQueue(queue)
        await check.shutdown()
    }

    @Test("a quorum queue with dead-lettering round-trips")
    func quorumQueue() async throws {
        let bus = try await RabbitMQBus.connect(configuration())
        let queue = "test.quorum.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue, kind: .quorum, deadLetterExchange: "")]))
        try await bus.declare(Topology(queues: [QueueSpec(name: queue, kind: .quorum, deadLetterExchange: "")]))
        let stream = try await bus.consume(queue: queue, prefetch: 1)
        try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("q".utf8)))
        for try await delivery in stream {
            #expect(delivery.body == Array("q".utf8))
            try await delivery.ack()
            break
        }
        try await bus.deleteQueue(queue)
        await bus.shutdown()
    }
}

/// Runs `body`, failing when it takes longer than `limit`.
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw TimeLimitExceeded(limit: limit)
        }
        return value
    }
}

struct TimeLimitExceeded: Error, CustomStringConvertible {
    var limit: Duration
    var what = ""
    var description: String { "\(what.isEmpty ? "did not finish" : what): not within \(limit)" }
}
