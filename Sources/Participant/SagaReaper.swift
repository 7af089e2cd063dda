public import Foundation
import Logging
import ServiceLifecycle

/// Finds stalled sagas (running or compensating, not updated for the stalled threshold) and
/// re-sends their current command; handlers are protected by the idempotency key and stale
/// deliveries are ignored, so a re-send is safe. After `maxReapAttempts` re-sends without
/// progress the saga needs attention. A stalled saga past its deadline (before the pivot) is
/// compensated instead.
///
/// Safe in several processes at once: sagas are claimed with a lease in the store, and every
/// change is a compare-and-swap on the saga's version.
public struct SagaReaper: Service {
    let engine: SagaEngine
    let configuration: ReaperConfiguration
    let logger: Logger
    let owner: String

    init(engine: SagaEngine, configuration: ReaperConfiguration, logger: Logger) {
        self.engine = engine
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "reaper"
        self.logger = logger
        self.owner = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):\(UUID().uuidString.prefix(8))"
    }

    /// Creates a reaper that runs on its own (the participants run one by default), from the
    /// values the process's components share.
    public init(configuration: ReaperConfiguration, runtime: SagaRuntime) {
        self.init(engine: runtime.engine, configuration: configuration, logger: runtime.logger)
    }

    /// Creates a reaper that runs on its own (the participants run one by default).
    public init(
        configuration: ReaperConfiguration, definitions: SagaDefinitionRegistry, bus: any MessageBus, store: any SagaStore,
        topology: SagaTopology = SagaTopology(), logger: Logger
    ) {
        self.init(
            engine: SagaEngine(store: store, bus: bus, definitions: definitions, topology: topology), configuration: configuration,
            logger: logger)
    }

    /// Polls until cancelled or gracefully shut down.
    ///
    /// - Throws: `invalidConfiguration` when the configuration is out of range (nothing else:
    ///   a failed pass is logged and retried at the next poll).
    public func run() async throws {
        try configuration.validate()
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await gracefulSleep(configuration.pollInterval)
                _ = try await reapOnce()
            } catch is CancellationError {
                return
            } catch {
                logger.warning("reaper pass failed; retrying at the next poll", metadata: ["error": "\(error)"])
            }
        }
    }

    /// What the reaper did to a stalled saga, for its log line: the command it re-sent, or why it
    /// stopped re-sending, with what to do.
    static func describe(
        _ next: SagaState, from state: SagaState, after event: SagaEvent, waitingFor: [String], maxReapAttempts: Int
    ) -> String {
        let commands = waitingFor.isEmpty ? "its command" : waitingFor.map { "'\($0)'" }.joined(separator: ", ")
        if case .deadlinePassed = event {
            return "a stalled saga passed its deadline; it is \(next.status.rawValue) now"
        }
        switch next.status {
        case .needsAttention:
            return
                "a stalled saga needs attention: \(commands) re-sent \(state.reapAttempts) times without progress; see why its service does not take it (saga show, saga services), then saga retry"
        default:
            let of = maxReapAttempts == Int.max ? "no live process handles it yet" : "re-send \(next.reapAttempts) of \(maxReapAttempts)"
            return "re-sent \(commands) to a stalled saga (\(of))"
        }
    }

    /// One pass: claims stalled sagas and re-sends (or gives up on) each. Returns the sagas it
    /// changed.
    @discardableResult
    public func reapOnce(now: Date = Date()) async throws -> [SagaState] {
        let stalled = try await engine.store.claimStalled(
            updatedBefore: now.addingTimeInterval(-configuration.stalledThreshold.seconds),
            now: now,
            owner: owner,
            lease: configuration.pollInterval,
            limit: configuration.batchSize,
            topology: engine.topology.prefix
        )
        var changed = try await endExpiredWaits(now: now)
        let handlers = stalled.isEmpty ? nil : await liveHandlers(now: now)
        for state in stalled {
            var logger = logger.with(saga: state.id, name: state.name)
            // A store can be shared by deployments with other topologies or other definitions:
            // their sagas are theirs to reap. The store claimed only this topology's sagas (and
            // those that name none); this guards against a store whose claim does not filter.
            if let prefix = state.context[SagaTopology.contextKey], prefix != engine.topology.prefix {
                logger.debug("skipping a stalled saga of another topology", metadata: ["saga.topology": "\(prefix)"])
                continue
            }
            // Any participant re-sends any stalled saga of its topology (it only re-publishes the
            // command the saga waits for): the definition comes from this process or, for one
            // that only other services run, from the store, where every participant registers
            // its own. Skipping them would leave them to the other services' reapers, which this
            // one's claims (and leases) keep from them.
            guard let definition = try? await engine.definition(of: state) else {
                logger.warning(
                    "a stalled saga's definition is neither in this process nor in the store: start a service that runs it, or act on it with the saga tool (saga compensate, saga resolve)",
                    metadata: ["saga.definitionVersion": "\(state.definitionVersion)"])
                continue
            }
            // Its lines name the commands it waits for, whose service is the one to look at (the
            // reaper runs in any participant).
            let waitingFor = SagaStateMachine(definition: definition).commands(for: state).map(\.command.command)
            logger[metadataKey: "saga.waitingFor"] = "\(waitingFor.joined(separator: ","))"
            let pastDeadline = state.deadline.map { $0 < now } ?? false
            // A command no live process handles (its service is down, for a deploy or a
            // maintenance window) is not lost: the saga waits for the service instead of needing
            // attention once the re-sends are used up. The re-sends go on, so that the saga keeps
            // its turn among the stalled ones, and the attempts count again once a process of the
            // service is back.
            let nobodyToTakeIt =
                !waitingFor.isEmpty && (handlers.map { handlers in !waitingFor.contains(where: handlers.contains) } ?? false)
            let maxReapAttempts = nobodyToTakeIt ? Int.max : configuration.maxReapAttempts
            if nobodyToTakeIt, state.reapAttempts >= configuration.maxReapAttempts {
                logger.warning(
                    "no live process handles the command this stalled saga waits for: it keeps waiting for one instead of needing attention (saga services shows which service is down)"
                )
            }
            let event: SagaEvent =
                pastDeadline && state.status == .running ? .deadlinePassed : .foundStalled(maxReapAttempts: maxReapAttempts)
            CrashPoints.reach(.insideReaper)
            do {
                var applied = event
                var outcome = try await engine.advance(state.id, from: state, event: event, logger: logger)
                if case .ignored = outcome, case .deadlinePassed = event {
                    // Past the pivot a deadline does not compensate: re-send instead.
                    applied = .foundStalled(maxReapAttempts: maxReapAttempts)
                    outcome = try await engine.advance(state.id, from: state, event: applied, logger: logger)
                }
                if case .committed(let next) = outcome {
                    logger.warning(
                        "\(Self.describe(next, from: state, after: applied, waitingFor: waitingFor, maxReapAttempts: maxReapAttempts))",
                        metadata: [
                            "saga.status": "\(next.status.rawValue)", "saga.reapAttempts": "\(next.reapAttempts)",
                            "saga.stalledSince": "\(state.lastProgressAt.formatted(.iso8601))",
                        ]
                    )
                    changed.append(next)
                }
            } catch {
                logger.error("could not handle a stalled saga", metadata: ["error": "\(error)"])
            }
        }
        changed += try await compensatePastDeadlines(now: now, skipping: Set(changed.map(\.id)))
        return changed
    }

    /// The commands that a live process of this topology handles, from the participants'
    /// presence records; `nil` when the store keeps none or none of this topology reports itself
    /// (presence off): then every command counts as handled.
    private func liveHandlers(now: Date) async -> Set<String>? {
        guard let instances = try? await engine.store.participants() else { return nil }
        let own = instances.filter { $0.topology == engine.topology.prefix }
        guard !own.isEmpty else { return nil }
        return Set(own.filter { $0.isLive(at: now) }.flatMap(\.commands))
    }

    /// Compensates running and waiting sagas past their deadline (before their pivot: past it
    /// the state machine has cleared the deadline). A delivered command checks the deadline
    /// itself; while the step's service is down nothing is delivered, and the stalled threshold
    /// (15 minutes by default) would hold the compensation back that long; a waiting saga has no
    /// command at all. For each definition of this process with a deadline, up to `batchSize` of
    /// its sagas; several reapers may do this at once (the compare-and-swap lets one of them act).
    private func compensatePastDeadlines(now: Date, skipping handled: Set<SagaID>) async throws -> [SagaState] {
        var changed: [SagaState] = []
        for name in Set(engine.definitions.all.filter { $0.deadline != nil }.map(\.name)).sorted() {
            let due = try await engine.store.list(
                SagaQuery(
                    statuses: [.running, .waiting], name: name, topology: engine.topology.prefix, deadlineBefore: now,
                    limit: configuration.batchSize))
            for state in due where !handled.contains(state.id) {
                // The query finds them; the saga's own deadline decides (a store that does not
                // filter by deadline returns others too).
                guard let deadline = state.deadline, deadline < now else { continue }
                if let prefix = state.context[SagaTopology.contextKey], prefix != engine.topology.prefix { continue }
                var logger = logger.with(saga: state.id, name: state.name)
                if let definition = engine.definitions.definition(named: state.name, version: state.definitionVersion) {
                    let waitingFor = SagaStateMachine(definition: definition).commands(for: state).map(\.command.command)
                    logger[metadataKey: "saga.waitingFor"] = "\(waitingFor.joined(separator: ","))"
                }
                do {
                    let outcome = try await engine.advance(state.id, from: state, event: .deadlinePassed, logger: logger)
                    if case .committed(let next) = outcome {
                        logger.warning(
                            state.status == .waiting
                                ? "a waiting saga passed its deadline; compensating"
                                : "a saga passed its deadline while its command waited for a consumer; compensating",
                            metadata: ["saga.deadline": "\(deadline.formatted(.iso8601))"])
                        changed.append(next)
                    }
                } catch {
                    logger.error("could not compensate a saga past its deadline", metadata: ["error": "\(error)"])
                }
            }
        }
        return changed
    }

    /// Ends the waits whose timeout passed (waiting sagas are never stalled: they are not
    /// claimed above): each is compensated or goes on, as its wait step declares. For each wait
    /// step of each definition version of this process, up to `batchSize` of the sagas waiting
    /// there since before its timeout (a saga's `updatedAt` is when it began to wait: nothing
    /// but what ends the wait moves it, see ``SagaStateMachine/apply(_:to:now:)``), so every
    /// saga found has timed out and leaves the wait: no saga still within its wait takes a place
    /// in the batch. A waiting saga past its deadline is compensated, here or by
    /// ``compensatePastDeadlines(now:skipping:)``. Several reapers may do this at once: the
    /// compare-and-swap lets one of them end a wait.
    private func endExpiredWaits(now: Date) async throws -> [SagaState] {
        var candidates: [SagaState] = []
        let definitions = engine.definitions.all.sorted { ($0.name, $0.version) < ($1.name, $1.version) }
        for definition in definitions {
            for (index, step) in definition.steps.enumerated() {
                guard let wait = step.wait else { continue }
                candidates += try await engine.store.list(
                    SagaQuery(
                        statuses: [.waiting], name: definition.name, updatedBefore: now.addingTimeInterval(-wait.timeout.seconds),
                        definitionVersion: definition.version, topology: engine.topology.prefix, currentStep: index,
                        limit: configuration.batchSize))
            }
        }
        var changed: [SagaState] = []
        for state in candidates {
            let logger = logger.with(saga: state.id, name: state.name)
            if let prefix = state.context[SagaTopology.contextKey], prefix != engine.topology.prefix { continue }
            do {
                let event: SagaEvent = (state.deadline.map { $0 < now } ?? false) ? .deadlinePassed : .waitExpired
                if case .committed(let next) = try await engine.advance(state.id, from: state, event: event, logger: logger) {
                    logger.warning(
                        event == .deadlinePassed ? "a waiting saga passed its deadline" : "a wait timed out without its signal",
                        metadata: ["saga.status": "\(next.status.rawValue)", "saga.waitingSince": "\(state.updatedAt)"])
                    changed.append(next)
                }
            } catch {
                logger.error("could not end an expired wait", metadata: ["error": "\(error)"])
            }
        }
        return changed
    }
}
