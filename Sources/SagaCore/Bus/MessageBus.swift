/// A message broker as SagaKit uses it: declare a topology, publish with a broker confirm,
/// and consume deliveries that are settled explicitly.
///
/// Two implementations ship with SagaKit: `RabbitMQBus` (module `SagaRabbitMQ`) and
/// ``InMemoryBus`` for unit tests. Both pass the same conformance suite.
///
/// Semantics every implementation guarantees:
/// - ``publish(_:)`` returns only once the broker has taken responsibility for the message
///   (a publisher confirm). A message that cannot be routed to any queue throws
///   ``BusError/Code/unroutable``; nothing is dropped silently.
/// - Deliveries are at-least-once: a delivery that is not acknowledged (consumer gone,
///   connection lost, `nack(requeue: true)`) is delivered again, possibly to another consumer,
///   with ``Delivery/redelivered`` set.
/// - `reject()` and `nack(requeue: false)` dead-letter the message when the queue has a
///   dead-letter exchange, and drop it otherwise (broker semantics).
public protocol MessageBus: Sendable {
    /// Declares exchanges, queues and bindings. Idempotent; the bus records the topology and
    /// re-declares it after a reconnect.
    func declare(_ topology: Topology) async throws

    /// Publishes one message and waits for the broker's confirm.
    ///
    /// - Throws: ``BusError`` with code `unroutable` (mandatory publish that matched no queue),
    ///   `nacked` (the broker refused it), `messageTooLarge`, `connectionLost` (the confirm did not
    ///   arrive and the message could not be re-sent), `closed`.
    func publish(_ message: OutgoingMessage) async throws

    /// Starts consuming from a queue with the given prefetch (the number of unacknowledged
    /// deliveries the broker hands to this consumer at once).
    ///
    /// The returned sequence ends when the bus is shut down or the consumer is cancelled. After a
    /// connection loss it resumes by itself; deliveries that were not settled before the loss are
    /// redelivered by the broker and settling the old ones is a no-op.
    ///
    /// Ending the iteration cancels the consumer: no more deliveries come, and each delivery it
    /// had not settled stays with it until it is settled (a handler still running on it finishes
    /// and acknowledges, and nobody else receives it meanwhile) or released unsettled (left in
    /// the stream's buffer, or dropped), which hands it back to the queue.
    func consume(queue: String, prefetch: Int) async throws -> DeliveryStream

    /// Stops consuming, waits for in-flight publishes to be confirmed and closes the connection.
    func shutdown() async
}

/// The deliveries of one consumer, in broker order.
public typealias DeliveryStream = AsyncThrowingStream<Delivery, any Error>

/// A message to publish.
///
/// Every AMQP 0-9-1 basic property but the deprecated `cluster-id` can be set, so that a delivery
/// published again (dead-lettered, requeued from a dead-letter queue) is the message that arrived:
/// see ``init(republishing:exchange:routingKey:mandatory:)``.
public struct OutgoingMessage: Sendable, Hashable {
    /// Exchange to publish to; `""` is the default exchange (routing key = queue name).
    public var exchange: String
    /// Routing key.
    public var routingKey: String
    /// The body bytes.
    public var body: [UInt8]
    /// Application headers (the AMQP headers table, typed values; plain strings read and write as strings).
    public var headers: MessageHeaders
    /// A unique message id (AMQP `message-id`).
    public var messageId: String?
    /// The body's content type (AMQP `content-type`), for example `application/json`.
    public var contentType: String?
    /// The body's content encoding (AMQP `content-encoding`), for example `gzip`.
    public var contentEncoding: String?
    /// The message type (AMQP `type`); SagaKit sets it to the command name.
    public var type: String?
    /// The correlation id (AMQP `correlation-id`).
    public var correlationId: String?
    /// Where replies go (AMQP `reply-to`), usually a queue name.
    public var replyTo: String?
    /// The publishing application (AMQP `app-id`).
    public var appId: String?
    /// The user the message claims to come from (AMQP `user-id`). RabbitMQ refuses a message whose
    /// `user-id` is not the publishing connection's user (unless that user has the `impersonator`
    /// tag): the channel is closed with `PRECONDITION_FAILED` and the publish fails.
    public var userId: String?
    /// The priority, 0–255 (AMQP `priority`); queues declared with `x-max-priority` deliver higher
    /// priorities first, other queues carry it along.
    public var priority: UInt8?
    /// When the message was created, in seconds since the Unix epoch (AMQP `timestamp`).
    public var timestamp: UInt64?
    /// Per-message TTL (AMQP `expiration`, sent in whole milliseconds).
    public var expiration: Duration?
    /// Persistent (survives a broker restart on a durable queue; AMQP `delivery-mode` 2, otherwise 1).
    /// Default `true`.
    public var persistent: Bool
    /// Mandatory: an unroutable message is returned to the publisher as an error. Default `true`.
    public var mandatory: Bool

    /// Creates a message; persistent and mandatory by default.
    public init(
        exchange: String,
        routingKey: String,
        body: [UInt8],
        headers: MessageHeaders = [:],
        messageId: String? = nil,
        contentType: String? = nil,
        type: String? = nil,
        correlationId: String? = nil,
        contentEncoding: String? = nil,
        replyTo: String? = nil,
        appId: String? = nil,
        userId: String? = nil,
        priority: UInt8? = nil,
        timestamp: UInt64? = nil,
        expiration: Duration? = nil,
        persistent: Bool = true,
        mandatory: Bool = true
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.headers = headers
        self.messageId = messageId
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.type = type
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.appId = appId
        self.userId = userId
        self.priority = priority
        self.timestamp = timestamp
        self.expiration = expiration
        self.persistent = persistent
        self.mandatory = mandatory
    }

