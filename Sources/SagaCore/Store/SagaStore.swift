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
    /// records the transition's outbox messages, atomically. A store that supports local writes
    /// (``supportsLocalWrites``) runs the transition's ``SagaTransition/localWrites`` in the same
    /// transaction, after the compare-and-swap.
    ///
    /// - Returns: the stored state, whose version is `expectedVersion + 1`.
    /// - Throws: ``SagaError`` `versionConflict` (with the expected and actual versions) when the
    ///   saga changed in the meantime; `unknownSaga` when it does not exist; `localWriteFailed`
    ///   when a local write fails or misses its expectation; `unsupported` for local writes in a
    ///   store that does not run them. Nothing is stored in each case.
    @discardableResult
    func commit(_ transition: SagaTransition) async throws -> SagaState

    /// Whether ``commit(_:)`` runs a transition's ``SagaTransition/localWrites`` in its
    /// transaction. `false` by default: SagaKit then refuses local writes with `unsupported`
    /// before calling the store.
    var supportsLocalWrites: Bool { get }

    /// What vouches for the copies of saga states that commands carry, so that a participant can
    /// skip loading the saga (see ``SagaStateSeal``); `nil` by default: commands then carry no
    /// copy and every participant loads the saga.
    var stateSeal: (any SagaStateSeal)? { get }

    /// Sagas matching a query, most recently updated first.
    func list(_ query: SagaQuery) async throws -> [SagaState]

    /// How many sagas are in each status (optionally for one definition name).
    func countByStatus(name: String?) async throws -> [SagaStatus: Int]

    /// How many sagas are in each status, optionally for one definition name and for one
    /// topology (the sagas started on it and those that record none, as
    /// ``SagaQuery/topology`` selects them).
    /// - Throws: `unsupported` for a topology when the store cannot count by topology (the
    ///   default for stores written before this requirement).
    func countByStatus(name: String?, topology: String?) async throws -> [SagaStatus: Int]

    /// How many sagas of the definition `name` each of its versions has, by status (a saga
    /// started before definitions had versions is on version 1), optionally for one topology as
    /// ``SagaQuery/topology`` selects it. Every version with a saga is present, with every status
    /// (0 when none); versions without sagas are absent. Exact, however many sagas the store
    /// keeps: what `saga definitions`, the console and `sagakit_store_sagas_by_version` show
    /// while a version is retired.
    /// - Throws: `unsupported` when the store cannot count by version (the default for stores
    ///   written before this requirement): the tools then count the sagas they can list.
    func countByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]]

    /// The unfinished sagas (running, waiting, compensating or needing attention) of each
    /// version of the definition `name` that has any, by status (every unfinished status
    /// present, 0 when none), optionally for one topology as ``countByVersion(name:topology:)``
    /// selects them: the versions whose commands still need handlers, not yet retired
    /// (Docs/Upgrades.md). A participant asks at every start, `saga services` at every call and
    /// the console's `/metrics` at every scrape, so stores answer from their status index without
    /// reading the finished sagas (a million finished sagas: 0.7–1.2 s to count by version, 55 ms
    /// the unfinished ones on PostgreSQL). The default counts by version.
    /// - Throws: what ``countByVersion(name:topology:)`` throws.
    func unfinishedByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]]

    /// Deletes up to `limit` finished sagas (completed or compensated; a saga that needs
    /// attention is not finished) last updated before `finishedBefore`, optionally of one
    /// topology as ``SagaQuery/topology`` selects it, and returns how many it deleted. A saga
    /// with an outbox message not yet sent (its terminal lifecycle event, say) is kept until the
    /// message is sent. Once deleted, a saga's id is free: `SagaManager.start` with that id starts
    /// a new saga, so keep finished sagas for as long as a start may be repeated.
    /// - Throws: `unsupported` when the store cannot (the default for stores written before this
    ///   requirement).
    func purgeFinished(before finishedBefore: Date, topology: String?, limit: Int) async throws -> Int

    /// Atomically claims up to `limit` stalled sagas: status running or compensating, not updated
    /// since `updatedBefore`, and not claimed by anyone else whose lease is still valid at `now`.
    /// Claiming sets a lease (`owner`, until `now + lease`) without changing the version. Two
    /// concurrent callers never receive the same saga.
    func claimStalled(updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int) async throws -> [SagaState]

    /// ``claimStalled(updatedBefore:now:owner:lease:limit:)`` among the sagas of one topology:
    /// those whose context names the topology prefix `topology` (``SagaState/topology``), and
    /// those that name none (stored before SagaKit recorded it). When deployments with different
    /// prefixes share a store, each one's reapers then claim only their own sagas: none holds a
    /// lease on another's saga, and another's stalled sagas never fill its batch.
    ///
    /// The default implementation claims with ``claimStalled(updatedBefore:now:owner:lease:limit:)``
    /// and drops the other topologies' sagas, which stay leased until their lease ends; the
    /// stores of SagaKit filter in the store.
    func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String
    ) async throws -> [SagaState]

    /// The outbox messages one topology's relay should publish now: not yet marked sent, whose
    /// ``OutboxMessage/topology`` is `topology`, created before `createdBefore` (a grace period
    /// for the publish that follows every commit), and due at `now` (never failed, or their
    /// ``recordFailedAttempts(_:retryAt:)`` time has come). Ordered by when they became due
    /// (their creation, or the retry time after a failure), then by insertion order, so a message
    /// that keeps failing moves behind the others instead of blocking them.
    ///
    /// Several deployments (topology prefixes) may share a store: each relay sees only its own
    /// messages.
    func pendingOutbox(topology: String, createdBefore: Date, now: Date, limit: Int) async throws -> [OutboxMessage]

    /// What ``pendingOutbox(topology:createdBefore:now:limit:)`` returns, each message claimed:
    /// not due again before `now + lease`, so that the relays of other processes do not publish
    /// it too while this one does. The relay then marks it sent, or
    /// ``recordFailedAttempts(_:retryAt:)`` defers it; a relay that dies in between leaves it to
    /// be claimed again once the lease ends. One saga's messages come in their insertion order.
    ///
    /// The default (stores written before it) only reads, as `pendingOutbox` does: several
    /// processes' relays then publish the same messages (duplicates participants ignore).
    func claimPendingOutbox(topology: String, createdBefore: Date, now: Date, lease: Duration, limit: Int) async throws
        -> [OutboxMessage]

    /// Every outbox message not yet marked sent, of every topology and due or not, created
    /// before `createdBefore`, oldest first: for tools and tests. A relay uses
    /// ``pendingOutbox(topology:createdBefore:now:limit:)``.
    func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage]

    /// The outbox messages of one saga not yet marked sent, oldest first: what `saga show` reads
    /// to say that a saga's next command has not reached the broker (and how many publishes
    /// failed).
    /// - Throws: `unsupported` when the store cannot (the default for stores written before it).
    func pendingOutbox(of sagaID: SagaID) async throws -> [OutboxMessage]

    /// Records a failed attempt to publish each message: its ``OutboxMessage/publishAttempts``
    /// grows by one and it is not due again before `retryAt`. Unknown (or already sent) ids are
    /// ignored.
    func recordFailedAttempts(_ ids: [String], retryAt: Date) async throws

    /// Marks outbox messages as sent: they are never returned by
    /// ``pendingOutbox(topology:createdBefore:now:limit:)`` again. The SQL stores delete them (a sent message
    /// is of no further use). Unknown ids are ignored.
    func markSent(_ ids: [String]) async throws

    /// Keeps a saga definition (its canonical document, see ``SagaDefinitionDocument``), so that
    /// any process — one not compiled with it, the `saga` CLI — can resolve it by name and
    /// version.
    ///
    /// Idempotent: registering identical content again does nothing.
    /// - Throws: `invalidDefinition`, listing the differences, when the store keeps different
    ///   content under the same name and version; `unsupported` when the store does not keep
    ///   definitions (the default implementation).
    func register(_ definition: SagaDefinition) async throws

    /// The definition registered under that name and version.
    /// - Throws: `unknownDefinition` when none is; `unsupported` when the store does not keep
    ///   definitions.
    func definition(named name: String, version: Int) async throws -> SagaDefinition

    /// Every definition the store keeps, sorted by name then version.
    /// - Throws: `unsupported` when the store does not keep definitions.
    func definitions() async throws -> [StoredDefinitionInfo]

    /// The circuit breaker kept under `key` (``SagaDefinition/circuitKey(ofStep:)``): closed
    /// with version 0 when the store has none.
    /// - Throws: `unsupported` when the store does not keep circuit breakers.
    func circuit(_ key: String) async throws -> StoredCircuit

    /// Saves a circuit breaker's state if its stored version is still `expectedVersion` (0: none
    /// stored yet); returns whether it was saved (`false`: someone else changed it first — read it
    /// again and decide again).
    /// - Throws: `unsupported` when the store does not keep circuit breakers.
    func saveCircuit(_ key: String, _ state: CircuitBreakerState, expectedVersion: Int64) async throws -> Bool

    /// Records that a participant process runs: inserts or refreshes the record of its topology,
    /// service and instance, and removes records not refreshed for
    /// ``ParticipantInstance/retention``.
    /// - Throws: `unsupported` when the store does not keep participants.
    func recordParticipant(_ participant: ParticipantInstance) async throws

    /// Removes a participant process's record (it stopped gracefully); no record is no error.
    /// - Throws: `unsupported` when the store does not keep participants.
    func removeParticipant(topology: String, service: String, instance: String) async throws

    /// Every recorded participant process, by topology, service and instance.
    /// - Throws: `unsupported` when the store does not keep participants.
    func participants() async throws -> [ParticipantInstance]
}

