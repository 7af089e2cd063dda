import Foundation
import Synchronization
import Tracing

/// Starts sagas and follows them.
///
/// ```swift
/// let manager = SagaManager(runtime: runtime)
/// // Run it next to the bus (a ServiceGroup, or SagaApplication.run(store:services:)):
/// // it then hears the sagas' lifecycle events, and outcome(of:) returns as soon as a saga ends.
/// let id = try await manager.start("order", payload: ["orderId": "o-42", "amount": 30])
/// let final = try await manager.outcome(of: id, timeout: .seconds(30))
/// ```
///
/// As a `Service`, ``run()`` consumes the lifecycle events of the manager's definitions from a
/// private queue and wakes ``outcome(of:timeout:)`` and ``updates(of:)`` when an event of their
/// saga arrives. They read the store once when they begin (`outcome(of:)` not for a saga this
/// manager started while listening, whose end it is bound to hear), on each event of their saga,
/// and every ``fallbackInterval`` in case an event was missed (a reconnect). A manager that is not run,
/// or a topology that publishes no events, makes them read the store every ``fallbackInterval``
/// instead.
public struct SagaManager: Service {
    let engine: SagaEngine
    let logger: Logger
    private let declared = DeclaredOnce()
    /// Whether the first start has compared this process's definitions with the store's.
    private let newerVersionsChecked = ClaimedOnce()
    let hub = SagaEventHub()
    /// How often a waiting ``outcome(of:timeout:)`` or ``updates(of:)`` reads the store when no
    /// event wakes it (default 1 s while ``run()`` receives events; 50 ms when the manager is not
    /// run).
    public var fallbackInterval: Duration?

    /// Creates a manager.
    public init(
        definitions: SagaDefinitionRegistry, bus: any MessageBus, store: any SagaStore, topology: SagaTopology = SagaTopology(),
        logger: Logger
    ) {
        var engine = SagaEngine(store: store, bus: bus, definitions: definitions, topology: topology)
        engine.sentMarker = SentMarker(store: store, interval: SentMarker.defaultInterval, logger: logger)
        self.engine = engine
        self.logger = logger
    }

    /// Creates a manager from the values the process's components share.
    public init(runtime: SagaRuntime) {
        self.init(
            definitions: runtime.definitions, bus: runtime.bus, store: runtime.store, topology: runtime.topology, logger: runtime.logger)
    }

    /// The store the manager reads and writes.
    public var store: any SagaStore { engine.store }

