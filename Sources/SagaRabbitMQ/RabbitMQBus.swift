public import SagaCore
public import ServiceLifecycle
import Synchronization

/// A ``MessageBus`` on RabbitMQ (AMQP 0-9-1 through librabbitmq).
///
/// ```swift
/// let bus = RabbitMQBus(configuration: try RabbitMQConfiguration(url: "amqp://guest:guest@127.0.0.1/%2F"))
/// // Run it as a Service (it connects in run() and shuts down gracefully with the group) …
/// let group = ServiceGroup(services: [bus, myParticipant], logger: logger)
/// // … or connect it directly: `try await bus.connect()` / `try await RabbitMQBus.connect(configuration)`.
/// try await bus.declare(Topology(queues: [QueueSpec(name: "orders")]))
/// try await bus.publish(OutgoingMessage(exchange: "", routingKey: "orders", body: Array("hi".utf8)))
/// for try await delivery in try await bus.consume(queue: "orders", prefetch: 64) {
///     try await delivery.ack()
/// }
/// await bus.shutdown()
/// ```
///
/// ## Lifecycle
/// ``init(configuration:)`` does no I/O. ``run()`` (the `Service` entry point) connects — retrying with backoff
/// while the broker is unreachable, unless ``RabbitMQConfiguration/failFastOnStartup`` — serves until graceful
/// shutdown or cancellation, then runs ``shutdown()``. ``connect()`` connects without serving (fails on the first
/// error). Calls made before the bus is connected wait for it, at most
/// ``RabbitMQConfiguration/operationTimeout``, then fail with `unreachable` saying what to do.
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
public final class RabbitMQBus: MessageBus, Service {
    /// The configuration the bus was created with.
    public let configuration: RabbitMQConfiguration
    private let registry = TopologyRegistry()
    private let state = Mutex(State())

    private enum Phase {
        /// No connection thread runs.
        case idle
        /// The threads run and try to connect; `failFast` threads stop at their first failure.
        case starting(failFast: Bool)
        /// Both connections were up at least once (the threads now handle reconnects themselves).
        case connected
        /// A fail-fast start failed; the next `connect()` or `run()` starts again.
        case failed(BusError)
        case shutDown
    }

    private struct State {
        var phase = Phase.idle
        /// Bumped at each start, so that late reports of an earlier start are ignored.
        var generation: UInt64 = 0
        var publisher: Mailbox?
        var consumer: Mailbox?
        var publisherUp = false
        var consumerUp = false
        /// Why ``run()`` stopped the bus, when it stopped for an error (a refused login): calls
        /// made afterwards fail with it, not with a bare "shut down".
        var stoppedBy: BusError?
        /// The latest connection failure while starting, for the error of calls that time out.
        var lastStartupError: BusError?
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextWaiterID: UInt64 = 1
        var nextConsumerID: UInt64 = 1
        /// `run()` waiting for a stop request.
        var runWaiter: CheckedContinuation<Void, Never>?
        var stopRequested = false
    }

    /// Creates a bus. Does no I/O: connecting happens in ``run()`` or ``connect()``.
    public init(configuration: RabbitMQConfiguration) {
        self.configuration = configuration
    }

    /// A bus dropped without ``shutdown()`` still ends its threads (gracefully, without anyone waiting).
    deinit {
        let (publisher, consumer) = state.withLock { ($0.publisher, $0.consumer) }
        consumer?.send(.shutdown(nil))
        publisher?.send(.shutdown(nil))
    }

    /// Creates a bus and connects it (a publishing and a consuming connection); see ``connect()``.
    ///
    /// - Throws: ``BusError`` with code `unreachable` (naming host:port), `authenticationFailed` (naming user and
    ///   vhost), `vhostNotFound`, `accessRefused`.
    public static func connect(_ configuration: RabbitMQConfiguration) async throws -> RabbitMQBus {
        let bus = RabbitMQBus(configuration: configuration)
        try await bus.connect()
        return bus
    }