extension SagaStore {
    /// Claims with ``claimStalled(updatedBefore:now:owner:lease:limit:)`` and keeps the sagas of
    /// `topology` and those that name none (see the requirement).
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String
    ) async throws -> [SagaState] {
        try await claimStalled(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit).filter {
            $0.topology == nil || $0.topology == topology
        }
    }

    /// Stores written before SagaKit stored definitions do not keep them.
    /// - Throws: `unsupported`.
    public func register(_ definition: SagaDefinition) async throws {
        throw Self.definitionsUnsupported
    }

    /// Stores written before SagaKit stored definitions do not keep them.
    /// - Throws: `unsupported`.
    public func definition(named name: String, version: Int) async throws -> SagaDefinition {
        throw Self.definitionsUnsupported
    }

    /// Stores written before SagaKit stored definitions do not keep them.
    /// - Throws: `unsupported`.
    public func definitions() async throws -> [StoredDefinitionInfo] {
        throw Self.definitionsUnsupported
    }

    /// Stores written before SagaKit kept circuit breakers do not keep them (the engine treats
    /// their circuits as closed and says so in its log).
    /// - Throws: `unsupported`.
    public func circuit(_ key: String) async throws -> StoredCircuit {
        throw SagaError(.unsupported, "this store (\(Self.self)) keeps no circuit breakers")
    }

    /// Stores written before SagaKit kept circuit breakers do not keep them.
    /// - Throws: `unsupported`.
    public func saveCircuit(_ key: String, _ state: CircuitBreakerState, expectedVersion: Int64) async throws -> Bool {
        throw SagaError(.unsupported, "this store (\(Self.self)) keeps no circuit breakers")
    }

    /// Stores written before this requirement only read (they do not claim): see
    /// ``claimPendingOutbox(topology:createdBefore:now:lease:limit:)``.
    public func claimPendingOutbox(topology: String, createdBefore: Date, now: Date, lease: Duration, limit: Int) async throws
        -> [OutboxMessage]
    {
        try await pendingOutbox(topology: topology, createdBefore: createdBefore, now: now, limit: limit)
    }

    /// Stores written before this requirement cannot list one saga's outbox.
    /// - Throws: `unsupported`.
    public func pendingOutbox(of sagaID: SagaID) async throws -> [OutboxMessage] {
        throw SagaError(
            .unsupported, "this store (\(Self.self)) cannot list one saga's outbox",
            recoverySuggestion: "implement pendingOutbox(of:) in the store")
    }

    /// Counts with ``countByStatus(name:)`` when no topology is asked for.
    /// - Throws: `unsupported` for a topology: stores written before this requirement cannot
    ///   count by topology.
    public func countByStatus(name: String?, topology: String?) async throws -> [SagaStatus: Int] {
        guard topology != nil else { return try await countByStatus(name: name) }
        throw SagaError(
            .unsupported, "this store (\(Self.self)) cannot count sagas by topology",
            recoverySuggestion: "implement countByStatus(name:topology:) in the store, or count every topology")
    }

    /// Stores written before this requirement cannot delete finished sagas.
    /// - Throws: `unsupported`.
    public func purgeFinished(before finishedBefore: Date, topology: String?, limit: Int) async throws -> Int {
        throw SagaError(
            .unsupported, "this store (\(Self.self)) cannot delete finished sagas",
            recoverySuggestion: "implement purgeFinished(before:topology:limit:) in the store")
    }

    /// Stores written before this requirement count the unfinished sagas from
    /// ``countByVersion(name:topology:)``.
    public func unfinishedByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]] {
        try await countByVersion(name: name, topology: topology).compactMapValues { byStatus in
            let unfinished = byStatus.filter { !$0.key.hasEnded }
            return unfinished.values.contains { $0 > 0 } ? unfinished : nil
        }
    }

    /// Stores written before this requirement cannot count by definition version.
    /// - Throws: `unsupported`.
    public func countByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]] {
        throw SagaError(
            .unsupported, "this store (\(Self.self)) cannot count sagas by definition version",
            recoverySuggestion: "implement countByVersion(name:topology:) in the store")
    }

    /// Stores written before SagaKit recorded participants do not keep them (the tools then
    /// cannot say which service handles a saga's next step).
    /// - Throws: `unsupported`.
    public func recordParticipant(_ participant: ParticipantInstance) async throws {
        throw Self.participantsUnsupported
    }

    /// Stores written before SagaKit recorded participants do not keep them.
    /// - Throws: `unsupported`.
    public func removeParticipant(topology: String, service: String, instance: String) async throws {
        throw Self.participantsUnsupported
    }

    /// Stores written before SagaKit recorded participants do not keep them.
    /// - Throws: `unsupported`.
    public func participants() async throws -> [ParticipantInstance] {
        throw Self.participantsUnsupported
    }

    /// Stores written before SagaKit ran local writes do not run them.
    public var supportsLocalWrites: Bool { false }

    /// Stores written before SagaKit sealed state copies seal none: participants load the saga.
    public var stateSeal: (any SagaStateSeal)? { nil }

    /// The error for local writes given to a store that does not run them.
    public var localWritesUnsupported: SagaError {
        SagaError(
            .unsupported,
            "this store (\(Self.self)) cannot run local writes in the transaction of a saga's transition",
            recoverySuggestion:
                "use SQLiteSagaStore or PostgresSagaStore with the service's tables in the same database, or write to the service's own database in the handler (with the idempotency key) and report the outcome without `writing:`"
        )
    }

    private static var participantsUnsupported: SagaError {
        SagaError(
            .unsupported, "this store (\(Self.self)) does not keep the participants that run",
            recoverySuggestion:
                "implement recordParticipant(_:), removeParticipant(topology:service:instance:) and participants() in the store"
        )
    }

    private static var definitionsUnsupported: SagaError {
        SagaError(
            .unsupported, "this store (\(Self.self)) does not keep saga definitions",
            recoverySuggestion:
                "implement register(_:), definition(named:version:) and definitions() in the store, or compile the definitions into every process"
        )
    }
}

