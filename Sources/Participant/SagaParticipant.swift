import Foundation
import Synchronization
import Tracing

/// A service's part in choreographed sagas: it consumes the commands it has handlers for, runs
/// them, stores the saga's next state with its next command atomically, publishes that command,
/// and only then acknowledges the delivery.
///
/// ```swift
/// var handlers = SagaHandlerRegistry()
/// handlers.register("inventory.reserve") { context in
///     try await context.completeStep(merging: ["reserved": true])
/// }
/// let participant = SagaParticipant(
///     configuration: ParticipantConfiguration(service: "inventory"),
///     definitions: definitions, handlers: handlers, bus: bus, store: store, logger: logger)
/// try await participant.run()   // or add it to a ServiceGroup
/// ```
///
/// For each delivery: decode → load the saga (or take the sealed copy a fresh first delivery
/// carries, ``SagaTopology/stateInCommands``) → check the command is the saga's current one
/// (stale and duplicate deliveries are acknowledged and ignored, with a log line and the
/// `saga_stale_messages_total` counter) → run the handler → commit the transition with its
/// outgoing command → publish it and wait for the confirm → mark it sent → acknowledge.
/// Messages that cannot be processed (malformed, unknown command, unknown saga, wrong content
/// type, too large) are published to the dead-letter exchange with the reason in headers, then
/// acknowledged. A command without a handler here that the saga's definition version sends is
/// handed back instead, for another release of the service on the same queue (a rolling
/// upgrade; `Docs/Upgrades.md`).
///
/// On graceful shutdown the participant stops taking deliveries and lets running handlers
/// finish and acknowledge.
public struct SagaParticipant: Service {
    /// The configuration.
    public let configuration: ParticipantConfiguration
    /// The handlers.
    public let handlers: SagaHandlerRegistry
    let engine: SagaEngine
    let logger: Logger
    /// The handlers' step timeouts, kept by one task while the participant consumes (when a
    /// definition it was built with has a step timeout).
    let stepDeadlines = DeadlineTicker(tick: .milliseconds(50))
    /// How each hand-back is logged: the first of each command as a warning, then a line a
    /// minute at most (a rolling upgrade hands back hundreds).
    let handBackLog = HandBackLog()
    /// What the participant tells the health registry while it runs.
    let health: ParticipantHealth
    /// This process's id in its presence record and in the history records it writes.
    let instance: String

    /// Creates a participant.
    public init(
        configuration: ParticipantConfiguration,
        definitions: SagaDefinitionRegistry,
        handlers: SagaHandlerRegistry,
        bus: any MessageBus,
        store: any SagaStore,
        logger: Logger
    ) {
        self.configuration = configuration
        self.handlers = handlers
        var logger = logger
        logger[metadataKey: "saga.service"] = "\(configuration.service)"
        self.logger = logger
        var engine = SagaEngine(store: store, bus: bus, definitions: definitions, topology: configuration.topology)
        let instance = PresenceReporter.instanceID(configuration.instanceName)
        self.instance = instance
        engine.instance = instance
        engine.sentMarker = SentMarker(
            store: store, interval: SentMarker.interval(forGracePeriod: configuration.outboxGracePeriod), logger: logger)
        if configuration.inProcessSteps {
            engine.localSteps = LocalStepDispatch(
                commands: Set(handlers.commands), commandsExchange: configuration.topology.commandsExchange,
                queue: configuration.topology.queue(forService: configuration.service), limit: configuration.prefetch)
        }
        self.engine = engine
        self.health = ParticipantHealth(registry: configuration.health, service: configuration.service)
    }

    /// Creates a participant from the values the process's components share.
    ///
    /// The runtime's topology replaces `configuration.topology`.
    public init(configuration: ParticipantConfiguration, handlers: SagaHandlerRegistry, runtime: SagaRuntime) {
        var configuration = configuration
        configuration.topology = runtime.topology
        self.init(
            configuration: configuration, definitions: runtime.definitions, handlers: handlers, bus: runtime.bus, store: runtime.store,
            logger: runtime.logger)
    }

    /// Creates a participant of `service` with the default options.
    public init(service: String, handlers: SagaHandlerRegistry, runtime: SagaRuntime) {
        self.init(configuration: ParticipantConfiguration(service: service), handlers: handlers, runtime: runtime)
    }

    /// The queue this participant consumes.
    public var queue: String { configuration.topology.queue(forService: configuration.service) }

    /// Declares the topology, then consumes until cancelled or gracefully shut down. Runs the
    /// outbox relay and, when configured, the reaper alongside.
    public func run() async throws {
        try configuration.validate()
        try handlers.validate(against: engine.definitions)
        guard !handlers.commands.isEmpty else {
            throw SagaError(
                .invalidConfiguration, "service '\(configuration.service)' has no handlers",
                recoverySuggestion: "register at least one handler before running the participant")
        }
        engine.metrics.prepare(service: configuration.service)
        health.begin("starting: registering the saga definitions in the store")
        defer { health.end() }
        // Before consuming: the definitions this process runs are kept in the store.
        try await engine.registerDefinitions(logger: logger)
        warnAboutReaperThreshold()
        if configuration.maxBodyBytes < 1024 {
            logger.warning(
                "the largest command body this service accepts is \(configuration.maxBodyBytes) bytes: SagaKit's own commands take a few hundred bytes and a payload's size on top, so most will be dead-lettered",
                metadata: ["maxBodyBytes": "\(configuration.maxBodyBytes)", "hint": "raise max.body.bytes (default 65536)"])
        }
        warnAboutDelaysBeyondTheLargestLevel()
        health.notReady("starting: declaring queue '\(queue)' on the broker")
        guard try await declareWaitingForTheBroker() else {
            logger.info("participant stopped before the broker answered")
            return
        }
        logger.info(
            "participant started",
            metadata: [
                "queue": "\(queue)", "commands": "\(handlers.commands.joined(separator: ","))", "prefetch": "\(configuration.prefetch)",
                "handlers.max": "\(configuration.handlerLimit)",
            ]
        )
        try await withThrowingDiscardingTaskGroup { outer in
            let marker = engine.sentMarker
            if let marker { outer.addTask { await marker.run() } }
            try await consume()
            // Stops the marker, which first marks what the last handlers published.
            outer.cancelAll()
        }
        logger.info("participant stopped")
    }

