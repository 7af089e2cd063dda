import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Synchronization
import Testing

/// The bus implementations the conformance suite runs against.
enum BusKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case inMemory
    case rabbitMQ

    var testDescription: String { rawValue }
}

/// A bus for one test, with unique names and cleanup of what the test declared.
final class BusFixture: Sendable {
    let bus: any MessageBus
    let kind: BusKind
    /// The user the bus logs in as (RabbitMQ accepts a `user-id` property only from that user).
    let user: String
    let suffix = UUID().uuidString.prefix(8).lowercased()
    private let declared = Mutex(Topology())

    private init(bus: any MessageBus, kind: BusKind, user: String = "guest") {
        self.bus = bus
        self.kind = kind
        self.user = user
    }

    /// Makes a fixture; `nil` when the RabbitMQ broker is unavailable outside CI (inside CI that throws).
    static func make(_ kind: BusKind, maxBodySize: Int = 16 * 1024 * 1024) async throws -> BusFixture? {
        switch kind {
        case .inMemory:
            return BusFixture(bus: InMemoryBus(maxBodySize: maxBodySize), kind: kind)
        case .rabbitMQ:
            guard let url = try TestBroker.availableURL() else { return nil }
            var configuration = try RabbitMQConfiguration(url: url)
            configuration.maxBodySize = maxBodySize
            configuration.shutdownTimeout = .seconds(2)
            configuration.connectionName = "SagaBusTests"
            return BusFixture(bus: try await RabbitMQBus.connect(configuration), kind: kind, user: configuration.user)
        }
    }

    /// Runs `body` with a fixture of `kind`, then deletes the queues and exchanges it declared and shuts the bus
    /// down. Skips (returns) when RabbitMQ is unavailable outside CI.
    static func with(
        _ kind: BusKind, maxBodySize: Int = 16 * 1024 * 1024, _ body: (BusFixture) async throws -> Void
    ) async throws {
        guard let fixture = try await make(kind, maxBodySize: maxBodySize) else { return }
        do {
            try await body(fixture)
        } catch {
            await fixture.cleanUp()
            throw error
        }
        await fixture.cleanUp()
    }

    /// A unique name for this test.
    func name(_ base: String) -> String { "test.\(base).\(suffix)" }

    /// Declares and remembers the topology for cleanup.
    func declare(_ topology: Topology) async throws {
        declared.withLock { $0 = $0.merging(topology) }
        try await bus.declare(topology)
    }

    /// Declares one durable queue.
    func queue(_ base: String, _ configure: (inout QueueSpec) -> Void = { _ in }) async throws -> String {
        var spec = QueueSpec(name: name(base))
        configure(&spec)
        try await declare(Topology(queues: [spec]))
        return spec.name
    }

    func publish(
        _ routingKey: String, exchange: String = "", body: String, headers: MessageHeaders = [:],
        messageId: String? = nil, mandatory: Bool = true
    ) async throws {
        try await bus.publish(
            OutgoingMessage(
                exchange: exchange, routingKey: routingKey, body: Array(body.utf8), headers: headers,
                messageId: messageId, mandatory: mandatory))
    }

    func consume(_ queue: String, prefetch: Int = 10) async throws -> Inbox {
        Inbox(try await bus.consume(queue: queue, prefetch: prefetch))
    }

    func cleanUp() async {
        let topology = declared.withLock { $0 }
        if let rabbit = bus as? RabbitMQBus {
            for queue in Set(topology.queues.map(\.name)) { try? await rabbit.deleteQueue(queue) }
            for exchange in Set(topology.exchanges.map(\.name)) { try? await rabbit.deleteExchange(exchange) }
        }
        await bus.shutdown()
    }
}

/// Collects a consumer's deliveries in the background so tests can wait for them with a time limit.
final class Inbox: Sendable {
    private final class Storage: Sendable {
        let items = Mutex<[Delivery]>([])
        let end = Mutex<Result<Void, any Error>?>(nil)
    }

    private let storage: Storage
    private let task: Task<Void, Never>

    init(_ stream: DeliveryStream) {
        let storage = Storage()
        self.storage = storage
        task = Task {
            do {
                for try await delivery in stream { storage.items.withLock { $0.append(delivery) } }
                storage.end.withLock { $0 = .success(()) }
            } catch {
                storage.end.withLock { $0 = .failure(error) }
            }
        }
    }

    /// Deliveries received and not yet taken.
    var count: Int { storage.items.withLock { $0.count } }

    /// How the stream ended, once it has.
    var end: Result<Void, any Error>? { storage.end.withLock { $0 } }

    /// Waits until `count` deliveries are there and takes them.
    func take(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [Delivery] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let taken = storage.items.withLock { items -> [Delivery]? in
                guard items.count >= count else { return nil }
                defer { items.removeFirst(count) }
                return Array(items.prefix(count))
            }
            if let taken { return taken }
            if ContinuousClock.now > deadline {
                throw InboxTimeout(expected: count, received: self.count)
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for one delivery.
    func next(timeout: Duration = .seconds(10)) async throws -> Delivery {
        try await take(1, timeout: timeout)[0]
    }

    /// Takes whatever has arrived.
    func drain() -> [Delivery] {
        storage.items.withLock { items in
            defer { items.removeAll() }
            return items
        }
    }

    /// Waits until the stream has ended.
    func waitForEnd(timeout: Duration = .seconds(10)) async throws -> Result<Void, any Error> {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let end { return end }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw InboxTimeout(expected: 0, received: count)
    }

    /// Stops consuming (ends the stream from the consumer's side).
    func stop() { task.cancel() }
}

struct InboxTimeout: Error, CustomStringConvertible {
    var expected: Int
    var received: Int
    var description: String { "timed out waiting for \(expected) deliveries; \(received) arrived" }
}

extension Delivery {
    var text: String { String(decoding: body, as: UTF8.self) }
}

extension BusError {
    /// `true` when the error has `code` and its description contains every word in `mentions`.
    func matches(_ code: BusError.Code, mentioning mentions: [String]) -> Bool {
        self.code == code && mentions.allSatisfy { description.contains($0) }
    }
}