/// The checks every store makes when a definition is registered: shared by SagaKit's stores.
extension SagaDefinition {
    /// The error for registering `self` where `stored` is kept under the same name and version.
    package func conflict(with stored: SagaDefinition) -> SagaError {
        let differences = stored.differences(from: self)
        return SagaError(
            .invalidDefinition,
            "saga definition '\(name)' version \(version) is registered with different content: "
                + differences.joined(separator: "; ") + " (stored vs registering)",
            recoverySuggestion: "give the changed definition a new version with SagaBuilder.version(_:)"
        )
    }

    /// The error for a definition the store does not keep.
    package static func unknown(named name: String, version: Int) -> SagaError {
        SagaError(
            .unknownDefinition, "no saga definition '\(name)' version \(version) is registered in the store",
            recoverySuggestion: "start a participant or manager that runs this definition, so that it registers it")
    }
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

/// One atomic change of a saga: the new state, the messages it sends, and the handler's writes
/// to the service's own tables.
public struct SagaTransition: Sendable, Hashable {
    /// The new state (its `version` is ignored: the store writes `expectedVersion + 1`).
    public var state: SagaState
    /// The version the state was computed from.
    public var expectedVersion: Int64
    /// Messages to send, recorded in the same transaction.
    public var outbox: [OutboxMessage]
    /// Statements on the service's own tables, run in the same transaction after the
    /// compare-and-swap, in order (see ``LocalWrite``). A lost compare-and-swap runs none of
    /// them; a failing one stores nothing of the transition (`localWriteFailed`). Only stores
    /// whose ``SagaStore/supportsLocalWrites`` is `true` accept them.
    public var localWrites: [LocalWrite]

