import Foundation
import Tracing

/// Starts sagas and follows them.
///
/// ```swift
/// let manager = SagaManager(definitions: definitions, bus: bus, store: store, logger: logger)
/// let id = try await manager.start("order", payload: ["orderId": "o-42", "amount": 30])
/// let final = try await manager.outcome(of: id, timeout: .seconds(30))
/// ```
public struct SagaManager: Sendable {
    let engine: SagaEngine
    let logger: Logger

    /// Creates a manager.
    public init(
        definitions: SagaDefinitionRegistry, bus: any MessageBus, store: any SagaStore, topology: SagaTopology = SagaTopology(),
        logger: Logger
    ) {
        self.engine = SagaEngine(store: store, bus: bus, definitions: definitions, topology: topology)
        self.logger = logger
    }

    /// The store the manager reads and writes.
    public var store: any SagaStore { engine.store }

    /// Declares the exchanges and queues the manager publishes to (participants declare them too;
    /// declaring twice is harmless).
    public func declareTopology() async throws {
        try await engine.bus.declare(engine.topology.shared)
    }

    /// Starts a saga: stores it with its first command, publishes the command and waits for the
    /// broker's confirm.
    ///
    /// Idempotent when `id` is given: starting an existing saga id again stores and sends nothing
    /// and returns the id.
    /// - Parameters:
    ///   - name: the saga definition's name.
    ///   - payload: the initial payload (a JSON object).
    ///   - id: the saga id; a new UUID when `nil`.
    ///   - context: trace and correlation ids to carry along.
    /// - Returns: the saga id.
    @discardableResult
    public func start(_ name: String, payload: JSONObject, id: SagaID? = nil, context: [String: String] = [:]) async throws -> SagaID {
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

    private func start(_ name: String, payload: JSONObject, id: SagaID, context: [String: String], logger: Logger) async throws -> SagaID {
        let definition = try engine.definitions.definition(named: name)
        let now = Date()
        var context = context
        context[SagaTopology.contextKey] = engine.topology.prefix
        let (state, first) = SagaStateMachine(definition: definition).start(id: id, payload: payload, context: context, now: now)
        let message = try SagaMessages.outbox(first, state: state, topology: engine.topology, now: now)
        switch try await engine.store.create(state, outbox: [message]) {
        case .existing:
            logger.info("saga already started; nothing sent")
        case .created:
            engine.metrics.started(name)
            logger.info("saga started", metadata: ["saga.next": "\(first.command.command)"])
            try await engine.publish([message], logger: logger)
        }
        return id
    }

    /// Starts a saga with a payload of the caller's own `Encodable` type.
    @discardableResult
    public func start<Payload: Encodable>(_ name: String, payload: Payload, id: SagaID? = nil, context: [String: String] = [:]) async throws
        -> SagaID
    {
        try await start(name, payload: JSONCoding.object(from: payload), id: id, context: context)
    }

    /// The saga's current state.
    public func state(of id: SagaID) async throws -> SagaState {
        try await engine.store.load(id)
    }

    /// Waits until the saga reaches a terminal state (completed, compensated, needs attention).
    /// - Throws: `timeout` with the saga's last status when it does not finish in time.
    public func outcome(of id: SagaID, timeout: Duration, pollInterval: Duration = .milliseconds(50)) async throws -> SagaState {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let state = try await engine.store.load(id)
            if state.status.isTerminal { return state }
            if clock.now >= deadline {
                throw SagaError(
                    .timeout,
                    "saga \(id) did not finish within \(timeout); it is \(state.status.rawValue) at step \(state.currentStep) attempt \(state.attempt)",
                    recoverySuggestion: "check that the participants are running (`saga show \(id)` shows what it waits for)"
                )
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// The saga's states as they change, starting with the current one; ends after a terminal
    /// state. Works across processes (it reads the shared store).
    public func updates(of id: SagaID, pollInterval: Duration = .milliseconds(100)) -> AsyncThrowingStream<SagaState, any Error> {
        let store = engine.store
        return AsyncThrowingStream { continuation in
            let task = Task {
                var lastVersion: Int64 = -1
                do {
                    while !Task.isCancelled {
                        let state = try await store.load(id)
                        if state.version != lastVersion {
                            lastVersion = state.version
                            continuation.yield(state)
                        }
                        if state.status.isTerminal { break }
                        try await Task.sleep(for: pollInterval)
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Re-sends the current command of a saga (also one that needs attention) with a new attempt.
    /// - Throws: `invalidState` when the saga has finished.
    @discardableResult
    public func retry(_ id: SagaID) async throws -> SagaState {
        try await operate(id, event: .retryRequested)
    }

    /// Compensates a saga now (only before its pivot).
    /// - Throws: `invalidState` when the saga is past its pivot or finished.
    @discardableResult
    public func compensate(_ id: SagaID, reason: String = "compensation requested by an operator") async throws -> SagaState {
        try await operate(id, event: .compensationRequested(reason: reason))
    }

    private func operate(_ id: SagaID, event: SagaEvent) async throws -> SagaState {
        let state = try await engine.store.load(id)
        let logger = logger.with(saga: id, name: state.name)
        switch try await engine.advance(id, from: state, event: event, logger: logger) {
        case .committed(let next):
            return next
        case .ignored(let reason, _), .rejected(let reason, _):
            throw SagaError(.invalidState, reason)
        }
    }
}