    /// Receives the lifecycle events of this manager's definitions until cancelled or gracefully
    /// shut down, and wakes the calls waiting for those sagas. While it runs, the outbox messages
    /// that ``start(_:payload:id:context:)`` published are marked sent in batches, off the start's
    /// path (a manager that is not run marks them before `start` returns).
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            if let marker = engine.sentMarker { group.addTask { await marker.run() } }
            let hub = hub
            group.addTask { await hub.runWakeTicks() }
            try await receiveEvents()
            group.cancelAll()
        }
    }

    private func receiveEvents() async throws {
        let topology = engine.topology
        guard topology.events != .none else {
            logger.info("saga lifecycle events are off (topology events = none); waiting for sagas reads the store")
            try await gracefulSleepForever()
            return
        }
        // Terminal events only, unless every event is published (then updates(of:) sees each step).
        let kinds =
            topology.events == .all ? ["#"] : [SagaLifecycleEvent.Kind]([.completed, .compensated, .needsAttention]).map(\.rawValue)
        let keys = engine.definitions.all.map(\.name).uniqued().flatMap { name in kinds.map { "\(name).\($0)" } }
        let events = try await SagaEventSubscription.subscribe(bus: engine.bus, topology: topology, bindingKeys: keys, logger: logger)
        declared.mark()
        hub.setListening(true)
        defer { hub.setListening(false) }
        logger.debug("listening for saga lifecycle events", metadata: ["queue": "\(events.queue)"])
        try await cancelWhenGracefulShutdown {
            for try await event in events {
                hub.deliver(event)
            }
        }
    }

    /// Declares the exchanges and queues the manager publishes to (participants declare them too;
    /// declaring twice is harmless). ``start(_:payload:id:context:)`` calls it before the first
    /// saga it stores, so calling it yourself is optional.
    public func declareTopology() async throws {
        try await engine.bus.declare(engine.topology.shared)
        declared.mark()
    }

    /// Starts a saga: stores it with its first command, publishes the command and waits for the
    /// broker's confirm.
    ///
    /// Idempotent when `id` is given: starting an existing saga id again stores and sends nothing
    /// and returns the id (``startIfAbsent(_:payload:id:context:)`` tells the two apart).
    ///
    /// Once this returns, the saga is durably stored and will run: when the first command could
    /// not be published (the broker went away, no participant has bound its queue yet), the
    /// failure is logged and the outbox relay of any participant sends it later.
    /// - Parameters:
    ///   - name: the saga definition's name.
    ///   - payload: the initial payload (a JSON object).
    ///   - id: the saga id; a new UUID when `nil`.
    ///   - context: trace and correlation ids to carry along.
    /// - Returns: the saga id.
    /// - Throws: `unknownDefinition`; `duplicateSaga` when `id` belongs to a saga of another
    ///   definition; the bus's error when the topology cannot be declared and the store's when the
    ///   saga cannot be stored — in every case nothing was stored or sent.
    @discardableResult
    public func start(_ name: String, payload: JSONObject, id: SagaID? = nil, context: [String: String] = [:]) async throws -> SagaID {
        try await startIfAbsent(name, payload: payload, id: id, context: context).id
    }

    /// Starts a saga unless one with this id exists, and says which happened.
    ///
    /// The same as ``start(_:payload:id:context:)``, with an explicit result: `.started` when
    /// this call stored the saga, `.alreadyStarted` when a saga of this definition with this id
    /// was stored before (then nothing is stored or sent, and its current state is returned).
    /// - Throws: as ``start(_:payload:id:context:)``, and `duplicateSaga` when the id belongs to a
    ///   saga of another definition (ids are unique across definitions: returning that saga
    ///   would pass off another saga's outcome as this one's).
    public func startIfAbsent(_ name: String, payload: JSONObject, id: SagaID? = nil, context: [String: String] = [:]) async throws
        -> SagaStartResult
    {
        let id = id ?? UUID().uuidString.lowercased()
        // The first command carries this span's context: the saga's steps join its trace.
        return try await withSpan("saga.start \(name)", ofKind: .producer) { span in
            if span.isRecording {
                span.updateAttributes { attributes in
                    attributes["saga.id"] = id
                    attributes["saga.name"] = name
                }
            }
            return try await start(name, payload: payload, id: id, context: context, logger: logger.with(saga: id, name: name))
        }
    }

    /// The error for a start of `name` whose id an existing saga of another definition holds,
    /// or `nil` when the existing saga is of `name` (an idempotent repeat).
    static func idTaken(by existing: SagaState, starting name: String) -> SagaError? {
        guard existing.name != name else { return nil }
        return SagaError(
            .duplicateSaga,
            "saga id '\(PrintableText.escaped(existing.id))' belongs to a '\(existing.name)' saga (\(existing.status.rawValue)), not to a '\(name)' one; nothing was started",
            recoverySuggestion:
                "saga ids are unique across definitions: give this saga its own id, for example prefixed with its definition's name ('\(name)-\(existing.id)')"
        )
    }

    private func start(_ name: String, payload: JSONObject, id: SagaID, context: [String: String], logger: Logger) async throws
        -> SagaStartResult
    {
        let definition = try engine.definitions.definition(named: name)
        try await prepareToStart()
        let circuits = await engine.circuits(for: definition, logger: logger)
        let start = try prepareStart(definition, payload: payload, id: id, context: context, circuits: circuits, now: Date())
        switch try await engine.store.create(start.state, outbox: start.outbox) {
        case .existing(let existing):
            if let taken = Self.idTaken(by: existing, starting: name) { throw taken }
            logger.info("saga already started; nothing sent", metadata: ["saga.status": "\(existing.status.rawValue)"])
            return .alreadyStarted(existing)
        case .created(let stored):
            hub.noteStarted(id)
            engine.metrics.started(definition)
            logger.info("saga started", metadata: ["saga.next": "\(start.firstCommand)"])
            do {
                try await engine.publish(start.outbox, logger: logger)
            } catch {
                // Stored is started: the relay sends the command (engine.publish logged why).
                logger.warning(
                    "saga stored but its first command is not confirmed yet; a participant's outbox relay will send it",
                    metadata: ["error": "\(error)"])
            }
            return .started(stored)
        }
    }

    /// What every start does once per manager before storing: declares the topology (a saga
    /// must never be stored by a call that then fails because the exchanges do not exist yet) and
    /// keeps the definitions in the store (so that any other process, the `saga` CLI included,
    /// can resolve the version a saga is pinned to).
    func prepareToStart() async throws {
        if !declared.isDone { try await declareTopology() }
        try await engine.registerDefinitions(logger: self.logger)
        if newerVersionsChecked.claim() {
            await warnAboutNewerStoredVersions()
        }
    }

    /// Says once, at the first start, which definitions this process starts sagas on while the
    /// store has a newer version of them: a starter of an older release (its sagas need that
    /// version's handlers until they finish, and a retired version's are gone).
    func warnAboutNewerStoredVersions() async {
        guard let stored = try? await engine.store.definitions() else { return }
        for line in Self.olderThanStored(engine.definitions.all, stored: stored) {
            logger.warning("\(line)")
        }
    }

    /// The warnings for the newest local version of each definition that is older than the
    /// newest the store keeps.
    static func olderThanStored(_ local: [SagaDefinition], stored: [StoredDefinitionInfo]) -> [String] {
        var lines: [String] = []
        for name in Set(local.map(\.name)).sorted() {
            guard let mine = local.filter({ $0.name == name }).map(\.version).max(),
                let newest = stored.filter({ $0.name == name }).max(by: { $0.version < $1.version }), newest.version > mine
            else { continue }
            lines.append(
                "this process starts sagas of '\(name)' on version \(mine), but the store has version \(newest.version) (registered \(newest.registeredAt.formatted(.iso8601))): a starter of an older release? Its sagas need version \(mine)'s handlers until they finish — deploy this starter's newer release, or keep version \(mine)'s handlers running (Docs/Upgrades.md)"
            )
        }
        return lines
    }

    /// A new saga's first state and the messages stored with it (its first command, then its
    /// `started` event), decided by the state machine.
    func prepareStart(
        _ definition: SagaDefinition, payload: JSONObject, id: SagaID, context: [String: String],
        circuits: [String: CircuitBreakerState] = [:], now: Date
    ) throws
        -> PreparedStart
    {
        // An id is printed in logs, the CLI and the console, and travels in every command.
        guard !id.isEmpty, !PrintableText.needsEscaping(id) else {
            throw SagaError(
                .invalidMessage, "saga id '\(PrintableText.escaped(id))' is empty or contains control characters",
                recoverySuggestion: "use ids of printable characters (a UUID, an order number)")
        }
        var context = context
        context[SagaTopology.contextKey] = engine.topology.prefix
        context[SagaState.definitionVersionKey] = String(definition.version)
        // Steps whose condition does not hold are skipped at the start; when every step is, the
        // saga is stored completed and no command is sent.
        let start = SagaStateMachine(definition: definition, circuits: circuits).begin(id: id, payload: payload, context: context, now: now)
        let copy = engine.sealedCopy(of: start.state, sending: start.commands)
        let messages = try start.commands.map {
            try SagaMessages.outbox($0, state: start.state, topology: engine.topology, now: now, stateCopy: copy)
        }
        let events = try SagaMessages.eventOutbox(
            SagaLifecycleEvent.startEvents(start.state, definition: definition, at: now), state: start.state, topology: engine.topology)
        return PreparedStart(
            state: start.state, outbox: messages + events,
            firstCommand: start.commands.isEmpty
                ? "none (every step skipped)" : start.commands.map(\.command.command).joined(separator: ","))
    }

    /// Starts a saga with a payload of the caller's own `Encodable` type.
    @discardableResult
    public func start<Payload: Encodable>(_ name: String, payload: Payload, id: SagaID? = nil, context: [String: String] = [:]) async throws
        -> SagaID
    {
        try await start(name, payload: JSONCoding.object(from: payload), id: id, context: context)
    }

    /// Starts a saga with a payload of the caller's own `Encodable` type unless one with this id
    /// exists, and says which happened.
    public func startIfAbsent<Payload: Encodable>(
        _ name: String, payload: Payload, id: SagaID? = nil, context: [String: String] = [:]
    ) async throws -> SagaStartResult {
        try await startIfAbsent(name, payload: JSONCoding.object(from: payload), id: id, context: context)
    }

    /// The saga's current state.
    public func state(of id: SagaID) async throws -> SagaState {
        try await engine.store.load(id)
    }

    /// Waits until the saga reaches a terminal state (completed, compensated, needs attention).
    ///
    /// Woken by the saga's lifecycle events when ``run()`` is running; otherwise, or when an
    /// event was missed, it reads the store every ``fallbackInterval``.
    /// - Throws: `timeout` with the saga's last status when it does not finish in time.
    public func outcome(of id: SagaID, timeout: Duration) async throws -> SagaState {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        let waiter = SagaWaiter(id: id, hub: hub, engine: engine, fallback: effectiveFallbackInterval, terminalOnly: true)
        // A saga this manager started while listening, and whose end has not arrived, cannot have
        // ended unseen: wait for its end before the first read (one read per saga, not two).
        if hub.hasNotEnded(id) { await waiter.wait(until: deadline) }
        while true {
            let state = try await engine.store.load(id)
            if state.status.isTerminal { return state }
            if clock.now >= deadline {
                throw notFinished(state, within: timeout)
            }
            await waiter.wait(until: deadline)
        }
    }

    /// Starts a saga and waits for it to end: returns its terminal lifecycle event (`completed`,
    /// `compensated` or `needs-attention`, with the failure reason as `error`), without reading
    /// the store while ``run()`` receives events.
    ///
    /// The wait is registered before the saga is stored, so its end cannot come first (the
    /// pattern of a client that registers a reply handler before it sends the request). A saga
    /// that ends at its start (every step skipped), one with this `id` that had already ended,
    /// and one whose event did not come within ``fallbackInterval`` (a manager that is not run,
    /// `events = none`, a reconnect) are answered from the store, with the event its end
    /// published (``SagaCore/SagaLifecycleEvent/ending(of:)``). ``outcome(of:timeout:)`` reads
    /// the store at least once per saga to return the whole state; this reads it only in those cases,
    /// which matters to a process that starts many sagas and only needs to know how they ended
    /// (`state(of:)` gives the whole state afterwards).
    ///
    /// - Parameters: as ``start(_:payload:id:context:)``; `timeout` bounds the wait for the end.
    /// - Throws: what ``start(_:payload:id:context:)`` throws; `timeout` with the saga's last
    ///   status when it does not end in time (it keeps running).
    public func startAndWait(
        _ name: String, payload: JSONObject, id: SagaID? = nil, context: [String: String] = [:], timeout: Duration
    ) async throws -> SagaLifecycleEvent {
        let id = id ?? UUID().uuidString.lowercased()
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        let waiter = SagaWaiter(
            id: id, hub: hub, engine: engine, fallback: effectiveFallbackInterval, terminalOnly: true, returnsEnding: true)
        switch try await startIfAbsent(name, payload: payload, id: id, context: context) {
        case .started(let state), .alreadyStarted(let state):
            if let ending = SagaLifecycleEvent.ending(of: state) { return ending }
        }
        while true {
            await waiter.wait(until: deadline)
            if let ending = waiter.ending { return ending }
            // No event within the fallback interval (or the deadline came): the store decides.
            let state = try await engine.store.load(id)
            if let ending = SagaLifecycleEvent.ending(of: state) { return ending }
            if clock.now >= deadline {
                throw notFinished(state, within: timeout)
            }
        }
    }

    /// The `timeout` error of a wait for a saga's end, naming where the saga is: its step counted
    /// from 1 and named, as `saga show` does.
    private func notFinished(_ state: SagaState, within timeout: Duration) -> SagaError {
        let definition = engine.definitions.definition(named: state.name, version: state.definitionVersion)
        let name = definition.flatMap { $0.steps.indices.contains(state.currentStep) ? " '\($0.steps[state.currentStep].name)'" : nil }
        return SagaError(
            .timeout,
            "saga \(state.id) did not finish within \(timeout); it is \(state.status.rawValue) at step \(state.currentStep + 1)\(name ?? ""), attempt \(state.attempt)",
            recoverySuggestion: "check that the participants are running (`saga show \(state.id)` shows what it waits for)"
        )
    }

    /// ``startAndWait(_:payload:id:context:timeout:)`` with a payload of the caller's own
    /// `Encodable` type.
    public func startAndWait<Payload: Encodable>(
        _ name: String, payload: Payload, id: SagaID? = nil, context: [String: String] = [:], timeout: Duration
    ) async throws -> SagaLifecycleEvent {
        try await startAndWait(name, payload: JSONCoding.object(from: payload), id: id, context: context, timeout: timeout)
    }

    /// Waits until the saga reaches a terminal state.
    @available(*, deprecated, message: "use outcome(of:timeout:); set fallbackInterval to change how often the store is read")
    public func outcome(of id: SagaID, timeout: Duration, pollInterval: Duration) async throws -> SagaState {
        var copy = self
        copy.fallbackInterval = pollInterval
        return try await copy.outcome(of: id, timeout: timeout)
    }

    /// The saga's states as they change, starting with the current one; ends after a terminal
    /// state. Works across processes: woken by the saga's lifecycle events when ``run()`` is
    /// running (with `events = all`, every step), and reading the store every
    /// ``fallbackInterval`` otherwise. States that follow each other quickly may be seen only
    /// as the later one.
    public func updates(of id: SagaID) -> AsyncThrowingStream<SagaState, any Error> {
        let follower = SagaFollower(
            waiter: SagaWaiter(id: id, hub: hub, engine: engine, fallback: effectiveFallbackInterval, terminalOnly: false))
        return AsyncThrowingStream(unfolding: { try await follower.next() })
    }

    /// Whether ``run()`` is receiving lifecycle events (waiting calls are woken by them).
    public var isListeningForEvents: Bool { hub.isListening }

    var effectiveFallbackInterval: Duration {
        fallbackInterval ?? (hub.isListening ? .seconds(1) : .milliseconds(50))
    }

    /// Re-sends the current command of a saga (also one that needs attention) with a new attempt.
    ///
    /// `deadline` moves or removes the saga's deadline at the same time: a saga resumed after an
    /// outage longer than its deadline compensates when its command arrives, unless its deadline
    /// moves. The saga's history records the request: who (`actor`), when and why (`reason`),
    /// and the deadline's move.
    /// - Throws: `invalidState` when the saga has finished.
    @discardableResult
    public func retry(
        _ id: SagaID, by actor: String = "operator", reason: String? = nil, deadline: SagaDeadlineChange = .keep
    ) async throws -> SagaState {
        try await operate(id, event: .retryRequested(by: actor, reason: reason, deadline: deadline))
    }

    /// Compensates a saga now (only before its pivot).
    ///
    /// The saga's history records the request: who (`actor`), when and why (`reason`).
    /// - Throws: `invalidState` when the saga is past its pivot or finished.
    @discardableResult
    public func compensate(_ id: SagaID, by actor: String = "operator", reason: String = "compensation requested by an operator")
        async throws -> SagaState
    {
        try await operate(id, event: .compensationRequested(by: actor, reason: reason))
    }

    /// Stops a running or compensating saga where it is: it needs attention, and its commands
    /// still on their way are ignored (for a step past the pivot that will never succeed and is
    /// retried for ever). Then ``retry(_:by:reason:)``, ``compensate(_:by:reason:)`` (before the
    /// pivot) or ``resolve(_:by:reason:patch:)``.
    ///
    /// The saga's history records the request: who (`actor`), when and why (`reason`). A handler
    /// running at that moment finishes, and its report is discarded (`outcomeDiscarded`).
    /// - Throws: `invalidState` when the saga is not running or compensating, or is in a parallel
    ///   group.
    @discardableResult
    public func stop(_ id: SagaID, by actor: String = "operator", reason: String) async throws -> SagaState {
        try await operate(id, event: .stopRequested(by: actor, reason: reason))
    }

    /// Records that an operator did by hand what a saga that needs attention stopped at, and lets
    /// the saga go on as if that work had succeeded: a compensation that keeps failing (the refund
    /// was made by hand: the earlier compensations run next, then the saga is compensated), or an
    /// action past the pivot that cannot succeed (shipped by hand: the next step runs, or the saga
    /// completes). `patch` is merged into the saga's data first (a tracking number, a refund id).
    ///
    /// Only a saga that needs attention can be resolved: while it runs, its handler may still
    /// report. The history records it as completed, with who (`actor`) and why (`reason`).
    /// - Throws: `unknownSaga`; `invalidState` when the saga does not need attention.
    @discardableResult
    public func resolve(_ id: SagaID, by actor: String = "operator", reason: String, patch: JSONObject = [:]) async throws -> SagaState {
        try await operate(id, event: .resolvedByOperator(by: actor, reason: reason, patch: patch))
    }

    /// Delivers the signal `name` to a saga, for its wait step that waits for it (see
    /// ``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``): `payload` is merged into the saga's
    /// data and the saga goes on with its next step. A signal that arrives before the saga
    /// reaches the wait is kept (the wait completes when the saga gets there); one that arrives
    /// after the wait ended (its timeout passed, the saga finished or is compensating) is
    /// ignored, and the result says why. Delivering the same signal twice is harmless: the
    /// second is ignored.
    ///
    /// Any process with a manager can deliver signals (a webhook handler, an approval UI); the
    /// `saga signal` command does the same.
    /// - Parameters:
    ///   - id: the saga.
    ///   - name: the signal's name, as the definition's wait step declares it.
    ///   - payload: data merged into the saga's payload (shallow merge).
    ///   - sender: who sent it, recorded in the saga's history.
    /// - Throws: `unknownSaga`; `invalidState` when the saga's definition waits for no signal of
    ///   that name (the message lists the signals it waits for).
    @discardableResult
    public func signal(_ id: SagaID, name: String, payload: JSONObject = [:], by sender: String? = nil) async throws -> SagaSignalResult {
        let state = try await engine.store.load(id)
        let logger = logger.with(saga: id, name: state.name)
        switch try await engine.advance(
            id, from: state, event: .signalReceived(name: name, payload: payload, by: sender), logger: logger,
            publishFailuresThrow: false)
        {
        case .committed(let next):
            logger.info(
                "signal delivered",
                metadata: ["signal": "\(name)", "saga.status": "\(next.status.rawValue)", "signal.by": "\(sender ?? "-")"])
            return .delivered(next)
        case .ignored(let reason, let current):
            logger.notice("signal '\(name)' ignored: \(reason)", metadata: ["signal": "\(name)"])
            return .ignored(reason, current)
        case .rejected(let reason, _):
            throw SagaError(
                .invalidState, reason,
                recoverySuggestion: "send one of the signals the saga's definition waits for (`saga graph` shows them)")
        }
    }

    private func operate(_ id: SagaID, event: SagaEvent) async throws -> SagaState {
        let state = try await engine.store.load(id)
        let logger = logger.with(saga: id, name: state.name)
        // Committed is done: the operator must not read a publish failure as "nothing changed" (and
        // act again); the outbox relay sends what could not be published.
        switch try await engine.advance(id, from: state, event: event, logger: logger, publishFailuresThrow: false) {
        case .committed(let next):
            return next
        case .ignored(let reason, _), .rejected(let reason, _):
            throw SagaError(.invalidState, reason)
        }
    }
}