    /// Creates a transition.
    public init(state: SagaState, expectedVersion: Int64, outbox: [OutboxMessage], localWrites: [LocalWrite] = []) {
        self.state = state
        self.expectedVersion = expectedVersion
        self.outbox = outbox
        self.localWrites = localWrites
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
    /// The body the publish that follows the commit sends instead of ``body``, which a store
    /// does not keep: a message the outbox relay sends later (after a failed publish or a crash)
    /// goes with ``body``. SagaKit puts a command with a sealed copy of its saga's state here,
    /// which a receiver may use instead of loading the saga and does without by loading it. Not
    /// part of the message's `Codable` form.
    public var transientBody: [UInt8]?
    /// When the message was recorded.
    public var createdAt: Date
    /// How many attempts to publish it failed (see ``SagaStore/recordFailedAttempts(_:retryAt:)``);
    /// 0 for a new message. Not written by ``SagaStore/create(_:outbox:)`` or
    /// ``SagaStore/commit(_:)``: the store counts.
    public var publishAttempts: Int

    /// Creates an outbox message.
    public init(
        id: String, sagaID: SagaID, exchange: String, routingKey: String, body: [UInt8], headers: [String: String],
        transientBody: [UInt8]? = nil, createdAt: Date, publishAttempts: Int = 0
    ) {
        self.id = id
        self.sagaID = sagaID
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.headers = headers
        self.transientBody = transientBody
        self.createdAt = createdAt
        self.publishAttempts = publishAttempts
    }

    /// The message as a store keeps it: without ``transientBody``.
    public var stored: OutboxMessage {
        var stored = self
        stored.transientBody = nil
        return stored
    }

    /// The body the publish right after the commit sends: ``transientBody`` when there is one,
    /// otherwise ``body``.
    public var bodyToPublish: [UInt8] { transientBody ?? body }

    private enum CodingKeys: String, CodingKey {
        case id, sagaID, exchange, routingKey, body, headers, createdAt, publishAttempts
    }

    /// Decodes a message; `publishAttempts` may be missing (0).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        sagaID = try container.decode(SagaID.self, forKey: .sagaID)
        exchange = try container.decode(String.self, forKey: .exchange)
        routingKey = try container.decode(String.self, forKey: .routingKey)
        body = try container.decode([UInt8].self, forKey: .body)
        headers = try container.decode([String: String].self, forKey: .headers)
        transientBody = nil
        createdAt = try container.decode(Date.self, forKey: .createdAt)
        publishAttempts = try container.decodeIfPresent(Int.self, forKey: .publishAttempts) ?? 0
    }

