import Foundation
import Logging
import Synchronization

/// What participants, the starter and the reaper share: applying an event to a saga, storing
/// the transition with its outbox atomically, and publishing the outbox.
struct SagaEngine: Sendable {
    let store: any SagaStore
    let bus: any MessageBus
    let definitions: SagaDefinitionRegistry
    let topology: SagaTopology
    /// Batches `markSent` while its `run()` is active (participants, a running manager); marks
    /// at once otherwise.
    var sentMarker: SentMarker?
    /// Takes the commands this participant runs itself instead of publishing them (in-process
    /// steps, ``ParticipantConfiguration/inProcessSteps``); `nil` publishes everything.
    var localSteps: LocalStepDispatch?
    let metrics = SagaMetrics()
    /// Definitions read from the store (versions this process was not compiled with).
    let storedDefinitions = StoredDefinitionCache()
    /// The process's instance (as its presence record names it), written into the history
    /// records its transitions add (``SagaCore/StepRecord/instance``); `nil` writes none.
    var instance: String?

    /// The outcome of ``advance(_:event:logger:)``.
    enum Advance: Sendable {
        case committed(SagaState)
        case ignored(String, SagaState)
        case rejected(String, SagaState)
    }

    /// Applies `event` to the saga and commits the result, reloading and re-deciding when another
    /// instance changed the saga concurrently — but only when the event still applies to the
    /// reloaded saga (``SagaStateMachine/staleness(of:aimedAt:reloaded:)``); otherwise the
    /// outcome is `.ignored`. Publishes the transition's commands and marks them
    /// sent. A publish failure is logged, and the outbox relay sends the messages later (the
    /// state is committed); the publish error is thrown unless `publishFailuresThrow` is `false`
    /// (an operator's action, whose caller must not read an error as "nothing changed").
    ///
    /// `localWrites` (a handler's, see ``LocalWrite``) commit with the transition, or not at all:
    /// a lost compare-and-swap rolls them back, and the re-decided transition carries them again.
    func advance(
        _ sagaID: SagaID, from loaded: SagaState, event: SagaEvent, localWrites: [LocalWrite] = [], logger: Logger,
        maxConflicts: Int = 8, publishFailuresThrow: Bool = true
    ) async throws -> Advance {
        if !localWrites.isEmpty, !store.supportsLocalWrites { throw store.localWritesUnsupported }
        var state = loaded
        var conflicts = 0
        while true {
            let definition = try await definition(of: state)
            let machine = SagaStateMachine(definition: definition, circuits: await circuits(for: definition, logger: logger))
            let now = Date()
            switch machine.apply(event, to: state, now: now) {
            case .ignored(let reason):
                return .ignored(reason, state)
            case .rejected(let reason):
                return .rejected(reason, state)
            case .transition(var next, let commands):
                if let instance {
                    // The records this transition adds say which process recorded them.
                    for index in next.history.indices.dropFirst(state.history.count) { next.history[index].instance = instance }
                }
                // The commands first (the relay and the publish below keep this order), then the
                // lifecycle events of the transition, all committed with it.
                let events =
                    topology.events == .none
                    ? []
                    : SagaLifecycleEvent.events(
                        of: event, from: state, to: next, version: state.version + 1, definition: machine.definition, at: now)
                var committed = next
                committed.version = state.version + 1
                let copy = sealedCopy(of: committed, sending: commands)
                let outbox =
                    try commands.map { try SagaMessages.outbox($0, state: next, topology: topology, now: now, stateCopy: copy) }
                    + SagaMessages.eventOutbox(events, state: next, topology: topology)
                do {
                    let stored = try await store.commit(
                        SagaTransition(state: next, expectedVersion: state.version, outbox: outbox, localWrites: localWrites))
                    metrics.transition(from: state, to: stored, definition: machine.definition)
                    logTransition(from: state, to: stored, commands: commands, logger: logger)
                    CrashPoints.reach(.afterCommitBeforePublish)
                    do {
                        try await publish(outbox, logger: logger)
                    } catch  where !publishFailuresThrow {
                        logger.warning(
                            "the saga changed, but its messages are not published yet: a participant's outbox relay sends them",
                            metadata: ["error": "\(error)"])
                    }
                    return .committed(stored)
                } catch let error as SagaError where error.code == .versionConflict && conflicts < maxConflicts {
                    conflicts += 1
                    logger.debug("version conflict, reloading", metadata: ["saga.version": "\(state.version)"])
                    state = try await store.load(sagaID)
                    // Decide again only when the event still means what it meant for the state
                    // it was aimed at (a reaper's re-send, an operator's retry of step k).
                    if let reason = SagaStateMachine.staleness(of: event, aimedAt: loaded, reloaded: state) {
                        return .ignored(reason, state)
                    }
                }
            }
        }
    }

