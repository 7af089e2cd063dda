public import Foundation
import Synchronization

/// A ``SagaStore`` that keeps everything in memory: for unit tests (yours and SagaKit's) and for
/// single-process experiments.
///
/// It follows the same contract as the SQL stores and passes the same conformance suite: every
/// method runs under one lock, so a commit and its outbox messages are recorded atomically, and
/// two concurrent claimers never receive the same saga. Nothing survives the process.
///
/// It has no database to run a handler's ``LocalWrite``s in: a transition with local writes is
/// refused with `unsupported` (``SagaStore/supportsLocalWrites`` is `false`). Test such handlers
/// with `SQLiteSagaStore` on a temporary file.
///
/// ```swift
/// let store = InMemorySagaStore()
/// let created = try await store.create(state, outbox: [])
/// ```
public final class InMemorySagaStore: SagaStore {
    private struct Row {
        var state: SagaState
        var leaseOwner: String?
        var leaseUntil: Date?
    }

    private struct OutboxRow {
        var message: OutboxMessage
        /// Insertion order, the tie-breaker for messages created at the same instant.
        var sequence: Int
        var sent: Bool
        /// When the message is due: its creation, or the retry time after a failed attempt.
        var dueAt: Date
    }

    private struct Storage {
        var sagas: [SagaID: Row] = [:]
        var outbox: [String: OutboxRow] = [:]
        var nextSequence = 0
        var definitions: [String: (definition: SagaDefinition, hash: String, registeredAt: Date)] = [:]
        var circuits: [String: StoredCircuit] = [:]
        var participants: [String: ParticipantInstance] = [:]

        /// Records messages; a message whose id is already recorded is ignored (as in the SQL
        /// stores), since it is the same message recorded again.
        mutating func record(_ messages: [OutboxMessage]) {
            for message in messages where outbox[message.id] == nil {
                var stored = message.stored
                stored.publishAttempts = 0
                outbox[message.id] = OutboxRow(message: stored, sequence: nextSequence, sent: false, dueAt: message.createdAt)
                nextSequence += 1
            }
        }
    }

    private let storage = Mutex(Storage())

    /// Creates an empty store.
    /// - Parameter stateSeal: what vouches for the state copies commands carry
    ///   (``SagaStore/stateSeal``); `nil` (the default): participants load every saga.
    public init(stateSeal: (any SagaStateSeal)? = nil) {
        self.stateSeal = stateSeal
    }

    /// See ``init(stateSeal:)``.
    public let stateSeal: (any SagaStateSeal)?

    /// Creates a saga (version 1) and records its outbox messages, unless a saga with that id
    /// exists: then nothing is written and the stored saga is returned.
    public func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation {
        storage.withLock { storage in
            if let existing = storage.sagas[state.id] {
                return .existing(existing.state)
            }
            var stored = state
            stored.version = 1
            storage.sagas[state.id] = Row(state: stored)
            storage.record(outbox)
            return .created(stored)
        }
    }

    /// Loads a saga.
    /// - Throws: ``SagaError`` `unknownSaga`.
    public func load(_ id: SagaID) async throws -> SagaState {
        let row = storage.withLock { $0.sagas[id] }
        guard let row else { throw SagaError.unknownSaga(id) }
        return row.state
    }

    /// Replaces the saga's state when its version is still `transition.expectedVersion` and
    /// records the transition's outbox messages. Ends any reaper lease on the saga.
    @discardableResult
    public func commit(_ transition: SagaTransition) async throws -> SagaState {
        // No database to run them in: refused, never dropped (the transition is not stored).
        guard transition.localWrites.isEmpty else { throw localWritesUnsupported }
        let id = transition.state.id
        let result: Result<SagaState, SagaError> = storage.withLock { storage in
            guard let row = storage.sagas[id] else { return .failure(.unknownSaga(id)) }
            guard row.state.version == transition.expectedVersion else {
                return .failure(
                    .versionConflict(
                        sagaID: id, expected: transition.expectedVersion, actual: row.state.version)
                )
            }
            var stored = transition.state
            stored.version = transition.expectedVersion + 1
            storage.sagas[id] = Row(state: stored)
            storage.record(transition.outbox)
            return .success(stored)
        }
        return try result.get()
    }

    /// Sagas matching the query, most recently updated first (ties by id).
    public func list(_ query: SagaQuery) async throws -> [SagaState] {
        let all = storage.withLock { storage in Array(storage.sagas.values.map(\.state)) }
        let matching = all.filter(query.matches)
        let sorted = matching.sorted { lhs, rhs in
            lhs.updatedAt != rhs.updatedAt ? lhs.updatedAt > rhs.updatedAt : lhs.id < rhs.id
        }
        return Array(sorted.prefix(max(0, query.limit)))
    }

    /// The number of sagas in each status; every status is present, with 0 when none.
    public func countByStatus(name: String?) async throws -> [SagaStatus: Int] {
        try await countByStatus(name: name, topology: nil)
    }

