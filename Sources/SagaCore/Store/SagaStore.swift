public import Foundation

/// Where saga state lives. Shared by every instance of every participant, so that any of them
/// can advance or compensate any saga.
///
/// Every change of a saga is one atomic compare-and-swap on its ``SagaState/version`` that also
/// records the messages the change sends (a transactional outbox): either both the new state
/// and its messages are stored, or neither is.
///
/// Implementations: ``InMemorySagaStore`` (tests), `SQLiteSagaStore` (module `SagaSQLite`, the
/// embedded default), `PostgresSagaStore` (module `SagaPostgres`). All pass the same conformance
/// suite.
public protocol SagaStore: Sendable {
    /// Creates a saga together with its first outbox messages.
    ///
    /// Idempotent by saga id: when a saga with that id exists, nothing is written and the stored
    /// saga is returned as ``SagaCreation/existing(_:)``.
    /// The stored state's `version` is 1, whatever `state.version` says.
    func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation

    /// Loads a saga.
    /// - Throws: ``SagaError`` `unknownSaga`.
    func load(_ id: SagaID) async throws -> SagaState

    /// Replaces a saga's state if its stored version is still `transition.expectedVersion`, and
    /// records the transition's outbox messages, atomically.
    ///
    /// - Returns: the stored state, whose version is `expectedVersion + 1`.
    /// - Throws: ``SagaError`` `versionConflict` (with the expected and actual versions) when the
    ///   saga changed in the meantime; `unknownSaga` when it does not exist.
    @discardableResult
    func commit(_ transition: SagaTransition) async throws -> SagaState

    /// Sagas matching a query, most recently updated first.
    func list(_ query: SagaQuery) async throws -> [SagaState]

    /// How many sagas are in each status (optionally for one definition name).
    func countByStatus(name: String?) async throws -> [SagaStatus: Int]

    /// Atomically claims up to `limit` stalled sagas: status running or compensating, not updated
    /// since `updatedBefore`, and not claimed by anyone else whose lease is still valid at `now`.
    /// Claiming sets a lease (`owner`, until `now + lease`) without changing the version. Two
    /// concurrent callers never receive the same saga.
    func claimStalled(updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int) async throws -> [SagaState]

    /// Outbox messages not yet marked sent, created before `createdBefore`, oldest first.
    func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage]

    /// Marks outbox messages as sent: they are never returned by
    /// ``pendingOutbox(createdBefore:limit:)`` again. The SQL stores delete them (a sent message
    /// is of no further use). Unknown ids are ignored.
    func markSent(_ ids: [String]) async throws
}

/// The result of ``SagaStore/create(_:outbox:)``.
public enum SagaCreation: Sendable, Hashable {
    /// The saga was created (version 1).
    case created(SagaState)
    /// A saga with that id already existed; nothing was written.
    case existing(SagaState)

    /// The stored state either way.
    public var state: SagaState {
        switch self {
        case .created(let state), .existing(let state): state
        }
    }
}

/// One atomic change of a saga: the new state and the messages it sends.
public struct SagaTransition: Sendable, Hashable {
    /// The new state (its `version` is ignored: the store writes `expectedVersion + 1`).
    public var state: SagaState
    /// The version the state was computed from.
    public var expectedVersion: Int64
    /// Messages to send, recorded in the same transaction.
    public var outbox: [OutboxMessage]

    /// Creates a transition.
    public init(state: SagaState, expectedVersion: Int64, outbox: [OutboxMessage]) {
        self.state = state
        self.expectedVersion = expectedVersion
        self.outbox = outbox
    }
}

/// A message recorded in the store by a transition, to be published on the bus.
public struct OutboxMessage: Sendable, Hashable, Codable {
    /// Unique id (also the AMQP message id).
    public var id: String
    /// The saga that sends it.
    public var sagaID: SagaID
    /// The exchange to publish to.
    public var exchange: String
    /// The routing key.
    public var routingKey: String
    /// The body.
    public var body: [UInt8]
    /// Application headers.
    public var headers: [String: String]
    /// When the message was recorded.
    public var createdAt: Date

    /// Creates an outbox message.
    public init(id: String, sagaID: SagaID, exchange: String, routingKey: String, body: [UInt8], headers: [String: String], createdAt: Date)
    {
        self.id = id
        self.sagaID = sagaID
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.headers = headers
        self.createdAt = createdAt
    }
}

/// A filter for ``SagaStore/list(_:)``.
public struct SagaQuery: Sendable, Hashable {
    /// Only these statuses (all when `nil`).
    public var statuses: Set<SagaStatus>?
    /// Only this definition name.
    public var name: String?
    /// Only sagas not updated since this time (stalled candidates).
    public var updatedBefore: Date?
    /// At most this many.
    public var limit: Int

    /// Creates a query.
    public init(statuses: Set<SagaStatus>? = nil, name: String? = nil, updatedBefore: Date? = nil, limit: Int = 100) {
        self.statuses = statuses
        self.name = name
        self.updatedBefore = updatedBefore
        self.limit = limit
    }
}
