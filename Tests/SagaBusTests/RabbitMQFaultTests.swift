import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Synchronization
import Testing

/// Faults found from outside (issue 12): a deleted queue, a host that does not resolve, a peer that accepts TCP
/// but never speaks AMQP.
@Suite("RabbitMQ transport faults", .enabled(if: TestBroker.shouldRunIntegrationTests), .timeLimit(.minutes(2)))
struct RabbitMQFaultTests {
    @Test("a consumer whose queue is deleted re-declares it, resumes, and receives what is published afterwards")
    func deletedQueueIsRedeclaredAndConsumed() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let consumerBus = try await RabbitMQBus.connect(url: url)
        let other = try await RabbitMQBus.connect(url: url)
        let queue = "test.cancel.\(UUID().uuidString.prefix(8).lowercased())"
        try await consumerBus.declare(Topology(queues: [QueueSpec(name: queue)]))
        let collector = StreamCollector(try await consumerBus.consume(queue: queue, prefetch: 4))
        try await other.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("before".utf8)))
        try await collector.waitFor(count: 1, within: .seconds(10))

        // Someone deletes the queue (an operator, `rabbitmqctl delete_queue`).
        try await other.deleteQueue(queue)

        // The consumer's bus re-declares it and consumes again: a message published afterwards arrives.
        let deadline = ContinuousClock.now + .seconds(15)
        while true {
            do {
                try await other.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("after".utf8)))
                break
            } catch let error as BusError where error.code == .unroutable && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        try await collector.waitFor(count: 2, within: .seconds(10))
        #expect(collector.bodies == ["before", "after"])
        #expect(collector.failure == nil)
        // Stop the consumer first, or it would declare the queue again after the clean-up deletes it.
        await consumerBus.shutdown()
        try await other.deleteQueue(queue)
        await other.shutdown()
    }

    /// An operator deletes an exchange, or a queue a publisher's exchange routes to, while the
    /// services run: the next publish that needs it makes the bus declare its recorded topology
    /// again and send it once more, so the publish succeeds (it used to fail until a reconnect).
    @Test("a deleted exchange or bound queue of the bus's own topology is declared again and the publish succeeds")
    func deletedExchangeOrBoundQueueIsDeclaredAgainOnPublish() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let bus = try await RabbitMQBus.connect(url: url)
        let operator_ = try await RabbitMQBus.connect(url: url)
        let name = "test.repair.\(UUID().uuidString.prefix(8).lowercased())"
        let commands = name + ".commands"
        let delay = name + ".delay.1s"
        let queue = name + ".service"
        try await bus.declare(
            Topology(
                exchanges: [ExchangeSpec(name: commands, kind: .direct), ExchangeSpec(name: delay, kind: .fanout)],
                queues: [QueueSpec(name: queue), QueueSpec(name: delay)],
                bindings: [
                    BindingSpec(queue: queue, exchange: commands, routingKey: "svc.do"),
                    BindingSpec(queue: delay, exchange: delay, routingKey: ""),
                ]))
        func publish(_ exchange: String, _ key: String) async throws {
            try await bus.publish(OutgoingMessage(exchange: exchange, routingKey: key, body: Array("x".utf8)))
        }
        try await publish(commands, "svc.do")

        // The command exchange is deleted (with its bindings): the publish declares it again.
        try await operator_.deleteExchange(commands)
        try await publish(commands, "svc.do")
        // The delay queue is deleted: the returned publish declares it again (after the 5 s
        // that keep repairs from repeating).
        try await Task.sleep(for: .seconds(5))
        try await operator_.deleteQueue(delay)
        try await publish(delay, "svc.do")

        // A route this bus never declared still fails as unroutable.
        do {
            try await publish(commands, "nobody.listens")
            Issue.record("a publish nobody is bound for succeeded")
        } catch let error as BusError {
            #expect(error.code == .unroutable, "\(error)")
        }
        let service = StreamCollector(try await operator_.consume(queue: queue, prefetch: 10))
        let delayed = StreamCollector(try await operator_.consume(queue: delay, prefetch: 10))
        try await service.waitFor(count: 2, within: .seconds(10))
        try await delayed.waitFor(count: 1, within: .seconds(10))
        await bus.shutdown()
        await operator_.shutdown()
        let cleanUp = try await RabbitMQBus.connect(url: url)
        for queue in [queue, delay] { try await cleanUp.deleteQueue(queue) }
        for exchange in [commands, delay] { try await cleanUp.deleteExchange(exchange) }
        await cleanUp.shutdown()
    }

    @Test("a consumer whose queue is deleted and cannot be re-declared ends its stream with an error")
    func deletedQueueThatCannotBeRedeclaredFailsLoudly() async throws {
        guard let url = try TestBroker.availableURL() else { return }
        let consumerBus = try await RabbitMQBus.connect(url: url)
        let other = try await RabbitMQBus.connect(url: url)
        let queue = "test.cancel.\(UUID().uuidString.prefix(8).lowercased())"
        // Declared by the other bus only: the consumer's bus does not know how to declare it again.
        try await other.declare(Topology(queues: [QueueSpec(name: queue)]))
        let collector = StreamCollector(try await consumerBus.consume(queue: queue, prefetch: 4))
        try await Task.sleep(for: .milliseconds(200))
        try await other.deleteQueue(queue)
        try await collector.waitForEnd(within: .seconds(10))
        switch collector.failure {
        case nil:
            Issue.record("the stream ended without an error")
        case let error as BusError:
            #expect(error.code == .notFound, "\(error)")
            #expect(error.message.contains(queue), "\(error)")
        case let error?:
            Issue.record("expected a BusError, got \(error)")
        }
        await consumerBus.shutdown()
        await other.shutdown()
    }

    @Test("an unresolvable host is reported as such, not as a refused connection")
    func unresolvableHost() async throws {
        var configuration = try RabbitMQConfiguration(url: "amqp://guest:secret-pw@no-such-host.invalid:5672/%2F")
        configuration.connectTimeout = .seconds(5)
        do {
            let bus = try await RabbitMQBus.connect(configuration)
            await bus.shutdown()
            Issue.record("connected to a host that does not exist")
        } catch let error as BusError {
            #expect(error.code == .unreachable)
            #expect(error.message.contains("cannot resolve host 'no-such-host.invalid'"), "\(error)")
            #expect(!error.description.contains("refused"), "\(error)")
            #expect(!error.description.contains("secret-pw"))
        }
    }

    @Test("a peer that accepts TCP but never speaks AMQP fails within the connect timeout")
    func silentPeerFailsWithinTheConnectTimeout() async throws {
        let listener = try SilentListener()
        defer { listener.close() }
        var configuration = try RabbitMQConfiguration(url: "amqp://guest:guest@127.0.0.1:\(listener.port)/%2F")
        configuration.connectTimeout = .seconds(2)
        let started = ContinuousClock.now
        do {
            let bus = try await RabbitMQBus.connect(configuration)
            await bus.shutdown()
            Issue.record("connected to a peer that does not speak AMQP")
        } catch let error as BusError {
            #expect(error.code == .unreachable, "\(error)")
            #expect(error.message.contains("127.0.0.1:\(listener.port)"), "\(error)")
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed < .seconds(4), "took \(elapsed)")
    }
}

