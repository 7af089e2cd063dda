import Foundation
import Synchronization

/// A ``MessageBus`` in memory, for unit tests and for users' own tests. It follows RabbitMQ's semantics closely
/// enough that the same conformance suite passes against both:
///
/// - exchanges `direct`, `fanout` and `topic`, the default exchange `""` (routing key = queue name), bindings;
/// - `publish` returns once the message sits in every queue it routes to; a mandatory message that routes to
///   none fails with `unroutable`, an unknown exchange with `notFound`;
/// - consumers get deliveries round-robin, at most `prefetch` unsettled each; `nack(requeue: true)` puts the
///   message back at the head of its queue with ``Delivery/redelivered`` set, as does releasing a delivery
///   unsettled; cancelling a consumer (ending its stream) stops its deliveries, and what it had not settled
///   stays with it until settled or released (a handler still running on one finishes first);
/// - `reject` / `nack(requeue: false)`, an expired message (queue TTL or per-message expiration, expired at the
///   head of the queue) and overflow of `maxLength` dead-letter to the queue's dead-letter exchange with the
///   headers `x-first-death-reason` (`rejected` / `expired` / `maxlen`), `x-first-death-queue`,
///   `x-first-death-exchange`, or drop the message when the queue has none;
/// - redeclaring is idempotent; redeclaring with other arguments fails with `preconditionFailed` naming the queue
///   (or exchange) and the argument.
///
/// Everything happens synchronously inside the calls, except TTL expiry, which runs on a timer task per message.
/// Nothing is persisted and nothing is redelivered after a restart.
public final class InMemoryBus: MessageBus {
    private let core: Core

    /// Creates an empty bus. Bodies larger than `maxBodySize` are refused like ``BusError/Code/messageTooLarge``.
    public init(maxBodySize: Int = 16 * 1024 * 1024) {
        core = Core(maxBodySize: maxBodySize)
    }

    /// Declares exchanges, queues and bindings; fails with `preconditionFailed` on a conflicting redeclaration.
    public func declare(_ topology: Topology) async throws {
        try core.declare(topology)
    }

    /// Routes the message into its queues; fails with `unroutable` when a mandatory message reaches none.
    public func publish(_ message: OutgoingMessage) async throws {
        try core.publish(message)
    }

    /// Starts a consumer; ending the stream's iteration cancels it: no more deliveries, and each one it
    /// had not settled goes back when it is released unsettled (not while a handler still holds it).
    public func consume(queue: String, prefetch: Int) async throws -> DeliveryStream {
        try core.consume(queue: queue, prefetch: prefetch)
    }

    /// Ends every consumer's stream and refuses further work.
    public func shutdown() async {
        core.shutdown()
    }

    /// Deletes a queue and its messages; its consumers' streams end with `notFound`.
    public func deleteQueue(_ name: String) async throws {
        core.deleteQueue(name)
    }

    /// Deletes an exchange and its bindings.
    public func deleteExchange(_ name: String) async throws {
        core.deleteExchange(name)
    }

    /// The number of messages ready for delivery in a queue (not counting delivered, unsettled ones);
    /// `nil` when the queue does not exist.
    public func messageCount(queue: String) -> Int? {
        core.messageCount(queue: queue)
    }
}

// MARK: - Implementation

extension InMemoryBus {
    fileprivate struct Message: Sendable {
        var exchange: String
        var routingKey: String
        var body: [UInt8]
        /// The headers and every property, as published.
        var properties: OutgoingMessage
        var redelivered = false
        var expiresAt: ContinuousClock.Instant?
        /// The delivery tag it had when it was last handed back (`nack(requeue: true)`).
        var requeuedTag: UInt64?

        var headers: MessageHeaders {
            get { properties.headers }
            set { properties.headers = newValue }
        }
        var expiration: Duration? {
            get { properties.expiration }
            set { properties.expiration = newValue }
        }
    }