    /// The prefix of the SagaKit topology the message belongs to, read from its exchange (see
    /// ``topology(ofExchange:)``). Stores keep it with the message, so that each deployment's
    /// relay reads only its own messages.
    public var topology: String { Self.topology(ofExchange: exchange) }

    /// The topology prefix of a SagaKit exchange name: `<prefix>.commands`, `<prefix>.events`,
    /// `<prefix>.dead-letter` and `<prefix>.delay.<n>s` give `<prefix>`; any other name is its
    /// own topology.
    public static func topology(ofExchange exchange: String) -> String {
        for suffix in [".commands", ".events", ".dead-letter"] where exchange.hasSuffix(suffix) && exchange.count > suffix.count {
            return String(exchange.dropLast(suffix.count))
        }
        // <prefix>.delay.<digits>s
        guard exchange.hasSuffix("s") else { return exchange }
        let withoutS = exchange.dropLast()
        let digits = withoutS.reversed().prefix(while: { $0.isASCII && $0.isNumber }).count
        guard digits > 0 else { return exchange }
        let head = withoutS.dropLast(digits)
        guard head.hasSuffix(".delay."), head.count > ".delay.".count else { return exchange }
        return String(head.dropLast(".delay.".count))
    }
}

/// A filter for ``SagaStore/list(_:)``. Every filter that is set must match (they combine with
/// AND); a filter left `nil` matches every saga.
public struct SagaQuery: Sendable, Hashable {
    /// Only these statuses (all when `nil`; an empty set matches nothing).
    public var statuses: Set<SagaStatus>?
    /// Only this definition name.
    public var name: String?
    /// Only sagas not updated since this time (stalled candidates).
    public var updatedBefore: Date?
    /// Only sagas pinned to this definition version (``SagaState/definitionVersion``, kept in the
    /// context under ``SagaState/definitionVersionKey``; a saga without that key is on version 1).
    public var definitionVersion: Int?
    /// Only sagas whose current command has been attempted at least this many times
    /// (``SagaState/attempt`` ≥ `minimumAttempt`). With `statuses` `[.running, .compensating]`
    /// it finds sagas retrying a step over and over, for example past their pivot with a handler
    /// that always throws.
    public var minimumAttempt: Int?
    /// Only sagas the reaper found stalled and re-sent at least this many times without progress
    /// since (``SagaState/reapAttempts`` ≥ `minimumReapAttempts`). A re-send updates a saga, so
    /// `updatedBefore` alone misses a saga that has been stalled for long but was re-sent a
    /// moment ago; `1` finds those.
    public var minimumReapAttempts: Int?
    /// Only sagas started on this topology (the prefix their context records under
    /// ``SagaState/topologyKey``) and those that record none (started before SagaKit recorded
    /// it): what a deployment sharing its store with others calls its own.
    public var topology: String?
    /// Only sagas with a deadline (``SagaState/deadline``) before this time: how the reaper finds
    /// sagas past their deadline whose command no instance takes (a saga whose command is
    /// delivered is checked then).
    public var deadlineBefore: Date?
    /// Only sagas whose current step (``SagaState/currentStep``, 0-based) is this one: with
    /// `statuses` `[.waiting]`, `name`, `definitionVersion` and `updatedBefore`, how the reaper
    /// finds the sagas whose wait at that step has timed out, and only those.
    public var currentStep: Int?
    /// At most this many.
    public var limit: Int