    /// The number of sagas in each status, for one name and topology when given (see
    /// ``SagaQuery/topology``); every status is present, with 0 when none.
    public func countByStatus(name: String?, topology: String?) async throws -> [SagaStatus: Int] {
        let query = SagaQuery(name: name, topology: topology)
        return storage.withLock { storage in
            var counts = Dictionary(uniqueKeysWithValues: SagaStatus.allCases.map { ($0, 0) })
            for row in storage.sagas.values where query.matches(row.state) {
                counts[row.state.status, default: 0] += 1
            }
            return counts
        }
    }

    /// The number of sagas of `name` on each definition version, by status (see
    /// ``SagaStore/countByVersion(name:topology:)``).
    public func countByVersion(name: String, topology: String?) async throws -> [Int: [SagaStatus: Int]] {
        let query = SagaQuery(name: name, topology: topology)
        return storage.withLock { storage in
            var counts: [Int: [SagaStatus: Int]] = [:]
            for row in storage.sagas.values where query.matches(row.state) {
                counts.add(1, version: row.state.definitionVersion, status: row.state.status)
            }
            return counts
        }
    }

    /// Deletes finished sagas last updated before the time, oldest first, keeping those with an
    /// unsent outbox message.
    public func purgeFinished(before finishedBefore: Date, topology: String?, limit: Int) async throws -> Int {
        let query = SagaQuery(statuses: [.completed, .compensated], updatedBefore: finishedBefore, topology: topology)
        return storage.withLock { storage in
            let unsent = Set(storage.outbox.values.filter { !$0.sent }.map(\.message.sagaID))
            let doomed = storage.sagas.values.map(\.state)
                .filter { query.matches($0) && !unsent.contains($0.id) }
                .sorted { ($0.updatedAt, $0.id) < ($1.updatedAt, $1.id) }
                .prefix(max(0, limit))
            for state in doomed { storage.sagas[state.id] = nil }
            return doomed.count
        }
    }

    /// Claims up to `limit` stalled sagas, oldest update first. A valid lease excludes everyone,
    /// its owner too, so that two reapers that happen to share a name still never receive the
    /// same saga, and a reaper that claims in a loop does not get its own sagas back.
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int
    ) async throws -> [SagaState] {
        claim(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit, topology: nil)
    }

    /// Claims only the sagas of `topology` and those that name none.
    public func claimStalled(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String
    ) async throws -> [SagaState] {
        claim(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit, topology: topology)
    }

    private func claim(
        updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int, topology: String?
    ) -> [SagaState] {
        let until = now.addingTimeInterval(seconds(lease))
        return storage.withLock { storage in
            let candidates = storage.sagas.values.filter { row in
                (row.state.status == .running || row.state.status == .compensating) && row.state.updatedAt < updatedBefore
                    && (row.leaseUntil.map { $0 <= now } ?? true)
                    && (topology == nil || row.state.topology == nil || row.state.topology == topology)
            }
            let chosen = candidates.sorted { lhs, rhs in
                lhs.state.updatedAt != rhs.state.updatedAt
                    ? lhs.state.updatedAt < rhs.state.updatedAt : lhs.state.id < rhs.state.id
            }
            .prefix(max(0, limit))
            for row in chosen {
                storage.sagas[row.state.id]?.leaseOwner = owner
                storage.sagas[row.state.id]?.leaseUntil = until
            }
            return chosen.map(\.state)
        }
    }

    /// Unsent messages of the topology, created before `createdBefore` and due at `now`, in the
    /// order they became due (ties by insertion order).
    public func pendingOutbox(topology: String, createdBefore: Date, now: Date, limit: Int) async throws -> [OutboxMessage] {
        storage.withLock { storage in
            storage.outbox.values
                .filter {
                    !$0.sent && $0.message.topology == topology && $0.message.createdAt < createdBefore && $0.dueAt <= now
                }
                .sorted { lhs, rhs in lhs.dueAt != rhs.dueAt ? lhs.dueAt < rhs.dueAt : lhs.sequence < rhs.sequence }
                .prefix(max(0, limit))
                .map(\.message)
        }
    }

    /// The due messages of `topology`, each not due again before `now + lease`.
    public func claimPendingOutbox(topology: String, createdBefore: Date, now: Date, lease: Duration, limit: Int) async throws
        -> [OutboxMessage]
    {
        storage.withLock { storage in
            let claimed = storage.outbox.values
                .filter {
                    !$0.sent && $0.message.topology == topology && $0.message.createdAt < createdBefore && $0.dueAt <= now
                }
                .sorted { lhs, rhs in lhs.dueAt != rhs.dueAt ? lhs.dueAt < rhs.dueAt : lhs.sequence < rhs.sequence }
                .prefix(max(0, limit))
                .sorted { $0.sequence < $1.sequence }
            let until = now.addingTimeInterval(lease.seconds)
            for entry in claimed { storage.outbox[entry.message.id]?.dueAt = until }
            return claimed.map(\.message)
        }
    }

    /// One saga's outbox messages not yet marked sent, oldest first.
    public func pendingOutbox(of sagaID: SagaID) async throws -> [OutboxMessage] {
        storage.withLock { storage in
            storage.outbox.values.filter { !$0.sent && $0.message.sagaID == sagaID }.sorted { $0.sequence < $1.sequence }.map(\.message)
        }
    }

    /// Unsent messages of every topology created before `createdBefore`, oldest first.
    public func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage] {
        storage.withLock { storage in
            storage.outbox.values
                .filter { !$0.sent && $0.message.createdAt < createdBefore }
                .sorted { lhs, rhs in
                    lhs.message.createdAt != rhs.message.createdAt
                        ? lhs.message.createdAt < rhs.message.createdAt : lhs.sequence < rhs.sequence
                }
                .prefix(max(0, limit))
                .map(\.message)
        }
    }

    /// Counts a failed publish of each message and defers it until `retryAt`; unknown or sent
    /// ids are ignored.
    public func recordFailedAttempts(_ ids: [String], retryAt: Date) async throws {
        storage.withLock { storage in
            for id in ids where storage.outbox[id]?.sent == false {
                storage.outbox[id]?.message.publishAttempts += 1
                storage.outbox[id]?.dueAt = retryAt
            }
        }
    }

    /// Marks messages as sent; unknown ids are ignored.
    public func markSent(_ ids: [String]) async throws {
        storage.withLock { storage in
            for id in ids { storage.outbox[id]?.sent = true }
        }
    }
}