    fileprivate struct QueueState {
        var spec: QueueSpec
        var ready: [Message] = []
        var consumerOrder: [UInt64] = []
        var nextConsumer = 0
    }

    fileprivate struct ConsumerState {
        var queue: String
        var prefetch: Int
        var unsettled = 0
        var continuation: DeliveryStream.Continuation
    }

    fileprivate struct Unsettled {
        var message: Message
        var queue: String
        var consumer: UInt64
    }

    fileprivate struct State {
        var exchanges: [String: ExchangeSpec] = [:]
        var queues: [String: QueueState] = [:]
        var bindings: [BindingSpec] = []
        var consumers: [UInt64: ConsumerState] = [:]
        var unsettled: [UInt64: Unsettled] = [:]
        var nextTag: UInt64 = 1
        var nextConsumerID: UInt64 = 1
        var isShutDown = false
    }

    /// Work to do after the lock is released: ending streams (ending one may call back into the bus) and
    /// starting expiry timers. Continuations removed from the state are kept here so they are released outside
    /// the lock too.
    fileprivate struct Effects {
        var finishes: [(DeliveryStream.Continuation, (any Error)?)] = []
        var timers: [(String, ContinuousClock.Instant)] = []
    }

    fileprivate final class Core: Sendable {
        let maxBodySize: Int
        let state = Mutex(State())

        init(maxBodySize: Int) {
            self.maxBodySize = maxBodySize
        }

        // MARK: Declare

        func declare(_ topology: Topology) throws {
            try state.withLock { state throws(BusError) in
                if state.isShutDown { throw closedError }
                for exchange in topology.exchanges {
                    if let existing = state.exchanges[exchange.name] {
                        if existing.kind != exchange.kind { throw conflict(exchange: exchange.name, "type") }
                        if existing.durable != exchange.durable { throw conflict(exchange: exchange.name, "durable") }
                    } else {
                        state.exchanges[exchange.name] = exchange
                    }
                }
                for queue in topology.queues {
                    if let existing = state.queues[queue.name]?.spec {
                        if let argument = difference(existing, queue) {
                            throw conflict(queue: queue.name, argument)
                        }
                    } else {
                        state.queues[queue.name] = QueueState(spec: queue)
                    }
                }
                for binding in topology.bindings {
                    guard state.exchanges[binding.exchange] != nil else {
                        throw BusError(
                            .notFound,
                            "Exchange '\(binding.exchange)' does not exist (binding queue '\(binding.queue)')",
                            recoverySuggestion: "declare the exchange first (MessageBus.declare)")
                    }
                    guard state.queues[binding.queue] != nil else {
                        throw BusError(
                            .notFound, "Queue '\(binding.queue)' does not exist (binding it to '\(binding.exchange)')",
                            recoverySuggestion: "declare the queue first (MessageBus.declare)")
                    }
                    if !state.bindings.contains(binding) { state.bindings.append(binding) }
                }
            }
        }

        private func difference(_ a: QueueSpec, _ b: QueueSpec) -> String? {
            if a.kind != b.kind { return "x-queue-type" }
            if a.durable != b.durable { return "durable" }
            if a.deadLetterExchange != b.deadLetterExchange { return "x-dead-letter-exchange" }
            if a.deadLetterRoutingKey != b.deadLetterRoutingKey { return "x-dead-letter-routing-key" }
            if a.messageTTL != b.messageTTL { return "x-message-ttl" }
            if a.maxLength != b.maxLength { return "x-max-length" }
            if a.expires != b.expires { return "x-expires" }
            return nil
        }

        func deleteQueue(_ name: String) {
            let effects = state.withLock { state in
                var effects = Effects()
                guard let queue = state.queues.removeValue(forKey: name) else { return effects }
                state.bindings.removeAll { $0.queue == name }
                for id in queue.consumerOrder {
                    guard let consumer = state.consumers.removeValue(forKey: id) else { continue }
                    effects.finishes.append(
                        (
                            consumer.continuation,
                            BusError(
                                .notFound, "The consumer of queue '\(name)' was cancelled (the queue was deleted)",
                                recoverySuggestion: "declare the queue again and start a new consumer")
                        ))
                }
                state.unsettled = state.unsettled.filter { $0.value.queue != name }
                return effects
            }
            run(effects)
        }

        func deleteExchange(_ name: String) {
            state.withLock { state in
                state.exchanges[name] = nil
                state.bindings.removeAll { $0.exchange == name }
            }
        }

        func messageCount(queue: String) -> Int? {
            state.withLock { $0.queues[queue]?.ready.count }
        }

        // MARK: Publish

        func publish(_ outgoing: OutgoingMessage) throws {
            guard outgoing.body.count <= maxBodySize else {
                throw BusError(
                    .messageTooLarge,
                    "The message to exchange '\(outgoing.exchange)' with routing key '\(outgoing.routingKey)' has "
                        + "\(outgoing.body.count) bytes, more than the limit of \(maxBodySize)",
                    recoverySuggestion: "keep bodies small (state belongs in the store) or raise the limit")
            }
            var properties = outgoing
            properties.body = []  // kept once, in `body`
            let message = Message(
                exchange: outgoing.exchange, routingKey: outgoing.routingKey, body: outgoing.body, properties: properties)
            let effects = try state.withLock { state throws(BusError) -> Effects in
                if state.isShutDown { throw closedError }
                guard outgoing.exchange.isEmpty || state.exchanges[outgoing.exchange] != nil else {
                    throw BusError(
                        .notFound,
                        "Exchange '\(outgoing.exchange)' does not exist (publishing to exchange '\(outgoing.exchange)')",
                        recoverySuggestion: "declare the exchange first (MessageBus.declare)")
                }
                let targets = route(state, exchange: outgoing.exchange, routingKey: outgoing.routingKey)
                if targets.isEmpty {
                    if outgoing.mandatory { throw unroutable(outgoing.exchange, outgoing.routingKey) }
                    return Effects()
                }
                var effects = Effects()
                for queue in targets { enqueue(&state, message, into: queue, &effects) }
                dispatch(&state, targets, &effects)
                return effects
            }
            run(effects)
        }

        private func route(_ state: State, exchange: String, routingKey: String) -> [String] {
            if exchange.isEmpty { return state.queues[routingKey] != nil ? [routingKey] : [] }
            guard let spec = state.exchanges[exchange] else { return [] }
            var result: [String] = []
            for binding in state.bindings where binding.exchange == exchange && !result.contains(binding.queue) {
                let matches: Bool
                switch spec.kind {
                case .direct: matches = binding.routingKey == routingKey
                case .fanout: matches = true
                case .topic: matches = topicMatches(pattern: binding.routingKey, key: routingKey)
                }
                if matches { result.append(binding.queue) }
            }
            return result
        }

        /// AMQP topic matching: words separated by `.`, `*` matches one word, `#` zero or more.
        private func topicMatches(pattern: String, key: String) -> Bool {
            let p = pattern.split(separator: ".", omittingEmptySubsequences: false)
            let k = key.split(separator: ".", omittingEmptySubsequences: false)
            func match(_ i: Int, _ j: Int) -> Bool {
                if i == p.count { return j == k.count }
                if p[i] == "#" {
                    for next in j...k.count where match(i + 1, next) { return true }
                    return false
                }
                guard j < k.count, p[i] == "*" || p[i] == k[j] else { return false }
                return match(i + 1, j + 1)
            }
            return match(0, 0)
        }

        private func enqueue(_ state: inout State, _ message: Message, into name: String, _ effects: inout Effects) {
            guard var queue = state.queues[name] else { return }
            var message = message
            let ttl = [queue.spec.messageTTL, message.expiration].compactMap { $0 }.min()
            if let ttl {
                let deadline = ContinuousClock.now + ttl
                message.expiresAt = deadline
                effects.timers.append((name, deadline))
            }
            queue.ready.append(message)
            var overflow: [Message] = []
            if let max = queue.spec.maxLength {
                while queue.ready.count > max { overflow.append(queue.ready.removeFirst()) }
            }
            state.queues[name] = queue
            for dropped in overflow { deadLetter(&state, dropped, from: name, reason: "maxlen", &effects) }
        }

        private func deadLetter(
            _ state: inout State, _ message: Message, from queueName: String, reason: String, _ effects: inout Effects
        ) {
            guard let spec = state.queues[queueName]?.spec, let dlx = spec.deadLetterExchange else { return }
            var message = message
            if message.headers["x-first-death-reason"] == nil {
                message.headers["x-first-death-reason"] = reason
                message.headers["x-first-death-queue"] = queueName
                message.headers["x-first-death-exchange"] = message.exchange
            }
            message.headers[field: "x-death"] = .array(
                Self.xDeath(message.headers[field: "x-death"], queue: queueName, reason: reason, message: message))
            message.exchange = dlx
            message.routingKey = spec.deadLetterRoutingKey ?? message.routingKey
            message.expiration = nil
            message.expiresAt = nil
            message.redelivered = false
            guard dlx.isEmpty || state.exchanges[dlx] != nil else { return }
            let targets = route(state, exchange: dlx, routingKey: message.routingKey)
            for target in targets { enqueue(&state, message, into: target, &effects) }
            dispatch(&state, targets, &effects)
        }

        /// The `x-death` array as RabbitMQ keeps it: one table per (queue, reason), the latest first, with a `count`.
        private static func xDeath(_ existing: HeaderValue?, queue: String, reason: String, message: Message)
            -> [HeaderValue]
        {
            var entries: [HeaderValue] = []
            if case .array(let values)? = existing { entries = values }
            var count: Int64 = 1
            if let index = entries.firstIndex(where: {
                guard case .table(let table) = $0 else { return false }
                return table["queue"] == queue && table["reason"] == reason
            }) {
                if case .table(let table) = entries.remove(at: index) {
                    count = (table[field: "count"]?.integerValue ?? 0) + 1
                }
            }
            var entry: MessageHeaders = [
                "count": .int64(count), "reason": .string(reason), "queue": .string(queue),
                "exchange": .string(message.exchange), "routing-keys": .array([.string(message.routingKey)]),
                "time": .timestamp(UInt64(max(0, Date().timeIntervalSince1970))),
            ]
            if let expiration = message.expiration {
                entry["original-expiration"] = String(max(0, expiration.components.seconds * 1000))
            }
            return [.table(entry)] + entries
        }

        /// Hands ready messages to consumers with room under their prefetch, round-robin.
        private func dispatch(_ state: inout State, _ names: [String], _ effects: inout Effects) {
            for name in names {
                expireHead(&state, name, &effects)
                while var queue = state.queues[name], !queue.ready.isEmpty, !queue.consumerOrder.isEmpty {
                    var chosen: UInt64?
                    for offset in 0..<queue.consumerOrder.count {
                        let index = (queue.nextConsumer + offset) % queue.consumerOrder.count
                        let id = queue.consumerOrder[index]
                        if let consumer = state.consumers[id], consumer.unsettled < consumer.prefetch {
                            chosen = id
                            queue.nextConsumer = (index + 1) % queue.consumerOrder.count
                            break
                        }
                    }
                    guard let id = chosen, let consumer = state.consumers[id] else { break }
                    let message = queue.ready.removeFirst()
                    state.queues[name] = queue
                    let tag = state.nextTag
                    state.nextTag += 1
                    let p = message.properties
                    let settler = InMemorySettler(core: self, tag: tag)
                    let delivery = Delivery(
                        exchange: message.exchange, routingKey: message.routingKey, queue: name, body: message.body,
                        headers: p.headers, messageId: p.messageId, contentType: p.contentType, type: p.type,
                        correlationId: p.correlationId, contentEncoding: p.contentEncoding, replyTo: p.replyTo,
                        appId: p.appId, userId: p.userId, priority: p.priority, timestamp: p.timestamp,
                        expiration: p.expiration, persistent: p.persistent, redelivered: message.redelivered,
                        settler: settler)
                    // Yielding under the lock keeps each consumer's deliveries in queue order; `yield` runs no
                    // user code.
                    if case .terminated = consumer.continuation.yield(delivery) {
                        // The stream ended and its onTermination is about to cancel the consumer: put the message
                        // back and cancel it here (the delivery is released under the lock: disarmed first).
                        settler.markSettled()
                        state.queues[name]?.ready.insert(message, at: 0)
                        removeConsumer(&state, id, &effects)
                        continue
                    }
                    state.unsettled[tag] = Unsettled(message: message, queue: name, consumer: id)
                    state.consumers[id]?.unsettled += 1
                    expireHead(&state, name, &effects)
                }
            }
        }

        private func expireHead(_ state: inout State, _ name: String, _ effects: inout Effects) {
            let now = ContinuousClock.now
            var expired: [Message] = []
            while let head = state.queues[name]?.ready.first, let deadline = head.expiresAt, deadline <= now {
                state.queues[name]?.ready.removeFirst()
                expired.append(head)
            }
            for message in expired { deadLetter(&state, message, from: name, reason: "expired", &effects) }
        }

        // MARK: Consume

        func consume(queue: String, prefetch: Int) throws -> DeliveryStream {
            guard prefetch >= 1 else {
                throw BusError(.invalidArgument, "prefetch must be at least 1, not \(prefetch)")
            }
            let (stream, continuation) = DeliveryStream.makeStream()
            let effects = try state.withLock { state throws(BusError) -> Effects in
                if state.isShutDown { throw closedError }
                guard state.queues[queue] != nil else {
                    throw BusError(
                        .notFound, "Queue '\(queue)' does not exist (consuming from queue '\(queue)')",
                        recoverySuggestion: "declare the queue first (MessageBus.declare)")
                }
                let id = state.nextConsumerID
                state.nextConsumerID += 1
                state.consumers[id] = ConsumerState(queue: queue, prefetch: prefetch, continuation: continuation)
                state.queues[queue]?.consumerOrder.append(id)
                continuation.onTermination = { [weak self] _ in self?.cancelConsumer(id) }
                var effects = Effects()
                dispatch(&state, [queue], &effects)
                return effects
            }
            run(effects)
            return stream
        }

        private func cancelConsumer(_ id: UInt64) {
            let effects = state.withLock { state -> Effects in
                var effects = Effects()
                if let queue = state.consumers[id]?.queue {
                    removeConsumer(&state, id, &effects)
                    dispatch(&state, [queue], &effects)
                }
                return effects
            }
            run(effects)
        }

        /// Removes a consumer. What it had not settled stays unsettled, as on RabbitMQ: a delivery
        /// still held (a handler runs on it) is settled as usual, and one released unsettled (left in
        /// the ended stream's buffer, or dropped) goes back to its queue through its settler.
        private func removeConsumer(_ state: inout State, _ id: UInt64, _ effects: inout Effects) {
            guard let consumer = state.consumers.removeValue(forKey: id) else { return }
            // Released after the lock: dropping the last continuation may end its stream (and
            // release its buffered deliveries, whose settlers take the lock).
            effects.finishes.append((consumer.continuation, nil))
            state.queues[consumer.queue]?.consumerOrder.removeAll { $0 == id }
        }

        // MARK: Settle

        func settle(tag: UInt64, _ settlement: Settlement) {
            let effects = state.withLock { state -> Effects in
                var effects = Effects()
                guard let entry = state.unsettled.removeValue(forKey: tag) else { return effects }
                state.consumers[entry.consumer]?.unsettled -= 1
                switch settlement {
                case .ack:
                    break
                case .nack(requeue: true):
                    var message = entry.message
                    message.redelivered = true
                    // Back where it was among the messages handed back before it (RabbitMQ keeps
                    // the original positions): several released at once keep their order.
                    message.requeuedTag = tag
                    let ready = state.queues[entry.queue]?.ready ?? []
                    let position = ready.prefix { ($0.requeuedTag ?? .max) < tag }.count
                    state.queues[entry.queue]?.ready.insert(message, at: position)
                case .nack(requeue: false), .reject:
                    deadLetter(&state, entry.message, from: entry.queue, reason: "rejected", &effects)
                }
                dispatch(&state, [entry.queue], &effects)
                return effects
            }
            run(effects)
        }

        // MARK: Expiry

        func expire(_ queue: String) {
            let effects = state.withLock { state -> Effects in
                var effects = Effects()
                dispatch(&state, [queue], &effects)
                return effects
            }
            run(effects)
        }

        // MARK: Shutdown

        func shutdown() {
            let effects = state.withLock { state -> Effects in
                var effects = Effects()
                state.isShutDown = true
                for (_, consumer) in state.consumers { effects.finishes.append((consumer.continuation, nil)) }
                for name in state.queues.keys { state.queues[name]?.consumerOrder.removeAll() }
                state.consumers.removeAll()
                return effects
            }
            run(effects)
        }

        private func run(_ effects: Effects) {
            for (continuation, error) in effects.finishes {
                if let error { continuation.finish(throwing: error) } else { continuation.finish() }
            }
            for (queue, deadline) in effects.timers {
                // A timer per message with a TTL; it holds the core weakly so a dropped bus is not kept alive.
                Task { [weak self] in
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    try? await Task.sleep(for: .milliseconds(1))
                    self?.expire(queue)
                }
            }
        }
    }
}

