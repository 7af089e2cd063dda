import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Synchronization
import Testing

/// Connection loss and broker restart. These run against a private broker started by `scripts/rabbitmq.sh` on
/// its own port (the shared test broker's port + 1), so closing every connection and restarting the broker does
/// not disturb the other tests running in parallel.
@Suite(
    "RabbitMQ recovery (private broker)", .serialized, .enabled(if: TestBroker.shouldRunIntegrationTests),
    .timeLimit(.minutes(3)))
struct RabbitMQRecoveryTests {
    static let port = (Int(ProcessInfo.processInfo.environment["RABBITMQ_PORT"] ?? "") ?? 5672) + 1

    /// Everything the publishers and the consumer of one scenario observed.
    final class Ledger: Sendable {
        private struct State {
            var confirmed = Set<Int>()
            var failed: [Int: BusError.Code] = [:]
            var consumed = Set<Int>()
            var deliveries = 0
        }
        private let state = Mutex(State())
        /// Tells the publishers to stop.
        let stop = Atomic<Bool>(false)

        func confirm(_ n: Int) { state.withLock { _ = $0.confirmed.insert(n) } }
        func fail(_ n: Int, _ code: BusError.Code) { state.withLock { $0.failed[n] = code } }
        func consume(_ n: Int) {
            state.withLock {
                $0.consumed.insert(n)
                $0.deliveries += 1
            }
        }
        var confirmed: Set<Int> { state.withLock { $0.confirmed } }
        var failed: [Int: BusError.Code] { state.withLock { $0.failed } }
        var consumed: Set<Int> { state.withLock { $0.consumed } }
        var deliveries: Int { state.withLock { $0.deliveries } }
    }

    @Test("connections closed by the broker mid-flow, then a broker restart: nothing confirmed is lost")
    func recovery() async throws {
        try await TestBroker.runScript(["start"], port: Self.port)

        var configuration = try RabbitMQConfiguration(url: TestBroker.privateBrokerURL(port: Self.port))
        configuration.reconnectDelayMin = .milliseconds(50)
        configuration.reconnectDelayMax = .milliseconds(500)
        configuration.heartbeat = .seconds(5)
        configuration.connectionName = "SagaBusTests recovery"
        let bus = try await RabbitMQBus.connect(configuration)

        do {
            try await connectionsClosedWhileFlowing(bus)
            try await aDeliveryIsNoLongerHeldOnceItsConnectionIsGone(bus)
            try await brokerRestartKeepsDurableMessages(bus)
            try await aConsumerWithdrawnWhileDownNeverStarts(bus)
        } catch {
            await bus.shutdown()
            _ = try? await TestBroker.runScript(["stop"], port: Self.port)
            throw error
        }
        await bus.shutdown()
        try await TestBroker.runScript(["stop"], port: Self.port)
    }

