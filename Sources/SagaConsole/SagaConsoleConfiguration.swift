public import Foundation
public import Participant

/// Who may read the console's pages (sagas' payloads, timelines, dead letters).
public enum SagaConsoleReadAccess: String, Sendable, CaseIterable {
    /// Anyone who can reach the console, which must listen on a loopback address (the default):
    /// a console configured to listen beyond loopback with this access refuses to start.
    case loopback
    /// Anyone who can reach the console, on any address: for a console behind a proxy that
    /// authenticates its users itself.
    case anyone
    /// Only operators logged in with the ``SagaConsoleConfiguration/operatorToken``: every page
    /// and the live updates need a session. `/login`, the assets, the health probes and
    /// `/metrics` (counts only, for Prometheus) stay open.
    case operators
}

/// How ``SagaConsole`` serves: where it listens, who may read and act, what it hides.
///
/// Safe by default: it listens on 127.0.0.1 only, it refuses to serve sagas' data beyond
/// loopback unless told who may read them (``readAccess``), and it is read-only unless an
/// ``operatorToken`` is set.
public struct SagaConsoleConfiguration: Sendable, CustomStringConvertible {
    /// The address to listen on (default `127.0.0.1`: this machine only).
    public var host: String
    /// The port to listen on (0: any free port; the console logs the one it got).
    public var port: Int
    /// The secret an operator enters to retry, compensate or requeue; `nil` keeps the console
    /// read-only. Never logged or shown.
    public var operatorToken: String?
    /// Who may read the pages (default ``SagaConsoleReadAccess/loopback``).
    public var readAccess: SagaConsoleReadAccess
    /// Whether the session cookie is always `Secure` (sent over HTTPS only). Without it, the
    /// cookie is `Secure` when the login request came over HTTPS through a proxy that says so
    /// (`X-Forwarded-Proto: https` or `Forwarded: proto=https`).
    public var secureCookies: Bool
    /// Payload (and dead-letter body) keys shown as `••••` at any depth, compared exactly.
    public var redactedKeys: Set<String>
    /// Whether keys whose names look secret are shown as `••••` too (default `true`): names
    /// that contain `password`, `secret`, `token`, `apiKey`, `privateKey`, `authorization`,
    /// `credential`, `cardNumber`, `cvv` or `cvc`, and `pin`, `ssn`, `iban`, `otp` (compared
    /// without case, `_` and `-`).
    public var redactsSecretLookingKeys: Bool
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
        host: String = "127.0.0.1", port: Int = 8080, operatorToken: String? = nil, readAccess: SagaConsoleReadAccess = .loopback,
        secureCookies: Bool = false, redactedKeys: Set<String> = [], redactsSecretLookingKeys: Bool = true,
        stalledThreshold: Duration = .seconds(900), stuckAttempts: Int = 5,
        prefix: String = "sagakit", storeDescription: String = ""
    ) {
        self.host = host
        self.port = port
        self.operatorToken = operatorToken
        self.readAccess = readAccess
        self.secureCookies = secureCookies
        self.redactedKeys = redactedKeys
        self.redactsSecretLookingKeys = redactsSecretLookingKeys
        self.stalledThreshold = stalledThreshold
        self.stuckAttempts = stuckAttempts
        self.prefix = prefix
        self.storeDescription = storeDescription
    }

    /// Whether operators may act (an operator token is set).
    public var actionsEnabled: Bool { !(operatorToken ?? "").isEmpty }

    /// Whether ``host`` is a loopback address (this machine only).
    public var listensOnLoopbackOnly: Bool { Self.isLoopback(host) }

    /// Whether `host` names this machine only (`localhost`, `127.x.x.x`, `::1`).
    static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased()
        return ["localhost", "::1", "[::1]"].contains(host) || host.hasPrefix("127.")
    }

    /// Throws ``SagaConsoleConfigurationError`` when the console would serve sagas' data to
    /// people it should not, or could not let anyone in: ``SagaConsoleReadAccess/loopback`` on
    /// an address beyond loopback, or ``SagaConsoleReadAccess/operators`` without an operator
    /// token. ``SagaConsole/run()`` checks it before it listens.
    public func validate() throws {
        if readAccess == .loopback, !listensOnLoopbackOnly {
            throw SagaConsoleConfigurationError(
                message:
                    "the console would let anyone who can reach \(host):\(port) read every saga's data: "
                    + "set the read access to 'operators' (they log in with the operator token; saga console --read-access operators, "
                    + "or SAGAKIT_CONSOLE_READ_ACCESS=operators), or to 'anyone' when a proxy in front of it authenticates its users")
        }
        if readAccess == .operators, !actionsEnabled {
            throw SagaConsoleConfigurationError(
                message:
                    "read access 'operators' needs an operator token to log in with: "
                    + "set one (saga console --token-file <file>, or SAGAKIT_CONSOLE_TOKEN)")
        }
    }

    /// Describes the configuration without the token.
    public var description: String {
        "SagaConsoleConfiguration(host: \(host), port: \(port), read: \(readAccess.rawValue), actions: \(actionsEnabled ? "enabled (token set)" : "read-only"), redacted: \(redactedKeys.sorted()))"
    }
}

/// A ``SagaConsoleConfiguration`` the console refuses to serve with.
public struct SagaConsoleConfigurationError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and what to set instead.
    public var message: String

    /// Creates an error.
    public init(message: String) { self.message = message }

    /// The message.
    public var description: String { message }
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