/// Settles one in-memory delivery, once.
private final class InMemorySettler: DeliverySettler {
    private weak let core: InMemoryBus.Core?
    private let tag: UInt64
    private let settled = Atomic<Bool>(false)

    init(core: InMemoryBus.Core, tag: UInt64) {
        self.core = core
        self.tag = tag
    }

    /// Marks the delivery settled by the bus itself, so that its release settles nothing.
    func markSettled() {
        settled.store(true, ordering: .relaxed)
    }

    deinit {
        // Released without a settlement: back to its queue, as RabbitMQ's settler does.
        if !settled.load(ordering: .relaxed) { core?.settle(tag: tag, .nack(requeue: true)) }
    }

    func settle(_ settlement: Settlement) async throws {
        guard !settled.exchange(true, ordering: .relaxed) else { return }
        core?.settle(tag: tag, settlement)
    }
}

private var closedError: BusError {
    BusError(.closed, "The in-memory bus has been shut down")
}

private func conflict(queue: String, _ argument: String) -> BusError {
    BusError(
        .preconditionFailed, "Queue '\(queue)' already exists with a different '\(argument)'",
        recoverySuggestion: "declare it with the same arguments, or delete the queue so it can be declared anew")
}

private func conflict(exchange: String, _ argument: String) -> BusError {
    BusError(
        .preconditionFailed, "Exchange '\(exchange)' already exists with a different '\(argument)'",
        recoverySuggestion: "declare it with the same type and durability, or delete the exchange")
}

private func unroutable(_ exchange: String, _ routingKey: String) -> BusError {
    let name = exchange.isEmpty ? "(default exchange)" : "'\(exchange)'"
    return BusError(
        .unroutable,
        "No queue is bound to exchange \(name) for routing key '\(routingKey)'; the mandatory message was returned",
        recoverySuggestion: "declare the queue and its binding before publishing")
}