/// What ``SagaManager/signal(_:name:payload:by:)`` did.
public enum SagaSignalResult: Sendable, Hashable {
    /// The signal was recorded: the wait completed and the saga went on, or it was kept for a
    /// wait the saga has not reached yet (the saga's state after the signal).
    case delivered(SagaState)
    /// The signal came too late or twice: `reason` says why (the saga's current state).
    case ignored(String, SagaState)

    /// The saga's state as this call left or found it.
    public var state: SagaState {
        switch self {
        case .delivered(let state), .ignored(_, let state): state
        }
    }
}

/// What ``SagaManager/startIfAbsent(_:payload:id:context:)`` did.
public enum SagaStartResult: Sendable, Hashable {
    /// This call stored the saga (its state right after storing).
    case started(SagaState)
    /// A saga with this id had been started before; nothing was stored or sent (its current
    /// state).
    case alreadyStarted(SagaState)

    /// The saga id.
    public var id: SagaID { state.id }

    /// The saga's state as this call saw it.
    public var state: SagaState {
        switch self {
        case .started(let state), .alreadyStarted(let state): state
        }
    }

    /// Whether this call started the saga.
    public var isNew: Bool {
        if case .started = self { true } else { false }
    }
}

/// A saga about to be stored: its state and outbox messages.
struct PreparedStart: Sendable {
    let state: SagaState
    let outbox: [OutboxMessage]
    let firstCommand: String
}