    /// The largest state copy a command carries (bytes of JSON): a larger saga is loaded.
    static let maxStateCopyBytes = 16 * 1024

    /// The sealed copy of `state` for a command to carry (``SealedState``), or `nil` when
    /// the topology sends none, the store seals none (or not yet), or the copy is too large.
    func sealedCopy(of state: SagaState) -> SealedState? {
        guard topology.stateInCommands != nil, let seal = store.stateSeal, let bytes = try? SagaStateCopy.json(state),
            bytes.count <= Self.maxStateCopyBytes, let sealText = seal.seal(bytes)
        else { return nil }
        return SealedState(json: bytes, seal: sealText)
    }

    /// The copy a transition's commands carry: a single command carries one, the members of a
    /// parallel group none (each would find the others' copies stale).
    func sealedCopy(of state: SagaState, sending commands: [ScheduledCommand]) -> SealedState? {
        commands.count == 1 ? sealedCopy(of: state) : nil
    }

    /// The state a command's body carries, when it may be used instead of loading the saga: a
    /// first delivery (`redelivered` false), a seal that verifies, the command's saga, and a copy
    /// no older (or younger) than the topology's ``SagaTopology/stateInCommands`` by this
    /// process's clock.
    func carriedState(of body: SagaCommandBody, redelivered: Bool, logger: Logger, now: Date = Date()) -> SagaState? {
        guard let maxAge = topology.stateInCommands, let copy = body.stateCopy, !redelivered else { return nil }
        guard let seal = store.stateSeal else { return nil }
        guard seal.verifies(copy.seal, of: copy.json) else {
            logger.warning(
                "the command's copy of its saga's state has no valid seal; loading the saga",
                metadata: ["hint": "copies are sealed with a key in the store: the sender uses another store, or changed the copy"])
            return nil
        }
        let command = body.command
        guard let state = try? SagaStateCopy.state(from: copy.value), state.id == command.sagaID, state.name == command.sagaName
        else { return nil }
        let (seconds, attoseconds) = maxAge.components
        let limit = Double(seconds) + Double(attoseconds) / 1e18
        guard abs(now.timeIntervalSince(state.updatedAt)) <= limit else { return nil }
        return state
    }

    /// The circuit breakers of a definition's steps that have one, from the store (none read for
    /// a definition without breakers). A circuit the store cannot give is taken as closed, with
    /// a warning: the primary action is tried.
    func circuits(for definition: SagaDefinition, logger: Logger) async -> [String: CircuitBreakerState] {
        var circuits: [String: CircuitBreakerState] = [:]
        for index in definition.steps.indices where definition.steps[index].fallback?.breaker != nil {
            let key = definition.circuitKey(ofStep: index)
            do {
                circuits[key] = try await store.circuit(key).state
            } catch {
                logger.warning(
                    "cannot read circuit breaker '\(key)'; taking it as closed", metadata: ["circuit": "\(key)", "error": "\(error)"])
            }
        }
        return circuits
    }

    /// Counts an outcome of step `step`'s primary action in its circuit breaker, if it has one:
    /// a retryable failure or a timeout is a failure; a success or a business refusal (the
    /// dependency answered) closes it. A compare-and-swap on the stored circuit, tried a few
    /// times; the opening and closing of a circuit are logged.
    func recordCircuit(_ definition: SagaDefinition, step: Int, outcome: SagaEvent, logger: Logger) async {
        guard let breaker = definition.steps[step].fallback?.breaker else { return }
        let failed: Bool
        switch outcome {
        case .stepFailed(_, _, _, let retryable, _): failed = retryable
        case .stepTimedOut: failed = true
        case .stepCompleted: failed = false
        default: return
        }
        let key = definition.circuitKey(ofStep: step)
        for _ in 0..<5 {
            do {
                let stored = try await store.circuit(key)
                let now = Date()
                let next = failed ? stored.state.recordingFailure(breaker, at: now) : stored.state.recordingSuccess()
                guard next != stored.state else { return }
                guard try await store.saveCircuit(key, next, expectedVersion: stored.version) else { continue }
                let metadata: Logger.Metadata = ["circuit": "\(key)", "circuit.failures": "\(next.failures)"]
                if let openedAt = next.openedAt, openedAt != stored.state.openedAt {
                    metrics.circuit(definition, step: step, opened: true)
                    let until = openedAt.addingTimeInterval(breaker.openFor.seconds)
                    logger.warning(
                        "circuit breaker '\(key)' opened after \(next.failures) failure(s): step '\(definition.steps[step].name)' runs its fallback '\(definition.steps[step].fallback?.action ?? "")' until \(until.formatted(.iso8601))",
                        metadata: metadata)
                } else if next.openedAt == nil, stored.state.openedAt != nil {
                    metrics.circuit(definition, step: step, opened: false)
                    logger.notice("circuit breaker '\(key)' closed: the primary action answered again", metadata: metadata)
                }
                return
            } catch {
                logger.warning("cannot update circuit breaker '\(key)'", metadata: ["circuit": "\(key)", "error": "\(error)"])
                return
            }
        }
    }

