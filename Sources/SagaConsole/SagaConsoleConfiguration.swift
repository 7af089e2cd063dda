public import Foundation
public import Participant

/// How ``SagaConsole`` serves: where it listens, whether operators may act, what it hides.
///
/// Safe by default: it listens on 127.0.0.1 only, and it is read-only unless an
/// ``operatorToken`` is set.
public struct SagaConsoleConfiguration: Sendable, CustomStringConvertible {
    /// The address to listen on (default `127.0.0.1`: this machine only).
    public var host: String
    /// The port to listen on (0: any free port; the console logs the one it got).
    public var port: Int
    /// The secret an operator enters to retry, compensate or requeue; `nil` keeps the console
    /// read-only. Never logged or shown.
    public var operatorToken: String?
    /// Payload (and dead-letter body) keys shown as `••••` at any depth, compared exactly.
    public var redactedKeys: Set<String>
    /// A running or compensating saga not updated for this long is stalled (match the
    /// participants' reaper setting).
    public var stalledThreshold: Duration
    /// A running or compensating saga whose current step was attempted at least this often is
    /// stuck retrying.
    public var stuckAttempts: Int
    /// The topology prefix, shown in the header.
    public var prefix: String
    /// Where the store is, shown in the header (redact passwords before setting it).
    public var storeDescription: String

    /// Creates a configuration.
    public init(
        host: String = "127.0.0.1", port: Int = 8080, operatorToken: String? = nil, redactedKeys: Set<String> = [],
        stalledThreshold: Duration = .seconds(900), stuckAttempts: Int = 5, prefix: String = "sagakit", storeDescription: String = ""
    ) {
        self.host = host
        self.port = port
        self.operatorToken = operatorToken
        self.redactedKeys = redactedKeys
        self.stalledThreshold = stalledThreshold
        self.stuckAttempts = stuckAttempts
        self.prefix = prefix
        self.storeDescription = storeDescription
    }

    /// Whether operators may act (an operator token is set).
    public var actionsEnabled: Bool { !(operatorToken ?? "").isEmpty }

    /// Describes the configuration without the token.
    public var description: String {
        "SagaConsoleConfiguration(host: \(host), port: \(port), actions: \(actionsEnabled ? "enabled (token set)" : "read-only"), redacted: \(redactedKeys.sorted()))"
    }
}

/// What the console reads and does, as closures: the `saga` tool wires them to its store,
/// broker and commands (so the console operates exactly as `saga retry`, `saga dlq` do), and
/// tests can wire them to in-memory values.
public struct SagaConsoleBackend: Sendable {
    /// The saga store.
    public var store: any SagaStore
    /// Subscribes to the saga lifecycle events (for live updates), for example with
    /// ``SagaEventSubscription/subscribe(bus:topology:bindingKeys:expires:logger:)``.
    public var subscribe: @Sendable () async throws -> SagaEventSubscription
    /// Every definition known (compiled in and stored), read again for each page.
    public var definitions: @Sendable () async throws -> SagaDefinitionRegistry
    /// What happens next to a saga.
    public var next: @Sendable (SagaState) async -> SagaConsoleNextStep
    /// Retries a saga (`id`, who, why); records the action in its history.
    public var retry: @Sendable (_ id: SagaID, _ actor: String, _ reason: String?) async throws -> SagaState
    /// Compensates a saga (`id`, who, why); records the action in its history.
    public var compensate: @Sendable (_ id: SagaID, _ actor: String, _ reason: String) async throws -> SagaState
    /// Reads up to `limit` dead letters (they stay in the queue).
    public var deadLetters: @Sendable (_ limit: Int) async throws -> [SagaConsoleDeadLetter]
    /// Requeues the dead letters with these message ids (`nil`: every one) among the first
    /// `limit`.
    public var requeue: @Sendable (_ messageIDs: Set<String>?, _ limit: Int) async throws -> SagaConsoleRequeueResult
    /// Delivers a signal to a saga (`id`, the signal's name, data merged into the saga's data,
    /// who), as ``SagaManager/signal(_:name:payload:by:)`` does; `nil` hides the console's Signal
    /// form.
    public var signal: (@Sendable (_ id: SagaID, _ name: String, _ data: JSONObject, _ actor: String) async throws -> SagaSignalResult)?
    /// Records that what a saga that needs attention stopped at was done by hand (`id`, who,
    /// what was done), as ``SagaManager/resolve(_:by:reason:patch:)`` does; `nil` hides the
    /// console's Resolve form.
    public var resolve: (@Sendable (_ id: SagaID, _ actor: String, _ reason: String) async throws -> SagaState)?
    /// Removes the dead letter with this id (as ``SagaConsoleDeadLetter/messageID`` gives it) for
    /// good, as `saga dlq drop --id` does; `false` when it is not among the first `limit`. `nil`
    /// hides the console's Drop buttons.
    public var drop: (@Sendable (_ messageID: String, _ limit: Int) async throws -> Bool)?