/// Waits for something to happen to one saga: an event from the hub, or the fallback interval.
/// Subscribes when created, so that no event between the caller's store read and its wait is
/// lost; unsubscribes when released.
final class SagaWaiter: Sendable {
    let id: SagaID
    let store: any SagaStore
    private let hub: SagaEventHub
    private let signal = WakeSignal()
    private let token: Int
    private let fallback: Duration
    private let endingSlot: SagaEnding?

    /// With `returnsEnding`, the saga's terminal event is kept (``ending``).
    init(id: SagaID, hub: SagaEventHub, engine: SagaEngine, fallback: Duration, terminalOnly: Bool, returnsEnding: Bool = false) {
        self.id = id
        self.store = engine.store
        self.hub = hub
        let endingSlot = returnsEnding ? SagaEnding() : nil
        self.endingSlot = endingSlot
        self.token = hub.subscribe(id, signal: signal, terminalOnly: terminalOnly, ending: endingSlot)
        self.fallback = fallback
    }

    /// The saga's terminal event, once it arrived (for a waiter created with `returnsEnding`).
    var ending: SagaLifecycleEvent? { endingSlot?.value }

    deinit { hub.unsubscribe(id, token: token) }

    /// Returns when an event of the saga arrives, the fallback interval passed, or `deadline`
    /// came.
    func wait(until deadline: ContinuousClock.Instant) async {
        let now = ContinuousClock.now
        let sleep = min(fallback, max(deadline - now, .zero))
        let signal = signal
        if hub.wake(id, token: token, at: now + sleep) {
            // The manager's run() wakes this waiter when the interval passes.
            await signal.wait()
            hub.cancelWake(id, token: token)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await signal.wait() }
            group.addTask { try? await Task.sleep(for: sleep) }
            await group.next()
            group.cancelAll()
        }
    }
}