    /// Creates a query.
    public init(
        statuses: Set<SagaStatus>? = nil, name: String? = nil, updatedBefore: Date? = nil, definitionVersion: Int? = nil,
        minimumAttempt: Int? = nil, minimumReapAttempts: Int? = nil, topology: String? = nil, deadlineBefore: Date? = nil,
        currentStep: Int? = nil, limit: Int = 100
    ) {
        self.statuses = statuses
        self.name = name
        self.updatedBefore = updatedBefore
        self.definitionVersion = definitionVersion
        self.minimumAttempt = minimumAttempt
        self.minimumReapAttempts = minimumReapAttempts
        self.topology = topology
        self.deadlineBefore = deadlineBefore
        self.currentStep = currentStep
        self.limit = limit
    }

    /// Whether `state` matches every filter of the query (the limit aside): the reference for
    /// stores that filter in memory.
    public func matches(_ state: SagaState) -> Bool {
        if let statuses, !statuses.contains(state.status) { return false }
        if let name, state.name != name { return false }
        if let updatedBefore, !(state.updatedAt < updatedBefore) { return false }
        if let definitionVersion, state.definitionVersion != definitionVersion { return false }
        if let minimumAttempt, state.attempt < minimumAttempt { return false }
        if let minimumReapAttempts, state.reapAttempts < minimumReapAttempts { return false }
        if let topology, let recorded = state.topology, recorded != topology { return false }
        if let deadlineBefore, !(state.deadline.map { $0 < deadlineBefore } ?? false) { return false }
        if let currentStep, state.currentStep != currentStep { return false }
        return true
    }
}

extension Dictionary where Key == Int, Value == [SagaStatus: Int] {
    /// The counts of rows a store read (a version, a status, how many sagas): as
    /// ``SagaStore/countByVersion(name:topology:)`` returns them, or, with `unfinishedOnly`, as
    /// ``SagaStore/unfinishedByVersion(name:topology:)`` does.
    package init(versionCounts rows: [(version: Int, status: SagaStatus, count: Int)], unfinishedOnly: Bool) {
        self.init()
        for (version, status, count) in rows {
            if unfinishedOnly {
                addUnfinished(count, version: version, status: status)
            } else {
                add(count, version: version, status: status)
            }
        }
    }

    /// Adds `count` unfinished sagas of `status` to `version`'s counts, creating them with every
    /// unfinished status at 0 for a version not seen yet (``SagaStore/unfinishedByVersion(name:topology:)``).
    package mutating func addUnfinished(_ count: Int, version: Int, status: SagaStatus) {
        let zero = [SagaStatus: Int](uniqueKeysWithValues: SagaStatus.unfinished.map { ($0, 0) })
        self[version, default: zero][status, default: 0] += count
    }

    /// Adds `count` sagas of `status` to `version`'s counts, creating them with every status at 0
    /// for a version not seen yet (``SagaStore/countByVersion(name:topology:)``).
    package mutating func add(_ count: Int, version: Int, status: SagaStatus) {
        self[version, default: [SagaStatus: Int](uniqueKeysWithValues: SagaStatus.allCases.map { ($0, 0) })][status, default: 0] += count
    }
}