    /// Creates a backend.
    public init(
        store: any SagaStore, subscribe: @escaping @Sendable () async throws -> SagaEventSubscription,
        definitions: @escaping @Sendable () async throws -> SagaDefinitionRegistry,
        next: @escaping @Sendable (SagaState) async -> SagaConsoleNextStep,
        retry: @escaping @Sendable (SagaID, String, String?) async throws -> SagaState,
        compensate: @escaping @Sendable (SagaID, String, String) async throws -> SagaState,
        deadLetters: @escaping @Sendable (Int) async throws -> [SagaConsoleDeadLetter],
        requeue: @escaping @Sendable (Set<String>?, Int) async throws -> SagaConsoleRequeueResult,
        signal: (@Sendable (SagaID, String, JSONObject, String) async throws -> SagaSignalResult)? = nil,
        resolve: (@Sendable (SagaID, String, String) async throws -> SagaState)? = nil,
        drop: (@Sendable (String, Int) async throws -> Bool)? = nil
    ) {
        self.store = store
        self.subscribe = subscribe
        self.definitions = definitions
        self.next = next
        self.retry = retry
        self.compensate = compensate
        self.deadLetters = deadLetters
        self.requeue = requeue
        self.signal = signal
        self.resolve = resolve
        self.drop = drop
    }
}

/// What happens next to a saga, as `saga show` says it.
public struct SagaConsoleNextStep: Sendable, Hashable {
    /// `waiting`, `retrying`, `needs-operator`, `finished` or `unknown`.
    public var kind: String
    /// One line.
    public var summary: String
    /// Everything, one statement per line.
    public var text: String
    /// When a delayed retry is due.
    public var retryAt: Date?
    /// When the reaper re-sends the command if nothing happens.
    public var stalledAt: Date?
    /// The operator commands that apply now (`saga retry <id>`, `saga compensate <id>`).
    public var operatorCommands: [String]

    /// Creates a next step.
    public init(kind: String, summary: String, text: String, retryAt: Date? = nil, stalledAt: Date? = nil, operatorCommands: [String] = [])
    {
        self.kind = kind
        self.summary = summary
        self.text = text
        self.retryAt = retryAt
        self.stalledAt = stalledAt
        self.operatorCommands = operatorCommands
    }
}

/// A dead-lettered message, as `saga dlq list` shows it.
public struct SagaConsoleDeadLetter: Sendable, Hashable {
    /// The AMQP message id (what requeue selects by).
    public var messageID: String?
    /// Why it was dead-lettered.
    public var reason: String?
    /// The service that dead-lettered it.
    public var service: String?
    /// The queue it came from.
    public var sourceQueue: String?
    /// Where a requeue publishes it.
    public var sourceExchange: String?
    /// The routing key a requeue uses.
    public var sourceRoutingKey: String?
    /// When, as recorded in its headers.
    public var deadLetteredAt: String?
    /// The saga it belongs to, when known.
    public var sagaID: String?
    /// The command (message type).
    public var command: String?
    /// The body size.
    public var bytes: Int
    /// The body's beginning, as text, with the ``SagaConsoleConfiguration/redactedKeys``
    /// already masked (the console shows it as it is: redact the whole body before shortening it).
    public var body: String

    /// Creates a dead letter.
    public init(
        messageID: String?, reason: String?, service: String?, sourceQueue: String?, sourceExchange: String?, sourceRoutingKey: String?,
        deadLetteredAt: String?, sagaID: String?, command: String?, bytes: Int, body: String
    ) {
        self.messageID = messageID
        self.reason = reason
        self.service = service
        self.sourceQueue = sourceQueue
        self.sourceExchange = sourceExchange
        self.sourceRoutingKey = sourceRoutingKey
        self.deadLetteredAt = deadLetteredAt
        self.sagaID = sagaID
        self.command = command
        self.bytes = bytes
        self.body = body
    }
}

/// What a requeue did.
public struct SagaConsoleRequeueResult: Sendable, Hashable {
    /// The message ids put back.
    public var requeued: [String]
    /// The messages that could not be put back, with why.
    public var failed: [String]
    /// How many stayed in the dead-letter queue.
    public var kept: Int

    /// Creates a result.
    public init(requeued: [String], failed: [String], kept: Int) {
        self.requeued = requeued
        self.failed = failed
        self.kept = kept
    }
}