    /// A retry delay longer than the largest delay level cannot be rounded up: it is shortened to
    /// the largest level. Say so once at start, naming the policies' longest delay.
    private func warnAboutDelaysBeyondTheLargestLevel() {
        let policies = engine.definitions.all.flatMap { $0.steps.map(\.options.retry) + [$0.compensationRetry] }
        guard let longest = policies.map(\.maxDelay).max(), let largest = configuration.topology.delayLevels.last,
            longest > .seconds(largest)
        else { return }
        logger.warning(
            "retry delays up to \(longest) are allowed, but the largest delay level is \(largest) s: longer delays are shortened to \(largest) s",
            metadata: ["retry.maxDelay": "\(longest)", "delay.largestLevel": "\(largest)"]
        )
    }

    /// Declares the service's topology; while the broker is unreachable (a service started before
    /// the broker, a broker restarting) keeps trying with a growing pause and a log line per
    /// attempt, until the broker answers or the participant is shut down.
    /// - Returns: `false` when the participant was shut down before the broker answered.
    private func declareWaitingForTheBroker() async throws -> Bool {
        let topology = configuration.topology.topology(forService: configuration.service, commands: handlers.commands)
        var pause = Duration.seconds(1)
        var attempt = 1
        while true {
            do {
                // A stop (SIGTERM) while the broker is away ends the wait for the connection at once,
                // not after the bus's operationTimeout.
                let bus = engine.bus
                try await cancelWhenGracefulShutdown { try await bus.declare(topology) }
                return true
            } catch is CancellationError where Task.isShuttingDownGracefully {
                return false
            } catch let error as BusError where error.isRetryable && !Task.isShuttingDownGracefully {
                logger.warning(
                    "the broker is not reachable; declaring the queue again in \(pause)",
                    metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                do {
                    try await gracefulSleep(pause)
                } catch is CancellationError where Task.isShuttingDownGracefully {
                    return false
                }
                pause = min(pause * 2, .seconds(30))
                attempt += 1
            }
        }
    }

    /// A reaper whose stalled threshold is shorter than the longest retry delay re-sends commands
    /// that are only waiting in a delay queue (harmless, but it defeats the backoff).
    private func warnAboutReaperThreshold() {
        guard let reaper = configuration.reaper else { return }
        var delays: [(delay: Duration, source: String)] = []
        for definition in engine.definitions.all {
            for (index, step) in definition.steps.enumerated() {
                let delay = Self.longestDelay(step.options.retry, forever: definition.isForwardOnly(index))
                delays.append((delay, "step '\(step.name)' of saga '\(definition.name)'"))
            }
            let compensation = Self.longestDelay(definition.compensationRetry, forever: false)
            delays.append((compensation, "the compensations of saga '\(definition.name)'"))
        }
        guard let longest = delays.max(by: { $0.delay < $1.delay }), longest.delay > .zero else { return }
        // The delay queue that holds it (delays are rounded up to a delay level).
        let level = Duration.seconds(configuration.topology.delayLevel(for: longest.delay))
        if reaper.stalledThreshold <= level {
            logger.warning(
                "the reaper's stalled threshold (\(reaper.stalledThreshold)) is not longer than the longest retry delay (\(level), \(longest.source)); it will re-send commands that are waiting to be retried",
                metadata: ["reaper.stalledThreshold": "\(reaper.stalledThreshold)", "retry.maxDelay": "\(level)"]
            )
        }
    }

    /// The longest wait between two attempts that `policy` makes: for a step retried for ever
    /// (from the pivot on) its cap once the delays grow to it, else the longest of its attempts.
    package static func longestDelay(_ policy: RetryPolicy, forever: Bool) -> Duration {
        // After 64 growths any delay that grows has reached its cap.
        let attempts = forever ? 64 : min(policy.maxAttempts - 1, 64)
        guard attempts >= 1 else { return .zero }
        return (1...attempts).map { policy.delay(afterAttempt: $0) }.max() ?? .zero
    }

    /// Consumes the queue until cancelled or gracefully shut down, with the outbox relay and the
    /// reaper alongside; returns once running handlers have finished.
    private func consume() async throws {
        let deadlines = stepDeadlines
        // Ticks only when a step has a timeout (no wake-ups otherwise); a definition read from
        // the store later with timeouts gets a timer per handler instead.
        let timeouts = engine.definitions.all.contains { $0.steps.contains { $0.options.timeout != nil } }
        try await withThrowingDiscardingTaskGroup { timers in
            if timeouts { timers.addTask { await deadlines.run() } }
            try await consumeDeliveries()
            timers.cancelAll()
        }
    }

    private func consumeDeliveries() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            let relay = OutboxRelay(
                engine: engine, pollInterval: configuration.outboxPollInterval, gracePeriod: configuration.outboxGracePeriod, logger: logger
            )
            group.addTask { await relay.run() }
            if let interval = configuration.presenceInterval {
                let presence = PresenceReporter(
                    store: engine.store, topology: configuration.topology.prefix, service: configuration.service,
                    commands: handlers.commands, interval: interval, instance: instance, logger: logger)
                group.addTask { await presence.run() }
            }
            if let reaperConfiguration = configuration.reaper {
                let reaper = SagaReaper(engine: engine, configuration: reaperConfiguration, logger: logger)
                group.addTask { try await reaper.run() }
            }
            if let localSteps = engine.localSteps {
                // The steps this participant publishes for itself (in-process orchestration).
                let engine = engine
                group.addTask {
                    await withDiscardingTaskGroup { steps in
                        for await message in localSteps.messages {
                            steps.addTask { await process(localSteps.delivery(of: message, engine: engine)) }
                        }
                    }
                }
            }
            defer { engine.localSteps?.close() }
            var deliveries: DeliveryStream? = try await engine.bus.consume(queue: queue, prefetch: configuration.prefetch)
            health.consuming("consuming queue '\(queue)'")
            // At most `handlerLimit` deliveries are processed at once; the others wait as
            // messages in the bus's buffer (about 2 KB each) rather than as tasks suspended deep
            // in a handler (about 30 KB of task frames each), most of them waiting for a store
            // connection that another handler holds.
            let limit = configuration.handlerLimit
            // A handler that finishes frees its place; a graceful stop ends the wait for one (a
            // delivery waiting for a place has not started: it goes back to the queue at once).
            let (places, place) = AsyncStream<PlaceSignal>.makeStream()
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { steps in
                    var running = 0
                    var freed = places.makeAsyncIterator()
                    consuming: for try await delivery in deliveries!.cancelOnGracefulShutdown() {
                        var stopping = false
                        while running >= limit, !stopping {
                            switch await freed.next() {
                            case .freed: running -= 1
                            case .stop, nil: stopping = true
                            }
                        }
                        if stopping || Task.isShuttingDownGracefully {
                            await settle(delivery, .nack(requeue: true), logger: logger)
                            break consuming
                        }
                        steps.addTask {
                            await process(delivery)
                            place.yield(.freed)
                        }
                        running += 1
                    }
                    // The deliveries the stream still buffered go back to the queue now, for the
                    // service's other instances (released unsettled); those in handlers stay with
                    // this instance until their handlers settle them.
                    deliveries = nil
                    // The steps already taken still run; new ones go through the broker.
                    engine.localSteps?.close()
                    health.notReady("stopping: finishing the running handlers")
                    logger.info("participant stopped consuming; waiting for running handlers")
                    // When the stream ended for another reason than a graceful shutdown, the
                    // running handlers are cancelled; the group waits for them as it ends.
                    if !Task.isShuttingDownGracefully { steps.cancelAll() }
                }
            } onGracefulShutdown: {
                place.yield(.stop)
            }
            // The relay and reaper end on graceful shutdown too; cancel them when the stream
            // ended for another reason.
            if !Task.isShuttingDownGracefully { group.cancelAll() }
        }
    }

    // MARK: - One delivery

    /// Processes one delivery to the end: it is always settled, never left hanging.
    func process(_ delivery: Delivery) async {
        var logger = self.logger
        let body: SagaCommandBody
        switch SagaMessages.command(from: delivery, maxBodyBytes: configuration.maxBodyBytes) {
        case .failure(let error):
            // Undecodable: the routing key is what names it (a command published through the
            // default exchange names its queue there), and the dead-letter queue keeps it.
            logger[metadataKey: "amqp.routingKey"] = "\(delivery.routingKey)"
            // The saga a message names, as far as can be told (its correlation id is the saga id
            // for SagaKit's own commands), so that its line is found with the saga's others.
            if let id = delivery.correlationId, !id.isEmpty { logger[metadataKey: "saga.id"] = "\(id)" }
            return await deadLetter(delivery, reason: error.message, logger: logger)
        case .success(let decoded):
            body = decoded
        }
        let command = body.command
        // The strings themselves (`.string`), not interpolations that copy each into a new one.
        logger.addMetadata([
            "saga.command": .string(command.command), "saga.id": .string(command.sagaID), "saga.name": .string(command.sagaName),
            "saga.step": .string(command.stepName), "saga.phase": .string(command.phase.rawValue),
            "saga.attempt": .string(String(command.attempt)),
        ])
        // One span per delivery, a child of the span that sent the command.
        await withSpan(command.command, context: SagaTracing.context(from: delivery.headers), ofKind: .consumer) { span in
            SagaTracing.describe(span, command: command, queue: delivery.queue)
            await handleRetryingInPlace(body, delivery: delivery, span: span, logger: logger)
        }
    }

    /// Handles a command; when the store or the broker fails it, tries again here, after
    /// ``retryPause(after:)``, for as long as the delivery is still this consumer's
    /// (``SagaCore/DeliverySettler/isStillHeld``) and the participant is not stopping; then hands
    /// it back to the queue.
    ///
    /// Handing it back at once (`nack` with requeue) would count a delivery each time: RabbitMQ
    /// 4's quorum queues dead-letter a message after 20 deliveries by default (a queue's
    /// `delivery-limit`), so a store outage of seconds would send commands to the dead-letter
    /// queue. Kept here, the command is delivered once however long the outage lasts, and the
    /// consumer takes no more deliveries than it has room for meanwhile.
    private func handleRetryingInPlace(_ body: SagaCommandBody, delivery: Delivery, span: any Span, logger: Logger) async {
        var attempt = delivery
        var failures = 0
        while true {
            do throws(InfrastructureFailure) {
                return try await handle(body, delivery: attempt, span: span, logger: logger)
            } catch {
                failures += 1
                engine.metrics.processingFailed(service: configuration.service)
                health.processingFailed(error.underlying)
                span.recordError(error.underlying)
                let pause = Self.retryPause(after: failures)
                let held = attempt.settler.isStillHeld && !Task.isShuttingDownGracefully && !Task.isCancelled
                // The first failure and one a minute after it say so; the others are debug lines.
                let level: Logger.Level = failures == 1 || failures % 12 == 0 || !held ? .warning : .debug
                logger.log(
                    level: level,
                    held
                        ? "processing failed (\(failures == 1 ? "once" : "\(failures) times")); trying again in \(pause.readable), the command staying with this process"
                        : "processing failed (\(failures == 1 ? "once" : "\(failures) times")); the command goes back to its queue",
                    metadata: ["error": "\(error.underlying)"])
                guard held else {
                    return await settle(attempt, .nack(requeue: true), logger: logger)
                }
                do {
                    try await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
                } catch {
                    return await settle(attempt, .nack(requeue: true), logger: logger)
                }
                // Processed again from the store, as a redelivery is (not from the copy of the
                // state the command carries: the store may have moved).
                attempt.redelivered = true
            }
        }
    }

    /// The pause before trying a command again after its `n`th failure (from 1): 0.5 s, doubling
    /// to 5 s.
    static func retryPause(after failures: Int) -> Duration {
        .milliseconds(min(500 << min(max(failures - 1, 0), 4), 5_000))
    }

    /// Processes a decoded command to the end (always settling the delivery).
    ///
    /// A command this instance has no handler for is checked against the definition version its
    /// saga is pinned to (from the store when this release was not built with it). When that
    /// version sends it, another release of this service handles it — a rolling upgrade runs
    /// both on one queue — and it is handed back (``handBack(_:command:definition:cause:logger:)``);
    /// otherwise it is dead-lettered.
    private func handle(
        _ body: SagaCommandBody, delivery: Delivery, span: any Span, logger: Logger
    ) async throws(InfrastructureFailure) {
        let command = body.command
        let handler = handlers.handler(for: command.command)
        // Built only on the paths that say it (not for every delivery).
        var noHandler: String { "service '\(configuration.service)' has no handler for command '\(command.command)'" }
        // Says first that there is no handler here, when there is none.
        let reason = { (why: String) in handler == nil ? "\(noHandler); \(why)" : why }
        // Without a handler, the stored definitions decide (another release may know the name).
        if handler != nil, (try? engine.definitions.definition(named: command.sagaName)) == nil {
            return await deadLetter(
                delivery, reason: "this process runs no saga definition named '\(command.sagaName)'", logger: logger)
        }

        do {
            let state: SagaState
            do {
                if let carried = engine.carriedState(of: body, redelivered: delivery.redelivered, logger: logger) {
                    state = carried
                    engine.metrics.commandState(saga: command.sagaName, service: configuration.service, carried: true)
                } else {
                    state = try await engine.store.load(command.sagaID)
                    engine.metrics.commandState(saga: command.sagaName, service: configuration.service, carried: false)
                }
            } catch let error as SagaError where error.code == .unknownSaga {
                // A command for no saga that no handler here serves: most likely misrouted.
                return await deadLetter(delivery, reason: handler == nil ? noHandler : error.message, logger: logger)
            }
            if state.name != command.sagaName {
                return await deadLetter(
                    delivery, reason: reason("saga \(state.id) follows '\(state.name)', but the command names '\(command.sagaName)'"),
                    logger: logger)
            }
            // The version the saga is pinned to decides, wherever it is defined.
            let definition: SagaDefinition
            do {
                definition = try await engine.definition(of: state)
            } catch let error as SagaError where error.code == .unknownDefinition {
                return await deadLetter(delivery, reason: reason("\(error)"), logger: logger)
            }
            guard let located = definition.locate(command: command.command), located.index == command.step,
                located.phase == command.phase
            else {
                return await deadLetter(
                    delivery,
                    reason: reason(
                        "command '\(command.command)' is not \(definition.describeStep(command.step)) \(command.phase.rawValue) of saga definition '\(definition.name)' version \(definition.version)"
                    ),
                    logger: logger
                )
            }
            guard SagaStateMachine(definition: definition).isCurrent(command, in: state) else {
                engine.metrics.stale(service: configuration.service)
                logger.info(
                    "ignoring a stale or duplicate command",
                    metadata: [
                        "saga.status": "\(state.status.rawValue)",
                        // Counted from 1 and named, as `saga show` says it.
                        "saga.current": .string(Self.position(of: state, in: definition)),
                    ]
                )
                return await settle(delivery, .ack, logger: logger)
            }
            guard let handler else {
                return await handBack(delivery, command: command, definition: definition, cause: .noHandler, logger: logger)
            }
            if command.phase == .action, let deadline = state.deadline, deadline < Date(), !definition.isForwardOnly(command.step) {
                _ = try await engine.advance(state.id, from: state, event: .deadlinePassed, logger: logger)
                return await settle(delivery, .ack, logger: logger)
            }
            if case .handBack(let cause) = try await runHandler(
                handler, command: command, state: state, definition: definition, span: span, logger: logger)
            {
                return await handBack(delivery, command: command, definition: definition, cause: cause, logger: logger)
            }
            await settle(delivery, .ack, logger: logger)
        } catch let error as SagaError where error.code == .storeRefused {
            // The store refused the data (a constraint, a trigger, a value it cannot hold), so
            // redelivering for ever would change nothing. Once more (the broker's redelivery), in
            // case another change of the saga was the cause; then to the dead-letter queue with
            // the store's message. The saga stays where it was: the reaper re-sends its command
            // and, after its attempts, marks it needs-attention; `saga dlq requeue` sends it again
            // once the cause is fixed.
            span.recordError(error)
            guard delivery.redelivered else {
                logger.warning("the store refused this command's change; trying it once more", metadata: ["error": "\(error)"])
                return await settle(delivery, .nack(requeue: true), logger: logger)
            }
            await deadLetter(delivery, reason: "the store refused this command's change twice: \(error)", logger: logger)
        } catch {
            // Infrastructure failure (store or broker). Nothing was acknowledged: the caller tries
            // again (``handleRetryingInPlace``), and a committed but unpublished command is sent
            // by the outbox relay.
            throw InfrastructureFailure(underlying: error)
        }
    }

    /// Runs the handler (with the step's timeout) and reports its outcome.
    private func runHandler(
        _ handler: @escaping SagaHandler, command: SagaCommand, state: SagaState, definition: SagaDefinition, span: any Span,
        logger: Logger
    ) async throws -> HandlerDisposition {
        let startedAt = Date()
        let clock = ContinuousClock()
        let began = clock.now
        let engine = self.engine
        let metrics = engine.metrics
        /// The error for a discarded report, with what to do about this run's effect decided from
        /// where the saga is now (the handler reads it as `context.discardedOutcome`).
        @Sendable func discarded(_ reason: String, latest: SagaState) -> DiscardedReport {
            let decision = DiscardedOutcome.decide(phase: command.phase, step: command.step, latest: latest)
            let error = SagaError.outcomeDiscarded(
                sagaID: state.id, command: command.command, reason: reason, advice: decision.advice)
            return DiscardedReport(error: error, decision: decision.outcome)
        }
        /// Records an outcome; throws `outcomeDiscarded` when the saga moved on meanwhile, so that
        /// the handler learns that its step did not count.
        let record: @Sendable (SagaEvent, [LocalWrite]) async throws -> Void = { event, localWrites in
            metrics.stepDuration(saga: command.sagaName, step: command.stepName, phase: command.phase, duration: clock.now - began)
            if command.phase == .compensation { CrashPoints.reach(.duringCompensation) }
            // The primary action's outcome counts in its circuit breaker (before the saga moves
            // on, so that the next saga to reach the step sees it), whatever becomes of it.
            if command.phase == .action, command.command == definition.steps[command.step].action {
                await engine.recordCircuit(definition, step: command.step, outcome: event, logger: logger)
            }
            switch try await engine.advance(state.id, from: state, event: event, localWrites: localWrites, logger: logger) {
            case .committed:
                CrashPoints.reach(.afterPublishBeforeAck)
            case .ignored(let reason, let latest):
                logger.info("outcome not recorded: the saga moved on meanwhile (\(reason))")
                throw discarded(reason, latest: latest)
            case .rejected(let reason, let latest):
                logger.error("outcome rejected: \(reason)")
                throw discarded(reason, latest: latest)
            }
        }
        let execution = StepExecution { result, localWrites in
            try await record(SagaParticipant.event(for: result, command: command, startedAt: startedAt), localWrites)
        }
        let context = SagaContext(
            sagaID: state.id, sagaName: state.name, stepName: command.stepName, step: command.step, phase: command.phase,
            attempt: command.attempt, command: command.command, payload: state.payload, sagaContext: state.context,
            idempotencyKey: command.idempotencyKey(incarnation: state.incarnation), logger: logger, execution: execution
        )
        let timeout = command.phase == .action ? definition.steps[command.step].options.timeout : nil
        CrashPoints.reach(.beforeHandler)
        var outcome = await Self.run(handler, context: context, timeout: timeout, deadlines: stepDeadlines)
        // The timeout claimed the outcome (even if the handler returned in the same instant).
        if let limit = execution.timeout { outcome = .timedOut(limit) }
        if let failure = execution.reportFailure { throw failure }
        switch outcome {
        case .returned:
            do {
                try await execution.finishIfNeeded(command.phase == .action ? .completed([:]) : .compensated)
            } catch let error as SagaError where error.code == .outcomeDiscarded {
                // The handler returned without reporting: its implicit success came too late.
                return .settled
            }
        case .threw(let error):
            if execution.isFinished {
                if (error as? SagaError)?.code == .outcomeDiscarded {
                    logger.info("handler ended with its discarded outcome", metadata: ["error": "\(error)"])
                } else {
                    logger.warning("handler threw after reporting its outcome; the error is ignored", metadata: ["error": "\(error)"])
                }
                return .settled
            }
            // A payload this release cannot decode may be another version's, which another
            // release decodes (a rolling upgrade): not this release's to fail the step for.
            if SagaHandlerReport.isPermanent(error), !judgesPayloads(of: definition) {
                return .handBack(.payloadOfAnotherVersion(error: "\(error)"))
            }
            let report = SagaHandlerReport.thrown(error, phase: command.phase)
            if case .failed(_, retryable: false) = report {
                logger.error(
                    "handler failed with an error no retry can mend; the step fails without retries",
                    metadata: ["error": "\(error)", "hint": "\(SagaHandlerReport.permanenceReason): fix the payload or the handler's type"])
            } else {
                logger.warning("handler failed: \(error)", metadata: ["error": "\(error)"])
            }
            span.recordError(error)
            do {
                try await execution.finishIfNeeded(report)
            } catch let error as SagaError where error.code == .outcomeDiscarded {
                return .settled
            }
        case .timedOut(let limit):
            // The handler has returned (cancellation is cooperative): whatever it did may have
            // committed, which the state machine accounts for.
            logger.warning("handler timed out after \(limit)")
            do {
                try await execution.finishTimedOut {
                    try await record(.stepTimedOut(step: command.step, attempt: command.attempt, after: limit, startedAt: startedAt), [])
                }
            } catch let error as SagaError where error.code == .outcomeDiscarded {
                return .settled
            }
        }
        return .settled
    }

    /// What is left to do with a delivery once its handler ran.
    enum HandlerDisposition: Sendable, Equatable {
        /// Acknowledge it: the outcome is recorded (or was discarded).
        case settled
        /// Hand it back for another release (``handBack(_:command:definition:cause:logger:)``).
        case handBack(HandBackCause)
    }

    /// Why a command goes back to its queue for another release of the service.
    enum HandBackCause: Sendable, Equatable {
        /// No handler for it here.
        case noHandler
        /// Its handler here could not decode the saga's payload (`error`), and the saga runs a
        /// version this release does not judge (``judgesPayloads(of:)``).
        case payloadOfAnotherVersion(error: String)
    }

    /// Whether a payload of `definition`'s sagas that the handlers here cannot decode is a
    /// failure of the step: only for the newest version of the name this release was built with.
    /// For an older version, or one only the store knows, the payload may be of a shape another
    /// release decodes (a rolling upgrade that changed it: `Docs/Upgrades.md`).
    func judgesPayloads(of definition: SagaDefinition) -> Bool {
        guard let newest = try? engine.definitions.definition(named: definition.name) else { return false }
        return newest.version == definition.version
    }

    private enum HandlerOutcome: Sendable {
        case returned
        case threw(any Error)
        case timedOut(Duration)
    }

    /// Runs the handler; with a timeout, races it against the step's deadline, kept by
    /// `deadlines` while the participant consumes (by a timer of its own otherwise).
    private static func run(
        _ handler: @escaping SagaHandler, context: SagaContext, timeout: Duration?, deadlines: DeadlineTicker
    ) async -> HandlerOutcome {
        guard let timeout else {
            do {
                try await handler(context)
                return .returned
            } catch {
                return .threw(error)
            }
        }
        let outcome = OneShot<HandlerOutcome>()
        // Set once the race is over: a deadline firing afterwards (taken by the ticker just
        // before it was cancelled) must not claim the outcome any more.
        let over = Mutex(false)
        let deadline = deadlines.schedule(at: .now + timeout) {
            over.withLock { over in
                // The timeout claims the outcome unless the handler is reporting one already;
                // from now on the handler's report is discarded.
                if !over, context.execution.claimTimeout(timeout) { outcome.set(.timedOut(timeout)) }
            }
        }
        if let deadline {
            defer {
                over.withLock { $0 = true }
                deadlines.cancel(deadline)
            }
            return await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        try await handler(context)
                        outcome.set(.returned)
                    } catch {
                        outcome.set(.threw(error))
                    }
                }
                let result = await outcome.value()
                // Cancels the handler after a timeout. A handler that ignores cancellation keeps
                // running: the task group waits for it, and the delivery stays unacknowledged.
                group.cancelAll()
                return result
            }
        }
        return await withTaskGroup(of: HandlerOutcome?.self) { group in
            group.addTask {
                do {
                    try await handler(context)
                    return .returned
                } catch {
                    return .threw(error)
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                // The timeout claims the outcome unless the handler is reporting one already;
                // from now on the handler's report is discarded.
                guard !Task.isCancelled, context.execution.claimTimeout(timeout) else { return nil }
                return .timedOut(timeout)
            }
            while let next = await group.next() {
                guard let outcome = next else { continue }
                // Cancels the handler (or the timer). A handler that ignores cancellation keeps
                // running: the task group waits for it, and the delivery stays unacknowledged.
                group.cancelAll()
                return outcome
            }
            return .returned
        }
    }

    static func event(for result: SagaHandlerReport, command: SagaCommand, startedAt: Date) -> SagaEvent {
        switch result {
        case .completed(let patch):
            .stepCompleted(step: command.step, attempt: command.attempt, patch: patch, startedAt: startedAt)
        case .failed(let error, let retryable):
            .stepFailed(step: command.step, attempt: command.attempt, error: error, retryable: retryable, startedAt: startedAt)
        case .compensated:
            .compensationCompleted(step: command.step, attempt: command.attempt, startedAt: startedAt)
        case .compensationFailed(let error):
            .compensationFailed(step: command.step, attempt: command.attempt, error: error, startedAt: startedAt)
        }
    }

    // MARK: - Handing back

    /// How long a command is handed back (``handBack(_:command:definition:cause:logger:)``) before it is
    /// dead-lettered: long enough for a rolling upgrade to bring up the release that handles it.
    static let handBackLimit: Duration = .seconds(600)

    /// Where a saga stands, in the words `saga show` uses: `step 3 'ship' (action #1)`.
    static func position(of state: SagaState, in definition: SagaDefinition) -> String {
        let phase = SagaStateMachine(definition: definition).phase(of: state)
        return "\(definition.describeStep(state.currentStep)) (\(phase.rawValue) #\(state.attempt))"
    }

    /// The pause before the `n`th hand-back (from 0): 1, 2, 4, 8, then 10 seconds, each rounded
    /// up to a delay level of the topology.
    static func handBackDelay(after handBacks: Int) -> Duration {
        .seconds(min(1 << min(handBacks, 4), 10))
    }

    /// Hands back a command of the saga's definition version that this instance has no handler
    /// for: another release of this service, consuming the same queue, has one (a rolling upgrade
    /// added the command, or removed it while sagas of the older version run). The command goes
    /// through a delay queue back to the commands exchange, so that the broker delivers it again,
    /// possibly to an instance that has the handler. Each hand-back is logged; after
    /// ``handBackLimit`` (counted from the first one, carried in a header) the command is
    /// dead-lettered, saying which release to deploy.
    private func handBack(
        _ delivery: Delivery, command: SagaCommand, definition: SagaDefinition, cause: HandBackCause, logger: Logger
    ) async {
        let now = Date()
        let handBacks = delivery.headers[SagaHeaders.handedBack].flatMap { Int($0) } ?? 0
        let since = delivery.headers[SagaHeaders.handedBackSince].flatMap { Double($0) }.map { Date(timeIntervalSince1970: $0) } ?? now
        let service = configuration.service
        let sender = "saga definition '\(definition.name)' version \(definition.version)"
        let built = engine.definitions.all.filter { $0.name == definition.name }.map { String($0.version) }
        let builtWith =
            built.isEmpty ? "no version of '\(definition.name)'" : "version \(built.joined(separator: ", ")) of '\(definition.name)'"
        if now.timeIntervalSince(since) >= Self.handBackLimit.seconds {
            // Without the hand-back headers: requeued from the dead-letter queue, it gets a new limit.
            var letter = delivery
            letter.headers.removeValue(forKey: SagaHeaders.handedBack)
            letter.headers.removeValue(forKey: SagaHeaders.handedBackSince)
            letter.headers.removeValue(forKey: SagaHeaders.handedBackUndecoded)
            // Whichever instance hands it back last, the reason says what every one of them saw:
            // a handler that could not decode it (carried in a header) is the cause to fix.
            let undecoded: String? =
                if case .payloadOfAnotherVersion(let error) = cause { error } else {
                    delivery.headers[SagaHeaders.handedBackUndecoded]
                }
            let reason =
                if let undecoded {
                    "no instance of service '\(service)' that took command '\(command.command)' within \(Self.handBackLimit) decoded the payload of its saga, of \(sender) (handed back \(handBacks) times; a handler failed with: \(undecoded)\(cause == .noHandler ? "; the last instance had no handler for it" : "")): deploy a release of '\(service)' whose handler decodes that version's payload (while its sagas run, handlers must accept every version's shape: Docs/Upgrades.md), then requeue the dead letter"
                } else {
                    "service '\(service)' has no handler for command '\(command.command)', which \(sender) sends; no instance of '\(service)' with a handler took it within \(Self.handBackLimit) (handed back \(handBacks) times): deploy a release of '\(service)' that handles it, then requeue the dead letter"
                }
            return await deadLetter(letter, reason: reason, logger: logger)
        }
        let level = configuration.topology.delayLevel(for: Self.handBackDelay(after: handBacks))
        var headers = delivery.headers
        headers[SagaHeaders.handedBack] = String(handBacks + 1)
        headers[SagaHeaders.handedBackSince] = String(since.timeIntervalSince1970)
        if case .payloadOfAnotherVersion(let error) = cause {
            headers[SagaHeaders.handedBackUndecoded] = String(error.prefix(500))
        }
        headers[SagaHeaders.delay] = String(level)
        let message = OutgoingMessage(
            exchange: configuration.topology.delayName(seconds: level), routingKey: command.command, body: delivery.body,
            headers: headers, messageId: delivery.messageId, contentType: delivery.contentType, type: delivery.type,
            correlationId: delivery.correlationId)
        // The first hand-back of a command in this process says what to check: a forgotten
        // registration looks exactly like a rolling upgrade from here.
        engine.metrics.handedBack(service: service)
        let others = { (line: HandBackLog.Line) in
            line.othersSinceLastLine > 0 ? " (and \(line.othersSinceLastLine) more hand-backs of it since the last line)" : ""
        }
        switch cause {
        case .noHandler:
            let line = handBackLog.line(for: command.command, at: .now)
            let sameDefinition = engine.definitions.definition(named: definition.name, version: definition.version) != nil
            let hint =
                sameDefinition
                ? "this release runs \(sender) too but registers no handler for '\(command.command)': register one, unless another release of '\(service)' on this queue handles it"
                : "deploy a release of '\(service)' that handles it if none runs"
            logger.log(
                level: line.level,
                "handing back command '\(command.command)'\(others(line)): service '\(service)' has no handler for it here; \(sender) sends it, so another release of '\(service)' may handle it; it returns in \(level) s",
                metadata: [
                    "saga.handedBack": "\(handBacks + 1)", "saga.definitionVersion": "\(definition.version)",
                    "hint": "\(hint); after \(Self.handBackLimit) it is dead-lettered",
                ])
        case .payloadOfAnotherVersion(let error):
            let line = handBackLog.line(for: "\(command.command) payload v\(definition.version)", at: .now)
            logger.log(
                level: line.level,
                "handing back command '\(command.command)'\(others(line)): its handler here cannot decode the payload of \(sender), and this release is built with \(builtWith), so another release of '\(service)' may decode it; it returns in \(level) s",
                metadata: [
                    "saga.handedBack": "\(handBacks + 1)", "saga.definitionVersion": "\(definition.version)", "error": "\(error)",
                    "hint":
                        "a rolling upgrade that changed the payload: the step is not failed for it; if no release decodes it, it is dead-lettered after \(Self.handBackLimit) (handlers must accept every running version's payload: Docs/Upgrades.md)",
                ])
        }
        do {
            try await engine.bus.publish(message)
            await settle(delivery, .ack, logger: logger)
        } catch {
            logger.warning("could not hand the command back; it will be redelivered", metadata: ["error": "\(error)"])
            try? await Task.sleep(for: .milliseconds(500))
            await settle(delivery, .nack(requeue: true), logger: logger)
        }
    }

    // MARK: - Settling

    private func deadLetter(_ delivery: Delivery, reason unescaped: String, logger: Logger) async {
        // Reasons quote what the message said (a content type, a name): printable on one line.
        let reason = PrintableText.escaped(unescaped)
        logger.error(
            "dead-lettering a message: \(reason) (saga dlq list shows it; saga dlq requeue sends it again once the cause is fixed)",
            metadata: ["queue": "\(delivery.queue)", "message.id": "\(delivery.messageId ?? "-")"])
        let letter = SagaMessages.deadLetter(
            delivery, reason: reason, service: configuration.service, topology: configuration.topology, now: Date())
        do {
            try await engine.bus.publish(letter)
            engine.metrics.deadLettered(service: configuration.service)
            await settle(delivery, .ack, logger: logger)
        } catch  where SagaMessages.rejectsInsteadOfDeadLettering(error) {
            // Too large to publish again: the broker dead-letters it unchanged through the queue's
            // dead-letter exchange (x-death reason "rejected"; `saga dlq list` explains it).
            logger.error(
                "cannot publish the dead letter; rejecting the message to the queue's dead-letter exchange",
                metadata: ["error": "\(error)"])
            engine.metrics.deadLettered(service: configuration.service)
            await settle(delivery, .reject, logger: logger)
        } catch {
            logger.error("could not dead-letter the message; it will be redelivered", metadata: ["error": "\(error)"])
            try? await Task.sleep(for: .seconds(1))
            await settle(delivery, .nack(requeue: true), logger: logger)
        }
    }

    private func settle(_ delivery: Delivery, _ settlement: Settlement, logger: Logger) async {
        // Acknowledged: the command went through (handled, stale, or dead-lettered) without the
        // store or the broker failing it.
        if case .ack = settlement { health.processed() }
        do {
            try await delivery.settler.settle(settlement)
        } catch {
            logger.warning("could not settle the delivery; the broker will redeliver it", metadata: ["error": "\(error)"])
        }
    }
}

