public import Foundation
public import Participant

/// Several services' handlers driving whole sagas in one process, deterministically: no broker,
/// no threads racing, no sleeps. Commands are delivered one at a time in the order the runtime
/// would publish them; retry delays advance a virtual clock instead of waiting.
///
/// Every decision (next step, retry, compensation order, pivot) is made by SagaKit's own state
/// machine from your real definitions, and handlers see the same ``SagaContext`` as in
/// production.
///
/// ```swift
/// let system = try SagaTestSystem(definitions: [TripSaga.definition])
/// try await system.register(service: "flight", handlers: flightHandlers)
/// try await system.register(service: "hotel", handlers: hotelHandlers)
/// try await system.register(service: "payment", handlers: decliningPayment)
/// let final = try await system.run("trip", payload: ["tripId": "t-1"])
/// #expect(final.status == .compensated)
/// #expect(await system.handled.map(\.command) == ["flight.book", "hotel.book", "payment.charge", "hotel.cancel", "flight.cancel"])
/// ```
///
/// With ``Deliveries/twice`` every command is handed to its handler twice before the outcome
/// is recorded — what a redelivery after a crash looks like — so a whole saga checks that your
/// handlers are idempotent.
public actor SagaTestSystem {
    /// How often each command reaches its handler.
    public enum Deliveries: Sendable {
        /// Once.
        case once
        /// Twice with the same context (same idempotency key); the second run's report counts,
        /// as when the first run's commit was lost.
        case twice
    }

    /// One handler run.
    public struct Handled: Sendable {
        /// The service that handled it.
        public var service: String
        /// The command.
        public var command: String
        /// Which saga.
        public var sagaID: SagaID
        /// The attempt.
        public var attempt: Int
        /// What the handler reported (or the runtime recorded for it).
        public var report: SagaHandlerReport
        /// The local writes reported with the outcome (``LocalWrite``: the statements a SQL
        /// store would run in the outcome's transaction), whether or not a
        /// ``LocalWriteRunner`` ran them.
        public var localWrites: [LocalWrite]
        /// The virtual time it ran at.
        public var at: Date
    }

    /// Runs the local writes one outcome reports (``LocalWrite``) against the test's own
    /// database, as a SQL store runs them in the transaction that records the outcome: all of
    /// them or none. Throw ``SagaCore/SagaError/Code/localWriteFailed`` for a write that fails (a
    /// constraint, a row count other than its expectation): as in production, the outcome is not
    /// recorded and the handler's report call throws it. Any other error ends the delivery (and
    /// ``runUntilIdle(maxDeliveries:)``) with it.
    public typealias LocalWriteRunner = @Sendable (_ sagaID: SagaID, _ writes: [LocalWrite]) async throws -> Void

    private let definitions: SagaDefinitionRegistry
    private let deliveries: Deliveries
    private let localWriteRunner: LocalWriteRunner?
    private var handlers: [String: (service: String, handler: SagaHandler)] = [:]
    private var sagas: [SagaID: SagaState] = [:]
    private var queue: [(due: Date, sequence: Int, command: SagaCommand)] = []
    private var sequence = 0
    private var nextSagaNumber = 1
    /// The virtual clock.
    public private(set) var now: Date
    /// Every handler run, in order.
    public private(set) var handled: [Handled] = []

    /// Creates a system for the definitions.
    /// - Parameters:
    ///   - definitions: the sagas the handlers take part in.
    ///   - deliveries: how often each command reaches its handler.
    ///   - start: the virtual clock's first instant.
    ///   - localWrites: runs the handlers' local writes against the test's database; without it
    ///     they are only recorded (``Handled/localWrites``) and every outcome counts.
    /// - Throws: `invalidDefinition` when two definitions share a name and a version (several
    ///   versions of one saga are welcome: ``start(_:payload:id:version:)`` picks one).
    public init(
        definitions: [SagaDefinition], deliveries: Deliveries = .once, start: Date = Date(timeIntervalSince1970: 1_700_000_000),
        localWrites: LocalWriteRunner? = nil
    ) throws {
        self.definitions = try SagaDefinitionRegistry(definitions)
        self.deliveries = deliveries
        self.now = start
        self.localWriteRunner = localWrites
    }

    /// Adds a service's handlers.
    /// - Throws: `duplicateHandler` when another service handles one of the commands;
    ///   `invalidConfiguration` when a command belongs to no definition.
    public func register(service: String, handlers registry: SagaHandlerRegistry) throws {
        try registry.validate(against: definitions)
        for command in registry.commands {
            if let existing = handlers[command] {
                throw SagaError(
                    .duplicateHandler, "command '\(command)' is handled by both '\(existing.service)' and '\(service)'",
                    recoverySuggestion: "one service handles each command")
            }
            if let handler = registry.handler(for: command) { handlers[command] = (service, handler) }
        }
    }

    /// Starts a saga (it runs when you call ``runUntilIdle(maxDeliveries:)``) on `version` of the
    /// definition, or on its newest version, as `SagaManager` does. Starting one on an older
    /// version and running it on your newer handlers is what a rolling upgrade does
    /// (`Docs/Upgrades.md`).
    /// - Throws: `unknownDefinition` when no definition has that name (and version).
    @discardableResult
    public func start(_ name: String, payload: JSONObject, id: SagaID? = nil, version: Int? = nil) throws -> SagaID {
        let definition = try self.definition(named: name, version: version)
        let id = id ?? "saga-\(nextSagaNumber)"
        nextSagaNumber += 1
        guard sagas[id] == nil else { return id }
        // The saga is pinned to its version, as a manager pins it.
        let start = SagaStateMachine(definition: definition).begin(
            id: id, payload: payload, context: [SagaState.definitionVersionKey: String(definition.version)], now: now)
        sagas[id] = start.state
        enqueue(start.commands)
        return id
    }

    /// The definition named `name` at `version`, or its newest.
    private func definition(named name: String, version: Int?) throws -> SagaDefinition {
        guard let version else { return try definitions.definition(named: name) }
        guard let definition = definitions.definition(named: name, version: version) else {
            throw SagaError(
                .unknownDefinition, "no version \(version) of saga definition '\(name)'",
                recoverySuggestion: "pass that version to SagaTestSystem(definitions:)")
        }
        return definition
    }

    /// The definition a saga is pinned to.
    private func definition(of state: SagaState) throws -> SagaDefinition {
        try definition(named: state.name, version: state.definitionVersion)
    }

    /// Delivers the signal `name` to a saga, as `SagaManager.signal(_:name:payload:by:)` does: the
    /// wait step that waits for it completes and the saga's next commands are queued (deliver
    /// them with ``runUntilIdle(maxDeliveries:)``); a signal for a wait ahead is kept, a late one
    /// is ignored with the reason.
    /// - Throws: `unknownSaga`; `invalidState` when the definition waits for no such signal.
    @discardableResult
    public func signal(_ id: SagaID, name: String, payload: JSONObject = [:], by sender: String? = nil) throws -> SagaSignalResult {
        let state = try state(of: id)
        let machine = SagaStateMachine(definition: try definition(of: state))
        switch machine.apply(.signalReceived(name: name, payload: payload, by: sender), to: state, now: now) {
        case .transition(var next, let commands):
            next.version = state.version + 1
            sagas[id] = next
            enqueue(commands)
            return .delivered(next)
        case .ignored(let reason):
            return .ignored(reason, state)
        case .rejected(let reason):
            throw SagaError(.invalidState, reason)
        }
    }

    /// An operator's retry, as `SagaManager.retry(_:by:reason:deadline:)` does: the current
    /// command is queued again as a new attempt (also for a saga that needs attention), with the
    /// saga's deadline moved or removed when `deadline` says so.
    /// - Throws: `unknownSaga`; `invalidState` when the saga has finished.
    @discardableResult
    public func retry(
        _ id: SagaID, by actor: String = "operator", reason: String? = nil, deadline: SagaDeadlineChange = .keep
    ) throws -> SagaState {
        try operate(id, .retryRequested(by: actor, reason: reason, deadline: deadline))
    }

    /// An operator's compensation, as `SagaManager.compensate(_:by:reason:)` does (only before the
    /// pivot).
    /// - Throws: `unknownSaga`; `invalidState` when the saga is past its pivot or finished.
    @discardableResult
    public func compensate(_ id: SagaID, by actor: String = "operator", reason: String = "compensation requested by an operator")
        throws -> SagaState
    {
        try operate(id, .compensationRequested(by: actor, reason: reason))
    }

    /// An operator's stop, as `SagaManager.stop(_:by:reason:)` does: the saga needs attention
    /// where it is, and its commands still queued are ignored.
    @discardableResult
    public func stop(_ id: SagaID, by actor: String = "operator", reason: String) throws -> SagaState {
        try operate(id, .stopRequested(by: actor, reason: reason))
    }

    /// An operator's resolution by hand, as `SagaManager.resolve(_:by:reason:patch:)` does: what a
    /// saga that needs attention stopped at was done by hand, and it goes on.
    /// - Throws: `unknownSaga`; `invalidState` when the saga does not need attention.
    @discardableResult
    public func resolve(_ id: SagaID, by actor: String = "operator", reason: String, patch: JSONObject = [:]) throws -> SagaState {
        try operate(id, .resolvedByOperator(by: actor, reason: reason, patch: patch))
    }

    private func operate(_ id: SagaID, _ event: SagaEvent) throws -> SagaState {
        let state = try state(of: id)
        let machine = SagaStateMachine(definition: try definition(of: state))
        switch machine.apply(event, to: state, now: now) {
        case .transition(var next, let commands):
            next.version = state.version + 1
            sagas[id] = next
            enqueue(commands)
            return next
        case .ignored(let reason), .rejected(let reason):
            throw SagaError(.invalidState, reason)
        }
    }

    /// Moves the virtual clock forward by `duration` and does what the reaper does then: ends the
    /// waits whose timeout passed (their sagas are compensated or go on, as each wait declares)
    /// and compensates the sagas past their deadline (``SagaBuilder/deadline(_:)``, before the
    /// pivot). Deliver the resulting commands with ``runUntilIdle(maxDeliveries:)``. (A command
    /// delivered after its saga's deadline compensates the saga too, as a participant does.)
    public func advanceClock(by duration: Duration) throws {
        now = now.addingTimeInterval(duration.seconds)
        for (id, state) in sagas.sorted(by: { $0.key < $1.key }) where state.status == .running || state.status == .waiting {
            let event: SagaEvent
            if let deadline = state.deadline, deadline < now {
                event = .deadlinePassed
            } else if state.status == .waiting {
                event = .waitExpired
            } else {
                continue
            }
            let machine = SagaStateMachine(definition: try definition(of: state))
            if case .transition(var next, let commands) = machine.apply(event, to: state, now: now) {
                next.version = state.version + 1
                sagas[id] = next
                enqueue(commands)
            }
        }
    }

    /// Starts a saga and delivers commands until no saga has anything left to do; returns the
    /// saga's final state.
    public func run(_ name: String, payload: JSONObject, id: SagaID? = nil) async throws -> SagaState {
        let id = try start(name, payload: payload, id: id)
        try await runUntilIdle()
        return try state(of: id)
    }

    /// Delivers commands, earliest due first, until none is left.
    /// - Throws: `invalidState` when a command has no handler (a service is missing), or after
    ///   `maxDeliveries` (a saga that never ends, e.g. a pivot retried forever).
    public func runUntilIdle(maxDeliveries: Int = 10_000) async throws {
        var delivered = 0
        while let index = queue.indices.min(by: { (queue[$0].due, queue[$0].sequence) < (queue[$1].due, queue[$1].sequence) }) {
            let (due, _, command) = queue.remove(at: index)
            now = max(now, due)
            delivered += 1
            guard delivered <= maxDeliveries else {
                throw SagaError(
                    .invalidState, "sagas still running after \(maxDeliveries) deliveries (last: \(command.command) of \(command.sagaID))",
                    recoverySuggestion: "a step may be retried forever: check handlers past the pivot")
            }
            try await deliver(command)
        }
    }

    /// A saga's current state.
    public func state(of id: SagaID) throws -> SagaState {
        guard let state = sagas[id] else { throw SagaError.unknownSaga(id) }
        return state
    }

    /// Commands waiting to be delivered, earliest first.
    public var pending: [SagaCommand] {
        queue.sorted { ($0.due, $0.sequence) < ($1.due, $1.sequence) }.map(\.command)
    }

    private func enqueue(_ commands: [ScheduledCommand]) {
        for scheduled in commands {
            let delay = scheduled.delay.map { $0.seconds } ?? 0
            queue.append((now.addingTimeInterval(delay), sequence, scheduled.command))
            sequence += 1
        }
    }

    private func deliver(_ command: SagaCommand) async throws {
        guard let state = sagas[command.sagaID] else { return }
        // Stale and duplicate commands are ignored, as a participant does.
        let definition = try definition(of: state)
        let machine = SagaStateMachine(definition: definition)
        guard machine.isCurrent(command, in: state) else { return }
        // Past the saga's deadline (before the pivot) the action is not run: the saga compensates.
        if command.phase == .action, let deadline = state.deadline, deadline < now, !definition.isForwardOnly(command.step) {
            if case .transition(var next, let commands) = machine.apply(.deadlinePassed, to: state, now: now) {
                next.version = state.version + 1
                sagas[command.sagaID] = next
                enqueue(commands)
            }
            return
        }
        guard let (service, handler) = handlers[command.command] else {
            throw SagaError(
                .invalidState, "no registered service handles '\(command.command)' (saga \(command.sagaID))",
                recoverySuggestion: "register the service that handles it with register(service:handlers:)")
        }
        let tester = SagaStepTester(definitions: definitions, now: now)
        // With `.twice`, the first run's writes roll back with its lost commit: the runner sees
        // only the run that counts.
        if case .twice = deliveries {
            _ = try await tester.execute(handler, definition: definition, state: state, command: command, now: now)
        }
        let run = try await tester.execute(
            handler, definition: definition, state: state, command: command, now: now, localWrites: localWriteRunner)
        handled.append(
            Handled(
                service: service, command: command.command, sagaID: command.sagaID, attempt: command.attempt, report: run.report,
                localWrites: run.localWrites, at: now))
        var next = run.after
        next.version = state.version + 1
        sagas[command.sagaID] = next
        enqueue(run.scheduled)
    }
}

extension SagaStepTester {
    init(definitions: SagaDefinitionRegistry, now: Date) {
        self.definitions = definitions
        self.now = now
    }
}