/// Consumes a stream in a task of its own, acknowledging and recording what arrives and how the stream ended.
final class StreamCollector: Sendable {
    private struct State {
        var bodies: [String] = []
        var ended = false
        var failure: (any Error)?
    }
    private let state = Mutex(State())

    init(_ stream: DeliveryStream) {
        Task { await self.collect(stream) }
    }

    private func collect(_ stream: DeliveryStream) async {
        do {
            for try await delivery in stream {
                try? await delivery.ack()
                state.withLock { $0.bodies.append(String(decoding: delivery.body, as: UTF8.self)) }
            }
            state.withLock { $0.ended = true }
        } catch {
            state.withLock {
                $0.ended = true
                $0.failure = error
            }
        }
    }

    var bodies: [String] { state.withLock { $0.bodies } }
    var failure: (any Error)? { state.withLock { $0.failure } }

    func waitFor(count: Int, within limit: Duration) async throws {
        try await poll(within: limit, "\(count) deliveries (got \(bodies))") { $0.bodies.count >= count }
    }

    func waitForEnd(within limit: Duration) async throws {
        try await poll(within: limit, "the end of the stream") { $0.ended }
    }

    private func poll(within limit: Duration, _ what: String, _ done: (State) -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while !state.withLock({ done($0) }) {
            guard ContinuousClock.now < deadline else { throw TimeLimitExceeded(limit: limit, what: what) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// A TCP listener on 127.0.0.1 (a Python process) that accepts connections and never sends a byte.
final class SilentListener: Sendable {
    private let process: Process
    let port: Int

    init() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", "-c",
            """
            import os, select, socket
            parent = os.getppid()
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            print(s.getsockname()[1], flush=True)
            held = []
            while os.getppid() == parent:  # ends when the test process is gone
                ready, _, _ = select.select([s], [], [], 0.5)
                if ready:
                    c, _ = s.accept(); held.append(c)
            """,
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardInput = FileHandle.nullDevice
        // Nothing of the test runner's own output may stay open in the listener.
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        var text = ""
        while !text.hasSuffix("\n") {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            kill(process.processIdentifier, SIGKILL)
            throw TimeLimitExceeded(limit: .zero, what: "starting a silent TCP listener")
        }
        self.port = port
    }

    /// Ends the listener (SIGKILL: a process started from the test runner may not see SIGTERM).
    func close() {
        kill(process.processIdentifier, SIGKILL)
        // Polled, never `waitUntilExit()`, which can miss an exit and spin for ever (see
        // `CommandRun` in SagaTestSupport).
        for _ in 0..<250 where process.isRunning { usleep(20_000) }
    }
}