/// The state of ``SagaManager/updates(of:)``: the last version seen, and whether the saga ended.
final class SagaFollower: Sendable {
    private let waiter: SagaWaiter
    private let progress = Mutex<(lastVersion: Int64, finished: Bool)>((-1, false))

    init(waiter: SagaWaiter) {
        self.waiter = waiter
    }

    /// The next state that differs from the last one; `nil` after a terminal state.
    func next() async throws -> SagaState? {
        var first = progress.withLock { $0.lastVersion < 0 }
        while true {
            if progress.withLock({ $0.finished }) { return nil }
            if !first { await waiter.wait(until: ContinuousClock.now.advanced(by: .seconds(3600))) }
            first = false
            try Task.checkCancellation()
            let state = try await waiter.store.load(waiter.id)
            let isNew = progress.withLock { progress -> Bool in
                guard state.version != progress.lastVersion else { return false }
                progress.lastVersion = state.version
                progress.finished = state.status.isTerminal
                return true
            }
            if isNew { return state }
        }
    }
}

extension Array where Element: Hashable {
    /// The elements without repeats, in their first order.
    fileprivate func uniqued() -> [Element] {
        var seen = Set<Element>()
        return filter { seen.insert($0).inserted }
    }
}

/// Sleeps until cancelled or gracefully shut down.
private func gracefulSleepForever() async throws {
    do {
        while true { try await gracefulSleep(.seconds(3600)) }
    } catch is CancellationError {}
}

/// Lets one caller, of all copies of one manager, do something once.
private final class ClaimedOnce: Sendable {
    private let claimed = Atomic<Bool>(false)
    /// `true` for the first caller only.
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
}

/// Remembers, for all copies of one manager, that its topology was declared.
private final class DeclaredOnce: Sendable {
    private let done = Atomic<Bool>(false)
    var isDone: Bool { done.load(ordering: .acquiring) }
    func mark() { done.store(true, ordering: .releasing) }
}