    /// The message a delivery carried, addressed anew: the same body, headers and properties.
    ///
    /// A delivery whose publisher set no delivery mode is published persistent.
    public init(republishing delivery: Delivery, exchange: String, routingKey: String, mandatory: Bool = true) {
        self.init(
            exchange: exchange, routingKey: routingKey, body: delivery.body, headers: delivery.headers,
            messageId: delivery.messageId, contentType: delivery.contentType, type: delivery.type,
            correlationId: delivery.correlationId, contentEncoding: delivery.contentEncoding,
            replyTo: delivery.replyTo, appId: delivery.appId, userId: delivery.userId, priority: delivery.priority,
            timestamp: delivery.timestamp, expiration: delivery.expiration, persistent: delivery.persistent ?? true,
            mandatory: mandatory)
    }
}

/// One delivered message. Settle it exactly once with ``ack()``, ``nack(requeue:)`` or
/// ``reject()``; settling twice, or settling a delivery from a connection that has since been
/// lost, does nothing (the broker redelivers such messages).
///
/// Every AMQP 0-9-1 basic property but the deprecated `cluster-id` is read; a property the
/// publisher did not set is `nil`.
public struct Delivery: Sendable {
    /// The exchange the message was published to.
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// The queue it was consumed from.
    public var queue: String
    /// The body bytes.
    public var body: [UInt8]
    /// Application headers, with their AMQP types (nested tables, arrays, decimals and typed numbers included).
    public var headers: MessageHeaders
    /// AMQP `message-id`, if set.
    public var messageId: String?
    /// AMQP `content-type`, if set.
    public var contentType: String?
    /// AMQP `content-encoding`, if set.
    public var contentEncoding: String?
    /// AMQP `type`, if set.
    public var type: String?
    /// AMQP `correlation-id`, if set.
    public var correlationId: String?
    /// AMQP `reply-to`, if set.
    public var replyTo: String?
    /// AMQP `app-id`, if set.
    public var appId: String?
    /// AMQP `user-id`, if set (RabbitMQ checked it against the publisher's user).
    public var userId: String?
    /// AMQP `priority`, if set.
    public var priority: UInt8?
    /// AMQP `timestamp` (seconds since the Unix epoch), if set.
    public var timestamp: UInt64?
    /// AMQP `expiration` (the per-message TTL the publisher set), if set. The broker removes it
    /// when it dead-letters a message (and records it in `x-death` as `original-expiration`).
    public var expiration: Duration?
    /// AMQP `delivery-mode`: `true` for persistent (2), `false` for transient (1), `nil` when the
    /// publisher did not set it.
    public var persistent: Bool?
    /// `true` when the broker has delivered this message before.
    public var redelivered: Bool
    /// Settles the delivery; provided by the bus implementation.
    public var settler: any DeliverySettler

    /// Creates a delivery (bus implementations use this).
    public init(
        exchange: String,
        routingKey: String,
        queue: String,
        body: [UInt8],
        headers: MessageHeaders = [:],
        messageId: String? = nil,
        contentType: String? = nil,
        type: String? = nil,
        correlationId: String? = nil,
        contentEncoding: String? = nil,
        replyTo: String? = nil,
        appId: String? = nil,
        userId: String? = nil,
        priority: UInt8? = nil,
        timestamp: UInt64? = nil,
        expiration: Duration? = nil,
        persistent: Bool? = nil,
        redelivered: Bool = false,
        settler: any DeliverySettler
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.queue = queue
        self.body = body
        self.headers = headers
        self.messageId = messageId
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.type = type
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.appId = appId
        self.userId = userId
        self.priority = priority
        self.timestamp = timestamp
        self.expiration = expiration
        self.persistent = persistent
        self.redelivered = redelivered
        self.settler = settler
    }

    /// Acknowledges the message: the broker forgets it.
    public func ack() async throws { try await settler.settle(.ack) }
    /// Negatively acknowledges the message; with `requeue` it is delivered again, otherwise it is
    /// dead-lettered (or dropped when the queue has no dead-letter exchange).
    public func nack(requeue: Bool) async throws { try await settler.settle(.nack(requeue: requeue)) }
    /// Rejects the message: dead-lettered, or dropped when the queue has no dead-letter exchange.
    public func reject() async throws { try await settler.settle(.reject) }
}

/// How a delivery is settled.
public enum Settlement: Sendable, Hashable {
    /// Acknowledge.
    case ack
    /// Negative acknowledgement, optionally requeued.
    case nack(requeue: Bool)
    /// Reject without requeue.
    case reject
}

/// Settles one delivery. Implemented by each bus.
public protocol DeliverySettler: Sendable {
    /// Settles the delivery this settler belongs to. Idempotent.
    func settle(_ settlement: Settlement) async throws

    /// Whether the delivery is still this consumer's to settle: `false` once the channel or
    /// connection it came on is gone (the broker has put it back in its queue, for another
    /// consumer). A consumer that tries the delivery again in place, instead of handing it back,
    /// stops when this turns `false`. The default is `true`.
    var isStillHeld: Bool { get }
}

extension DeliverySettler {
    /// `true`: a bus that cannot tell keeps the delivery held (settling it later is a no-op if
    /// the broker has taken it back).
    public var isStillHeld: Bool { true }
}
