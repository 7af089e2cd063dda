public import SagaCore
import Synchronization

/// A ``MessageBus`` on RabbitMQ (AMQP 0-9-1 through librabbitmq).
///
/// ```swift
/// let bus = try await RabbitMQBus.connect(try RabbitMQConfiguration(url: "amqp://guest:guest@127.0.0.1/%2F"))
/// try await bus.declare(Topology(queues: [QueueSpec(name: "orders")]))
/// try await bus.publish(OutgoingMessage(exchange: "", routingKey: "orders", body: Array("hi".utf8)))
/// for try await delivery in try await bus.consume(queue: "orders", prefetch: 64) {
///     try await delivery.ack()
/// }
/// await bus.shutdown()
/// ```
///
/// ## Threading
/// librabbitmq connections are not thread-safe and its calls block, so each connection is owned by one dedicated
/// OS thread running a poll loop; callers hand it work through a mutex-protected mailbox (an eventfd wakes the
/// thread only when it sleeps) and await continuations. Nothing blocks Swift's cooperative thread pool.
///
/// The bus opens **two connections**, one for publishing and one for consuming:
/// - RabbitMQ applies flow control (credit flow, memory and disk alarms) per connection by no longer reading
///   from a publishing connection. On a shared connection that would also hold back consumers' acks, so a busy
///   publisher could stall the consumers that are draining the queues (RabbitMQ's own advice is to separate them).
/// - Each connection's thread then runs one simple loop, and publishing and consuming use both cores.
///
/// ## Confirms
/// Publishes are pipelined on a confirm-mode channel: up to ``RabbitMQConfiguration/confirmWindow`` messages are
/// in flight, and each `publish` returns when its `basic.ack` arrives (acks with `multiple` settle many at once).
/// `basic.nack` fails with `nacked`; a mandatory message that no queue took comes back as `basic.return` before
/// its ack and fails with `unroutable`.
///
/// ## Recovery
/// When a connection drops, its thread reconnects with exponential backoff, re-declares every topology declared
/// through this bus, and restarts the consumers (the same ``DeliveryStream``s go on). Publishes whose confirm had
/// not arrived are sent again on the new connection (so a message may arrive twice: deduplicate by message id);
/// publishes that cannot be sent within ``RabbitMQConfiguration/publishRecoveryTimeout`` fail with
/// `connectionLost`. Deliveries from the lost connection are requeued by the broker; settling them is a no-op.
public final class RabbitMQBus: MessageBus {
    /// The configuration the bus was connected with.
    public let configuration: RabbitMQConfiguration
    private let publisher: Mailbox
    private let consumer: Mailbox
    private let state = Mutex(State())

    private struct State {
        var isShutDown = false
        var nextConsumerID: UInt64 = 1
    }

    private init(configuration: RabbitMQConfiguration, publisher: Mailbox, consumer: Mailbox) {
        self.configuration = configuration
        self.publisher = publisher
        self.consumer = consumer
    }

    /// A bus dropped without ``shutdown()`` still ends its threads (gracefully, without anyone waiting).
    deinit {
        consumer.send(.shutdown(nil))
        publisher.send(.shutdown(nil))
    }