extension SagaHeaders {
    /// How many times a command was handed back by instances without a handler for it (a
    /// rolling upgrade; see `Docs/Upgrades.md`).
    public static let handedBack = "x-sagakit-handed-back"
    /// When a command was first handed back (seconds since 1970); it is dead-lettered once
    /// handed back for ten minutes.
    public static let handedBackSince = "x-sagakit-handed-back-since"
    /// The error of the last handler that could not decode a handed-back command's payload (a
    /// release of another version took it), so that its dead letter names that cause whichever
    /// instance hands it back last.
    public static let handedBackUndecoded = "x-sagakit-handed-back-undecoded"
}

/// The commands a participant has handed back (``SagaParticipant``), shared by its copies.
/// The store or the broker failed a command's processing (not the handler, not the data).
struct InfrastructureFailure: Error {
    let underlying: any Error
}

final class HandBackLog: Sendable {
    /// How often a command's hand-backs are logged at `info` after the first (a warning); the
    /// others are `debug`.
    static let interval: Duration = .seconds(60)

    /// How one hand-back is logged.
    struct Line: Equatable {
        /// `warning` for a command's first, `info` at most once per ``HandBackLog/interval``,
        /// `debug` otherwise.
        let level: Logger.Level
        /// The hand-backs of the command logged at `debug` since its last line above `debug`.
        let othersSinceLastLine: Int
    }

    private let commands = Mutex<[String: (lastLine: ContinuousClock.Instant, quiet: Int)]>([:])

    /// Records a hand-back of `command` at `now`; how to log it.
    func line(for command: String, at now: ContinuousClock.Instant) -> Line {
        commands.withLock { commands in
            guard let seen = commands[command] else {
                commands[command] = (now, 0)
                return Line(level: .warning, othersSinceLastLine: 0)
            }
            guard seen.lastLine.duration(to: now) >= Self.interval else {
                commands[command] = (seen.lastLine, seen.quiet + 1)
                return Line(level: .debug, othersSinceLastLine: 0)
            }
            commands[command] = (now, 0)
            return Line(level: .info, othersSinceLastLine: seen.quiet)
        }
    }
}

/// What frees a participant's loop waiting for a place among its running handlers.
private enum PlaceSignal: Sendable {
    /// A handler finished.
    case freed
    /// A graceful stop began.
    case stop
}