    /// `rabbitmqctl close_all_connections` while one task publishes and a consumer acks: every confirmed message
    /// is consumed, unconfirmed ones are re-sent (or reported as connectionLost), and the consumer resumes by
    /// itself.
    private func connectionsClosedWhileFlowing(_ bus: RabbitMQBus) async throws {
        let queue = "test.close-all.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        let ledger = Ledger()

        let stream = try await bus.consume(queue: queue, prefetch: 100)
        let consumer = Task {
            for try await delivery in stream {
                ledger.consume(Int(delivery.messageId ?? "") ?? -1)
                try await delivery.ack()
            }
        }
        let publisher = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<32 {
                    group.addTask {
                        var n = lane
                        while !ledger.stop.load(ordering: .relaxed) {
                            do {
                                try await bus.publish(
                                    OutgoingMessage(
                                        exchange: "", routingKey: queue, body: Array(repeating: 7, count: 64),
                                        messageId: String(n)))
                                ledger.confirm(n)
                            } catch let error as BusError {
                                ledger.fail(n, error.code)
                            }
                            n += 32
                        }
                    }
                }
                try await group.waitForAll()
            }
        }

        // However this test ends, the publishers stop (a failed wait must not leave them spinning).
        defer { ledger.stop.store(true, ordering: .relaxed) }
        try await waitUntil("500 confirms before the close") { ledger.confirmed.count >= 500 }
        try await TestBroker.runScript(["ctl", "close_all_connections", "SagaKit recovery test"], port: Self.port)
        let consumedAtClose = ledger.deliveries
        let confirmedAtClose = ledger.confirmed.count
        try await waitUntil("publishing and consuming resume after the close", timeout: .seconds(30)) {
            ledger.confirmed.count > confirmedAtClose + 500 && ledger.deliveries > consumedAtClose + 500
        }
        ledger.stop.store(true, ordering: .relaxed)
        try await publisher.value

        let confirmed = ledger.confirmed
        try await waitUntil("every confirmed message consumed", timeout: .seconds(30)) {
            ledger.consumed.isSuperset(of: confirmed)
        }
        #expect(ledger.failed.values.allSatisfy { $0 == .connectionLost }, "\(ledger.failed)")
        #expect(confirmed.count > 1000)
        consumer.cancel()
        try await bus.deleteQueue(queue)
    }

    /// A delivery held unsettled says it is held (``DeliverySettler/isStillHeld``) until its
    /// connection is closed; the broker then delivers it again, and the new delivery is held. (A
    /// participant tries a command again in place only while it holds it.)
    private func aDeliveryIsNoLongerHeldOnceItsConnectionIsGone(_ bus: RabbitMQBus) async throws {
        let queue = "test.held.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("held".utf8), messageId: "held-1"))
        let stream = try await bus.consume(queue: queue, prefetch: 1)
        var deliveries = stream.makeAsyncIterator()
        let first = try #require(try await deliveries.next())
        #expect(first.settler.isStillHeld && !first.redelivered)
        try await TestBroker.runScript(["ctl", "close_all_connections", "SagaKit held-delivery test"], port: Self.port)
        try await waitUntil("the delivery is no longer held after the close") { !first.settler.isStillHeld }
        let again = try #require(try await deliveries.next())
        #expect(again.messageId == "held-1" && again.redelivered)
        #expect(again.settler.isStillHeld && !first.settler.isStillHeld)
        try await again.ack()
        try await bus.deleteQueue(queue)
    }

    /// Stop and start the broker with messages in a durable queue: no confirmed message is lost, and publishes
    /// made while the broker is down wait for the reconnect.
    private func brokerRestartKeepsDurableMessages(_ bus: RabbitMQBus) async throws {
        let queue = "test.restart.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue, durable: true)]))
        let ledger = Ledger()
        func publish(_ range: Range<Int>) async throws {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in range {
                    group.addTask {
                        do {
                            try await bus.publish(
                                OutgoingMessage(
                                    exchange: "", routingKey: queue, body: Array("durable".utf8), messageId: String(n),
                                    persistent: true))
                            ledger.confirm(n)
                        } catch let error as BusError {
                            ledger.fail(n, error.code)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        try await publish(0..<1000)
        #expect(ledger.confirmed.count == 1000)

        async let during: Void = {
            try await Task.sleep(for: .milliseconds(300))
            try await publish(1000..<1200)
        }()
        try await TestBroker.runScript(["restart"], port: Self.port)
        try await during

        let stream = try await bus.consume(queue: queue, prefetch: 300)
        let confirmed = ledger.confirmed
        #expect(confirmed.count == 1200, "failed: \(ledger.failed)")
        let consumer = Task {
            for try await delivery in stream {
                ledger.consume(Int(delivery.messageId ?? "") ?? -1)
                try await delivery.ack()
            }
        }
        try await waitUntil("every confirmed message consumed after the restart", timeout: .seconds(30)) {
            ledger.consumed.isSuperset(of: confirmed)
        }
        consumer.cancel()
        try await bus.deleteQueue(queue)
    }
}

extension RabbitMQRecoveryTests {
    /// A caller that gives up on `consume` while the broker is away (a console page with a
    /// deadline) is not left waiting for the reconnect, and the consumer it withdrew does not
    /// start when the broker is back: every message goes to the consumer that was asked for later.
    fileprivate func aConsumerWithdrawnWhileDownNeverStarts(_ bus: RabbitMQBus) async throws {
        let queue = "test.withdrawn.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue, durable: true)]))
        try await TestBroker.runScript(["stop"], port: Self.port)
        try await Task.sleep(for: .seconds(1))
        let started = ContinuousClock.now
        let outcome = await withThrowingTaskGroup(of: Bool.self) { group -> (any Error)? in
            group.addTask {
                _ = try await bus.consume(queue: queue, prefetch: 10)
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(1))
                return false
            }
            defer { group.cancelAll() }
            do {
                _ = try await group.next()
                group.cancelAll()
                while try await group.next() != nil {}
                return nil
            } catch { return error }
        }
        #expect(outcome is CancellationError, "\(String(describing: outcome))")
        #expect(ContinuousClock.now - started < .seconds(5))
        try await TestBroker.runScript(["start"], port: Self.port)
        try await bus.declare(Topology(queues: [QueueSpec(name: queue, durable: true)]))
        for n in 0..<10 {
            try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("m".utf8), messageId: String(n)))
        }
        let stream = try await bus.consume(queue: queue, prefetch: 20)
        let received = Ledger()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await delivery in stream {
                    try await delivery.ack()
                    // A message a withdrawn consumer had taken would come back redelivered.
                    received.consume(delivery.redelivered ? -1 : Int(delivery.messageId ?? "") ?? -1)
                }
            }
            try await waitUntil("the later consumer got every message", timeout: .seconds(10)) {
                received.consumed == Set(0..<10)
            }
            group.cancelAll()
        }
        try await bus.deleteQueue(queue)
    }
}

/// Polls `condition` every 10 ms until it holds.
func waitUntil(
    _ what: String, timeout: Duration = .seconds(15), _ condition: () -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { throw TimeLimitExceeded(limit: timeout, what: what) }
        try await Task.sleep(for: .milliseconds(10))
    }
}