    /// Connects to the broker (a publishing and a consuming connection).
    ///
    /// - Throws: ``BusError`` with code `unreachable` (naming host:port), `authenticationFailed` (naming user and
    ///   vhost), `vhostNotFound`, `accessRefused`.
    public static func connect(_ configuration: RabbitMQConfiguration) async throws -> RabbitMQBus {
        let registry = TopologyRegistry()
        let publisher = try await ConnectionThread.start(
            role: .publisher, configuration: configuration, registry: registry)
        let consumer: Mailbox
        do {
            consumer = try await ConnectionThread.start(
                role: .consumer, configuration: configuration, registry: registry)
        } catch {
            await withCheckedContinuation { publisher.send(.shutdown($0)) }
            throw error
        }
        return RabbitMQBus(configuration: configuration, publisher: publisher, consumer: consumer)
    }

    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`).
    public static func connect(url: String) async throws -> RabbitMQBus {
        try await connect(RabbitMQConfiguration(url: url))
    }

    /// Declares exchanges, queues and bindings on the broker and records them for re-declaration after a
    /// reconnect. Idempotent.
    ///
    /// - Throws: ``BusError`` `preconditionFailed` (naming the queue or exchange and the argument that differs),
    ///   `notFound`, `accessRefused`, `closed`.
    public func declare(_ topology: Topology) async throws {
        try checkOpen()
        try await withCheckedThrowingContinuation { reply in
            if !publisher.send(.declare(topology, reply)) { reply.resume(throwing: Self.closed) }
        }
    }

    /// Deletes a queue (and the messages in it); the bus stops re-declaring it after reconnects.
    public func deleteQueue(_ name: String) async throws {
        try checkOpen()
        try await withCheckedThrowingContinuation { reply in
            if !publisher.send(.deleteQueue(name, reply)) { reply.resume(throwing: Self.closed) }
        }
    }

    /// Deletes an exchange; the bus stops re-declaring it after reconnects.
    public func deleteExchange(_ name: String) async throws {
        try checkOpen()
        try await withCheckedThrowingContinuation { reply in
            if !publisher.send(.deleteExchange(name, reply)) { reply.resume(throwing: Self.closed) }
        }
    }

    /// Publishes a message and returns once the broker has confirmed it (pipelined with other publishes, at most
    /// ``RabbitMQConfiguration/confirmWindow`` in flight). A publish caught by a connection loss is sent again after
    /// the reconnect.
    ///
    /// Cancelling the calling task does not withdraw a message already handed to the bus; the call still returns
    /// the broker's answer.
    ///
    /// - Throws: ``BusError`` `unroutable`, `nacked`, `messageTooLarge`, `notFound` (missing exchange),
    ///   `connectionLost`, `closed`.
    public func publish(_ message: OutgoingMessage) async throws {
        guard message.body.count <= configuration.maxBodySize else {
            throw BusError(
                .messageTooLarge,
                "The message to exchange '\(message.exchange)' with routing key '\(message.routingKey)' has "
                    + "\(message.body.count) bytes, more than the limit of \(configuration.maxBodySize)",
                recoverySuggestion: "keep bodies small (state belongs in the store) or raise "
                    + "RabbitMQConfiguration.maxBodySize")
        }
        try checkOpen()
        try await withCheckedThrowingContinuation { reply in
            let request = PublishRequest(message: message, continuation: reply, enqueued: .now)
            if !publisher.send(.publish(request)) { reply.resume(throwing: Self.closed) }
        }
    }

    /// Starts a consumer on its own channel with `basic.qos(prefetch)` and manual acknowledgements. The stream
    /// survives reconnects; ending its iteration cancels the consumer.
    ///
    /// - Throws: ``BusError`` `notFound` (no such queue), `invalidArgument` (prefetch outside 1...65535), `closed`.
    public func consume(queue: String, prefetch: Int) async throws -> DeliveryStream {
        guard (1...Int(UInt16.max)).contains(prefetch) else {
            throw BusError(.invalidArgument, "prefetch must be between 1 and 65535, not \(prefetch)")
        }
        let id = try state.withLock { state throws(BusError) -> UInt64 in
            guard !state.isShutDown else { throw Self.closed }
            defer { state.nextConsumerID += 1 }
            return state.nextConsumerID
        }
        let (stream, continuation) = DeliveryStream.makeStream()
        let registration = ConsumerRegistration(
            id: id, queue: queue, prefetch: UInt16(prefetch), continuation: continuation)
        let mailbox = consumer
        continuation.onTermination = { _ in mailbox.send(.cancelConsumer(id: id)) }
        try await withCheckedThrowingContinuation { reply in
            if !consumer.send(.consume(registration, reply)) {
                continuation.finish()
                reply.resume(throwing: Self.closed)
            }
        }
        return stream
    }

    /// Stops the consumers (their streams end), waits — at most ``RabbitMQConfiguration/shutdownTimeout`` — for
    /// delivered messages to be settled and published ones to be confirmed, then closes both connections.
    /// Publishes still unconfirmed then fail with `connectionLost`. Calling it again does nothing more.
    public func shutdown() async {
        state.withLock { $0.isShutDown = true }
        await withCheckedContinuation { done in
            if !consumer.send(.shutdown(done)) { done.resume() }
        }
        await withCheckedContinuation { done in
            if !publisher.send(.shutdown(done)) { done.resume() }
        }
    }

    private func checkOpen() throws(BusError) {
        if state.withLock({ $0.isShutDown }) { throw Self.closed }
    }

    private static var closed: BusError {
        BusError(.closed, "The RabbitMQ bus has been shut down", recoverySuggestion: "connect a new bus")
    }
}
