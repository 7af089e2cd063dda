/// Exchanges, queues and bindings to declare on a broker.
public struct Topology: Sendable, Hashable {
    /// Exchanges to declare.
    public var exchanges: [ExchangeSpec]
    /// Queues to declare.
    public var queues: [QueueSpec]
    /// Bindings to create (after exchanges and queues).
    public var bindings: [BindingSpec]

    /// Creates a topology.
    public init(exchanges: [ExchangeSpec] = [], queues: [QueueSpec] = [], bindings: [BindingSpec] = []) {
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
    }

    /// This topology followed by another one.
    public func merging(_ other: Topology) -> Topology {
        Topology(
            exchanges: exchanges + other.exchanges,
            queues: queues + other.queues,
            bindings: bindings + other.bindings
        )
    }
}

/// An exchange declaration.
public struct ExchangeSpec: Sendable, Hashable {
    /// Exchange types.
    public enum Kind: String, Sendable, Hashable {
        /// Routes on exact routing-key match.
        case direct
        /// Routes to every bound queue.
        case fanout
        /// Routes on routing-key patterns (`*` one word, `#` zero or more words).
        case topic
    }
    /// Exchange name.
    public var name: String
    /// Exchange type.
    public var kind: Kind
    /// Survives a broker restart.
    public var durable: Bool

    /// Creates an exchange declaration (durable by default).
    public init(name: String, kind: Kind, durable: Bool = true) {
        self.name = name
        self.kind = kind
        self.durable = durable
    }
}

/// A queue declaration.
public struct QueueSpec: Sendable, Hashable {
    /// Queue types.
    public enum Kind: String, Sendable, Hashable {
        /// A classic queue.
        case classic
        /// A replicated quorum queue (always durable).
        case quorum
    }
    /// Queue name.
    public var name: String
    /// Queue type.
    public var kind: Kind
    /// Survives a broker restart.
    public var durable: Bool
    /// Dead-letter exchange (`x-dead-letter-exchange`) for rejected or expired messages.
    public var deadLetterExchange: String?
    /// Routing key used when dead-lettering (`x-dead-letter-routing-key`); the message's own
    /// routing key when `nil`.
    public var deadLetterRoutingKey: String?
    /// Message time-to-live in this queue (`x-message-ttl`).
    public var messageTTL: Duration?
    /// Maximum number of messages (`x-max-length`).
    public var maxLength: Int?
    /// The broker deletes the queue when it has had no consumer for this long (`x-expires`):
    /// for a process's private subscription queues, which must not outlive it.
    public var expires: Duration?

    /// Creates a queue declaration (durable classic queue by default).
    public init(
        name: String,
        kind: Kind = .classic,
        durable: Bool = true,
        deadLetterExchange: String? = nil,
        deadLetterRoutingKey: String? = nil,
        messageTTL: Duration? = nil,
        maxLength: Int? = nil,
        expires: Duration? = nil
    ) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.deadLetterExchange = deadLetterExchange
        self.deadLetterRoutingKey = deadLetterRoutingKey
        self.messageTTL = messageTTL
        self.maxLength = maxLength
        self.expires = expires
    }
}

/// A binding of a queue to an exchange.
public struct BindingSpec: Sendable, Hashable {
    /// The queue.
    public var queue: String
    /// The exchange.
    public var exchange: String
    /// The binding key.
    public var routingKey: String

    /// Creates a binding.
    public init(queue: String, exchange: String, routingKey: String) {
        self.queue = queue
        self.exchange = exchange
        self.routingKey = routingKey
    }
}