    /// The definition a saga is pinned to (its name and ``SagaState/definitionVersion``): the
    /// local registry's when it has that exact version, otherwise the store's (then cached: a
    /// stored name and version never changes).
    /// - Throws: `unknownDefinition` when neither has it.
    func definition(of state: SagaState) async throws -> SagaDefinition {
        try await definition(named: state.name, version: state.definitionVersion)
    }

    /// The definition with that name and version, from the local registry or else the store.
    func definition(named name: String, version: Int) async throws -> SagaDefinition {
        if let local = definitions.definition(named: name, version: version) { return local }
        if let cached = storedDefinitions.get(name, version) { return cached }
        do {
            let stored = try await store.definition(named: name, version: version)
            storedDefinitions.put(stored)
            return stored
        } catch let error as SagaError where error.code == .unknownDefinition || error.code == .unsupported {
            let known = definitions.all.map { "\($0.name) v\($0.version)" }.joined(separator: ", ")
            throw SagaError(
                .unknownDefinition,
                "no saga definition '\(name)' version \(version) in this process (known: \(known)) nor in the store",
                recoverySuggestion: "run a participant or manager that registers this definition version, so that the store keeps it",
                underlying: error)
        }
    }

    /// Registers every definition of this process in the store, once per engine. A store that
    /// does not keep definitions is tolerated (logged); a conflicting content throws.
    func registerDefinitions(logger: Logger) async throws {
        guard storedDefinitions.claimRegistration() else { return }
        do {
            for definition in definitions.all {
                try await store.register(definition)
            }
            logger.debug("registered the saga definitions in the store", metadata: ["definitions": "\(definitions.all.count)"])
        } catch let error as SagaError where error.code == .unsupported {
            logger.info(
                "the store does not keep saga definitions; other processes must be compiled with them", metadata: ["error": "\(error)"])
        } catch {
            storedDefinitions.releaseRegistration()
            throw error
        }
    }

    /// Publishes outbox messages and marks them sent. The commands and the lifecycle events are
    /// published at the same time (a transition's command and its events cost about one broker
    /// round trip, not one each); the events one after the other, so that a transition's events
    /// arrive in their order (a step's completion before the saga's).
    /// - Throws: the first publish error; messages that were confirmed are still marked sent.
    func publish(_ messages: [OutboxMessage], logger: Logger) async throws {
        try await publish(groups: [messages], logger: logger)
    }