extension InMemorySagaStore {
    /// Keeps the definition; identical content again is a no-op.
    /// - Throws: `invalidDefinition` listing the differences when the same name and version
    ///   holds other content.
    public func register(_ definition: SagaDefinition) async throws {
        let key = "\(definition.name)\u{0}\(definition.version)"
        let hash = definition.contentHash
        let conflict: SagaError? = storage.withLock { storage in
            if let stored = storage.definitions[key] {
                return stored.hash == hash ? nil : definition.conflict(with: stored.definition)
            }
            storage.definitions[key] = (definition, hash, Date())
            return nil
        }
        if let conflict { throw conflict }
    }

    /// The definition registered under that name and version.
    /// - Throws: `unknownDefinition`.
    public func definition(named name: String, version: Int) async throws -> SagaDefinition {
        guard let stored = storage.withLock({ $0.definitions["\(name)\u{0}\(version)"] }) else {
            throw SagaDefinition.unknown(named: name, version: version)
        }
        return stored.definition
    }

    /// Every registered definition, by name then version.
    public func definitions() async throws -> [StoredDefinitionInfo] {
        storage.withLock { storage in
            storage.definitions.values
                .map {
                    StoredDefinitionInfo(
                        name: $0.definition.name, version: $0.definition.version, hash: $0.hash, registeredAt: $0.registeredAt)
                }
                .sorted { ($0.name, $0.version) < ($1.name, $1.version) }
        }
    }

    /// The circuit breaker kept under `key` (closed, version 0, when none is).
    public func circuit(_ key: String) async throws -> StoredCircuit {
        storage.withLock { $0.circuits[key] ?? StoredCircuit(state: .closed, version: 0) }
    }

    /// Saves a circuit breaker's state if its version is still `expectedVersion`.
    public func saveCircuit(_ key: String, _ state: CircuitBreakerState, expectedVersion: Int64) async throws -> Bool {
        storage.withLock { storage in
            guard (storage.circuits[key]?.version ?? 0) == expectedVersion else { return false }
            storage.circuits[key] = StoredCircuit(state: state, version: expectedVersion + 1)
            return true
        }
    }

    /// Records a participant process (and removes those not refreshed for the retention).
    public func recordParticipant(_ participant: ParticipantInstance) async throws {
        storage.withLock { storage in
            storage.participants[Self.participantKey(participant.topology, participant.service, participant.instance)] = participant
            let oldest = participant.lastSeen.addingTimeInterval(-ParticipantInstance.retention.seconds)
            storage.participants = storage.participants.filter { $0.value.lastSeen >= oldest }
        }
    }

    /// Removes a participant process's record.
    public func removeParticipant(topology: String, service: String, instance: String) async throws {
        _ = storage.withLock { $0.participants.removeValue(forKey: Self.participantKey(topology, service, instance)) }
    }

    /// Every recorded participant process, by topology, service and instance.
    public func participants() async throws -> [ParticipantInstance] {
        storage.withLock { storage in
            storage.participants.values.sorted { ($0.topology, $0.service, $0.instance) < ($1.topology, $1.service, $1.instance) }
        }
    }

    private static func participantKey(_ topology: String, _ service: String, _ instance: String) -> String {
        "\(topology)\u{0}\(service)\u{0}\(instance)"
    }
}

/// A duration in seconds, as a `TimeInterval`.
private func seconds(_ duration: Duration) -> TimeInterval {
    let (seconds, attoseconds) = duration.components
    return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
}