    /// Creates a bus for the broker at `url` (`amqp://user:password@host:port/vhost`) and connects it.
    public static func connect(url: String) async throws -> RabbitMQBus {
        try await connect(RabbitMQConfiguration(url: url))
    }

    /// Connects, if no one did yet, and returns once both connections are up. Idempotent: when ``run()`` or an
    /// earlier call started connecting, waits for that. When this call starts the connection threads, the first
    /// failure is thrown (each endpoint is tried once); after it, the bus can be connected again.
    ///
    /// - Throws: ``BusError`` with code `unreachable`, `authenticationFailed`, `vhostNotFound`, `accessRefused`,
    ///   `closed` (after ``shutdown()``).
    public func connect() async throws {
        try startThreads(failFast: true)
        try await waitUntilConnected(timeout: nil)
    }

    /// Runs the bus as a swift-service-lifecycle `Service`: connects (retrying with backoff while the broker is
    /// unreachable, or throwing the first error when ``RabbitMQConfiguration/failFastOnStartup`` is set), serves
    /// until graceful shutdown, cancellation or ``shutdown()``, then shuts down gracefully.
    ///
    /// - Throws: the broker's refusal when it refuses the first connection's login, vhost or access (a wrong
    ///   password is not mended by trying again: the service stops with the error, which names the user and
    ///   the vhost); the first connection error with ``RabbitMQConfiguration/failFastOnStartup``.
    public func run() async throws {
        try startThreads(failFast: configuration.failFastOnStartup)
        if configuration.failFastOnStartup {
            do {
                try await waitUntilConnected(timeout: nil)
            } catch {
                if let cause = error as? BusError { state.withLock { $0.stoppedBy = cause } }
                await shutdown()
                throw error
            }
        }
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.stopRequested { return true }
                        if case .shutDown = state.phase { return true }
                        if case .failed = state.phase { return true }
                        state.runWaiter = waiter
                        return false
                    }
                    if resumeNow { waiter.resume() }
                }
            } onCancel: {
                self.requestStop()
            }
        } onGracefulShutdown: {
            self.requestStop()
        }
        let failure = state.withLock { state -> BusError? in
            if case .failed(let error) = state.phase {
                state.stoppedBy = error
                return error
            }
            return nil
        }
        await shutdown()
        if let failure { throw failure }
    }

    /// Ends a waiting ``run()``.
    private func requestStop() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.stopRequested = true
            defer { state.runWaiter = nil }
            return state.runWaiter
        }
        waiter?.resume()
    }

    // MARK: Starting

    /// Starts both connection threads unless they run already.
    private func startThreads(failFast: Bool) throws(BusError) {
        let start = try state.withLock { state throws(BusError) -> (UInt64, Mailbox, Mailbox)? in
            switch state.phase {
            case .shutDown: throw state.stoppedBy ?? Self.closed
            case .starting, .connected: return nil
            case .idle, .failed: break
            }
            let publisher = try Mailbox()
            let consumer = try Mailbox()
            state.generation += 1
            state.phase = .starting(failFast: failFast)
            state.publisher = publisher
            state.consumer = consumer
            state.publisherUp = false
            state.consumerUp = false
            state.lastStartupError = nil
            return (state.generation, publisher, consumer)
        }
        guard let (generation, publisher, consumer) = start else { return }
        for (role, mailbox) in [(ConnectionRole.publisher, publisher), (.consumer, consumer)] {
            ConnectionThread.start(
                role: role, configuration: configuration, registry: registry, mailbox: mailbox, failFast: failFast
            ) { [weak self] report in
                self?.startupReport(report, role: role, generation: generation)
            }
        }
    }

    /// A connection thread reports its first connection, a failed attempt, or (fail-fast) its end.
    private func startupReport(_ report: StartupReport, role: ConnectionRole, generation: UInt64) {
        var resume: [CheckedContinuation<Void, any Error>] = []
        var failure: BusError?
        var stop: [Mailbox] = []
        var runWaiter: CheckedContinuation<Void, Never>?
        state.withLock { state in
            guard state.generation == generation, case .starting = state.phase else { return }
            switch report {
            case .connected:
                if role == .publisher { state.publisherUp = true } else { state.consumerUp = true }
                guard state.publisherUp && state.consumerUp else { return }
                state.phase = .connected
                state.lastStartupError = nil
            case .attemptFailed(let error):
                state.lastStartupError = error
                return
            case .gaveUp(let error):
                state.phase = .failed(error)
                failure = error
                stop = [state.publisher, state.consumer].compactMap { $0 }
                state.publisher = nil
                state.consumer = nil
                // A waiting run() ends with the failure (see run()).
                runWaiter = state.runWaiter
                state.runWaiter = nil
            }
            resume = Array(state.waiters.values)
            state.waiters.removeAll()
        }
        for mailbox in stop { mailbox.send(.shutdown(nil)) }
        runWaiter?.resume()
        for waiter in resume {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume() }
        }
    }

    /// Returns the mailbox of `role` once the bus is connected; waits for that at most `operationTimeout`.
    private func mailbox(_ role: ConnectionRole) async throws -> Mailbox {
        if let ready = try readyMailbox(role) { return ready }
        try await waitUntilConnected(timeout: configuration.operationTimeout)
        guard let ready = try readyMailbox(role) else { throw closedError }
        return ready
    }

    private func readyMailbox(_ role: ConnectionRole) throws(BusError) -> Mailbox? {
        try state.withLock { state throws(BusError) -> Mailbox? in
            switch state.phase {
            case .connected: return role == .publisher ? state.publisher : state.consumer
            case .shutDown: throw state.stoppedBy ?? Self.closed
            case .idle, .starting, .failed: return nil
            }
        }
    }

    /// Waits until both connections are up, the start fails, or `timeout` passes (then throws a `BusError` that
    /// says what is missing).
    private func waitUntilConnected(timeout: Duration?) async throws {
        guard let timeout else { return try await waitForConnection() }
        try await withTimeLimit(timeout, timedOut: { self.notConnectedError(after: timeout) }) { try await self.waitForConnection() }
    }

    private func waitForConnection() async throws {
        let id = state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { state -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    switch state.phase {
                    case .connected: return .success(())
                    case .shutDown: return .failure(state.stoppedBy ?? Self.closed)
                    case .failed(let error):
                        return .failure(error)
                    case .idle, .starting:
                        state.waiters[id] = waiter
                        return nil
                    }
                }
                if let outcome { waiter.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    private func notConnectedError(after timeout: Duration) -> BusError {
        let (phase, lastError) = state.withLock { ($0.phase, $0.lastStartupError) }
        let place = configuration.endpoints.map(\.description).joined(separator: ", ")
        switch phase {
        case .idle, .failed:
            return BusError(
                .unreachable,
                "The RabbitMQ bus is not running: nothing connected it within \(timeout) (operationTimeout)",
                recoverySuggestion: "add the bus to your ServiceGroup (it connects in run()) or call connect() first",
                isRetryable: true)
        default:
            let cause = lastError.map { ": \($0.message)" } ?? ""
            return BusError(
                .unreachable,
                "The RabbitMQ bus could not connect to \(place) within \(timeout) (operationTimeout)\(cause)",
                recoverySuggestion: "check that the broker is running and reachable at \(configuration.redactedURL); "
                    + "the bus keeps trying in the background",
                isRetryable: true)
        }
    }

    /// Declares exchanges, queues and bindings on the broker and records them for re-declaration after a
    /// reconnect. Idempotent.
    ///
    /// - Throws: ``BusError`` `preconditionFailed` (naming the queue or exchange and the argument that differs),
    ///   `notFound`, `accessRefused`, `closed`.
    ///
    /// Cancelling the calling task ends the wait with `CancellationError` (while the connection is down the
    /// declaration is parked; it still runs when the connection is back).
    public func declare(_ topology: Topology) async throws {
        let publisher = try await mailbox(.publisher)
        try await ControlReply.await { reply in
            if !publisher.send(.declare(topology, reply)) { reply.resume(throwing: closedError) }
        }
    }

    /// Deletes a queue (and the messages in it); the bus stops re-declaring it after reconnects.
    public func deleteQueue(_ name: String) async throws {
        let publisher = try await mailbox(.publisher)
        try await ControlReply.await { reply in
            if !publisher.send(.deleteQueue(name, reply)) { reply.resume(throwing: closedError) }
        }
    }

    /// Deletes an exchange; the bus stops re-declaring it after reconnects.
    public func deleteExchange(_ name: String) async throws {
        let publisher = try await mailbox(.publisher)
        try await ControlReply.await { reply in
            if !publisher.send(.deleteExchange(name, reply)) { reply.resume(throwing: closedError) }
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
        let publisher = try await mailbox(.publisher)
        try await withCheckedThrowingContinuation { reply in
            let request = PublishRequest(message: message, continuation: reply, enqueued: .now)
            if !publisher.send(.publish(request)) { reply.resume(throwing: closedError) }
        }
    }

    /// Starts a consumer on its own channel with `basic.qos(prefetch)` and manual acknowledgements. The stream
    /// survives reconnects; ending its iteration cancels the consumer.
    ///
    /// - Throws: ``BusError`` `notFound` (no such queue), `invalidArgument` (prefetch outside 1...65535), `closed`;
    ///   `CancellationError` when the calling task is cancelled before the consumer started (while the connection
    ///   is down): the consumer is withdrawn.
    public func consume(queue: String, prefetch: Int) async throws -> DeliveryStream {
        guard (1...Int(UInt16.max)).contains(prefetch) else {
            throw BusError(.invalidArgument, "prefetch must be between 1 and 65535, not \(prefetch)")
        }
        let consumer = try await mailbox(.consumer)
        let id = state.withLock { state in
            defer { state.nextConsumerID += 1 }
            return state.nextConsumerID
        }
        let (stream, continuation) = DeliveryStream.makeStream()
        let registration = ConsumerRegistration(
            id: id, queue: queue, prefetch: UInt16(prefetch), continuation: continuation)
        let mailbox = consumer
        continuation.onTermination = { _ in mailbox.send(.cancelConsumer(id: id)) }
        do {
            try await ControlReply.await { reply in
                if !consumer.send(.consume(registration, reply)) {
                    continuation.finish()
                    reply.resume(throwing: closedError)
                }
            }
        } catch {
            // Cancelled while the connection was down, or refused: the consumer is withdrawn.
            continuation.finish()
            throw error
        }
        return stream
    }

    /// Stops the consumers (their streams end), waits — at most ``RabbitMQConfiguration/shutdownTimeout`` — for
    /// delivered messages to be settled and published ones to be confirmed, then closes both connections.
    /// Publishes still unconfirmed then fail with `connectionLost`. Calling it again does nothing more.
    public func shutdown() async {
        let (publisher, consumer, waiters, runWaiter, cause) = state.withLock { state in
            state.phase = .shutDown
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            defer { state.runWaiter = nil }
            return (state.publisher, state.consumer, waiters, state.runWaiter, state.stoppedBy)
        }
        for waiter in waiters { waiter.resume(throwing: cause ?? Self.closed) }
        runWaiter?.resume()
        if let consumer {
            await withCheckedContinuation { done in
                if !consumer.send(.shutdown(done)) { done.resume() }
            }
        }
        if let publisher {
            await withCheckedContinuation { done in
                if !publisher.send(.shutdown(done)) { done.resume() }
            }
        }
    }

    /// Why calls fail once the bus stopped: the error that stopped ``run()``, or "shut down".
    private var closedError: BusError { state.withLock { $0.stoppedBy } ?? Self.closed }

    private static var closed: BusError {
        BusError(.closed, "The RabbitMQ bus has been shut down", recoverySuggestion: "connect a new bus")
    }
}