    /// Publishes the outbox messages of several independent transitions (a batch start) and marks
    /// them sent with one store write: every command and every group's events at the same time,
    /// a group's events in their order.
    /// - Throws: the first publish error; messages that were confirmed are still marked sent.
    func publish(groups: [[OutboxMessage]], logger: Logger) async throws {
        var groups = groups
        if let localSteps {
            // Commands this participant runs itself: marked sent once their step is processed.
            groups = groups.map { group in
                group.filter { message in
                    guard localSteps.take(message) else { return true }
                    logger.trace("running the next step in this process", metadata: ["saga.next": "\(message.routingKey)"])
                    return false
                }
            }
        }
        let messages = groups.flatMap { $0 }
        guard !messages.isEmpty else { return }
        let bus = bus
        var failures = [(any Error)?](repeating: nil, count: messages.count)
        if messages.count == 1 {
            do { try await bus.publish(SagaMessages.outgoing(messages[0])) } catch { failures[0] = error }
        } else {
            // Indices into `messages`, group by group.
            var groupRanges: [Range<Int>] = []
            var offset = 0
            for group in groups {
                groupRanges.append(offset..<offset + group.count)
                offset += group.count
            }
            let results = await withTaskGroup(of: [(Int, (any Error)?)].self) { taskGroup in
                for range in groupRanges {
                    let events = range.filter { SagaMessages.isEventsExchange(messages[$0].exchange) }
                    for index in range where !SagaMessages.isEventsExchange(messages[index].exchange) {
                        taskGroup.addTask {
                            do {
                                try await bus.publish(SagaMessages.outgoing(messages[index]))
                                return [(index, nil)]
                            } catch {
                                return [(index, error)]
                            }
                        }
                    }
                    if !events.isEmpty {
                        taskGroup.addTask {
                            var results: [(Int, (any Error)?)] = []
                            for index in events {
                                do {
                                    try await bus.publish(SagaMessages.outgoing(messages[index]))
                                    results.append((index, nil))
                                } catch {
                                    results.append((index, error))
                                }
                            }
                            return results
                        }
                    }
                }
                return await taskGroup.reduce(into: []) { $0 += $1 }
            }
            for (index, error) in results { failures[index] = error }
        }
        var sent: [String] = []
        var failure: (any Error)?
        for (message, error) in zip(messages, failures) {
            if let error {
                failure = failure ?? error
                logPublishFailure(message, error, logger: logger)
            } else {
                sent.append(message.id)
            }
        }
        if !sent.isEmpty {
            if sentMarker?.enqueue(sent) != true {
                try await store.markSent(sent)
            }
        }
        if let failure { throw failure }
    }

    private func logPublishFailure(_ message: OutboxMessage, _ error: any Error, logger: Logger) {
        logger.warning(
            "publish failed; the outbox relay will send it again",
            metadata: ["saga.message": "\(message.routingKey)", "error": "\(error)"]
        )
    }

    private func logTransition(from old: SagaState, to new: SagaState, commands: [ScheduledCommand], logger: Logger) {
        var metadata: Logger.Metadata = ["saga.status": "\(new.status.rawValue)", "saga.version": "\(new.version)"]
        if let next = commands.first {
            metadata["saga.next"] = "\(next.command.command)#\(next.command.attempt)"
            if let delay = next.delay { metadata["saga.delay"] = "\(delay)" }
        }
        if new.status != old.status {
            switch new.status {
            case .needsAttention:
                logger.error("saga needs attention: \(new.failureReason ?? "unknown reason")", metadata: metadata)
            case .compensating:
                logger.notice("saga is compensating: \(new.failureReason ?? "")", metadata: metadata)
            case .completed, .compensated:
                logger.info("saga \(new.status.rawValue)", metadata: metadata)
            case .running:
                logger.info(old.status == .waiting ? "saga received its signal" : "saga is running again", metadata: metadata)
            case .waiting:
                logger.info("saga waits for a signal", metadata: metadata)
            }
        } else if let next = commands.first, next.command.attempt > 1 {
            // Says what follows the handler's failure (logged as a warning by its participant).
            let when = next.delay.map { "in \($0)" } ?? "now"
            logger.info("step '\(next.command.stepName)' will be retried \(when) (attempt \(next.command.attempt))", metadata: metadata)
        } else {
            logger.debug("saga advanced", metadata: metadata)
        }
    }
}

/// The definitions an engine read from the store, by name and version, and whether the
/// process's own definitions were registered.
final class StoredDefinitionCache: Sendable {
    private struct State {
        var definitions: [String: [Int: SagaDefinition]] = [:]
        var registered = false
    }

    private let state = Mutex(State())

    func get(_ name: String, _ version: Int) -> SagaDefinition? {
        state.withLock { $0.definitions[name]?[version] }
    }

    func put(_ definition: SagaDefinition) {
        state.withLock { $0.definitions[definition.name, default: [:]][definition.version] = definition }
    }

    /// `true` for the first caller (until released).
    func claimRegistration() -> Bool {
        state.withLock { state in
            defer { state.registered = true }
            return !state.registered
        }
    }

    func releaseRegistration() { state.withLock { $0.registered = false } }
}

extension Logger {
    /// A copy of this logger with the saga's metadata.
    func with(saga id: SagaID, name: String) -> Logger {
        var copy = self
        copy.addMetadata(["saga.id": "\(id)", "saga.name": "\(name)"])
        return copy
    }

    /// Adds metadata entries with one write to the handler: a handler that renders its metadata
    /// whenever it changes (swift-log's `StreamLogHandler` does) renders it once, not once per
    /// key. That showed in profiles, where every delivery set six keys.
    mutating func addMetadata(_ entries: Logger.Metadata) {
        handler.metadata.merge(entries) { _, new in new }
    }
}
