import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// A participant instance that stops gracefully while its handlers run lets them finish and
/// acknowledge, and the service's other instance does not run those steps meanwhile. A user's
/// rolling deploy of a slow service saw every in-flight step run a second time, concurrently, on
/// the other instance: the stopping instance's channel was closed at once, which requeued them.
@Suite(
    "Graceful stop of a participant instance on RabbitMQ",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(2))
)
struct GracefulStopTests {
    /// Every step is running on instance a (handlers at once ≥ its deliveries) when it stops, and
    /// its handlers go on for a while after the stop: had the stop requeued them, instance b would
    /// have run them meanwhile.
    @Test func anInstanceThatStopsFinishesItsRunningStepsAndNobodyRunsThemTwice() async throws {
        guard let result = try await Self.stopWhileRunning(handlerLimit: 64, releaseA: .afterTheStop(.milliseconds(1500))) else {
            return
        }
        #expect(result.finals.allSatisfy { $0 == .completed }, "\(result.finals)")
        #expect(result.inFlightOnA.count == 6, "\(result.inFlightOnA)")
        #expect(result.runs.endedCount(instance: "a") == result.inFlightOnA.count, "a's running handlers finished")
        for id in result.inFlightOnA {
            #expect(result.runs.runs(of: id) == ["a"], "saga \(id), started on a before it stopped, ran on \(result.runs.runs(of: id))")
        }
        #expect(result.runs.overlapping().isEmpty, "steps ran twice at the same time: \(result.runs.overlapping())")
    }

    /// Instance a runs 2 steps at once and holds the others as deliveries it has not started:
    /// those go to instance b as soon as a stops, not once a's running steps end. a's steps end
    /// only once b has started one (or after 20 s), so that the order does not depend on how
    /// loaded the machine is.
    @Test func theDeliveriesItHadNotStartedGoToTheOtherInstanceAtOnce() async throws {
        guard let result = try await Self.stopWhileRunning(handlerLimit: 2, releaseA: .whenBStarts(orAfter: .seconds(20))) else {
            return
        }
        #expect(result.finals.allSatisfy { $0 == .completed }, "\(result.finals)")
        #expect(result.inFlightOnA.count == 2, "\(result.inFlightOnA)")
        #expect(result.runs.startedCount(instance: "b") == 4)
        let firstOnB = try #require(result.runs.firstStart(instance: "b"))
        let lastEndOnA = try #require(result.runs.lastEnd(instance: "a"))
        #expect(firstOnB < lastEndOnA, "b started the first handed-back step only \(firstOnB - lastEndOnA) after a's running steps ended")
        #expect(result.runs.overlapping().isEmpty, "steps ran twice at the same time: \(result.runs.overlapping())")
    }

    /// When instance a's handlers finish.
    enum ReleaseOfA {
        /// This long after a was told to stop (sooner when b starts a step, which fails the test).
        case afterTheStop(Duration)
        /// When instance b starts a step, or after the given time at the latest.
        case whenBStarts(orAfter: Duration)
    }

    struct Result {
        var runs: RunLedger
        var inFlightOnA: [SagaID]
        var finals: [SagaStatus]
    }

    /// Six one-step sagas; instance a (prefetch 8, `handlerLimit` at once) takes them, instance b
    /// comes up, a stops gracefully while its handlers run, which end as `releaseA` says (b's
    /// steps take 50 ms); then every saga is waited for. `nil` without a broker.
    static func stopWhileRunning(handlerLimit: Int, releaseA: ReleaseOfA) async throws -> Result? {
        guard let amqp = try TestBroker.availableURL() else { return nil }
        let tag = UUID().uuidString.prefix(8).lowercased()
        let topology = SagaTopology(prefix: "stop-\(tag)", delayLevels: [1])
        let definition = try SagaBuilder("slow-\(tag)").step("work", action: "slow-\(tag).work").build()
        let definitions = try SagaDefinitionRegistry([definition])
        let store = InMemorySagaStore()
        let runs = RunLedger()
        let aMayFinish = Gate()

        func handlers(instance: String) -> SagaHandlerRegistry {
            var registry = SagaHandlerRegistry()
            registry.register("slow-\(tag).work") { context in
                let started = ContinuousClock.now
                runs.started(context.sagaID, instance: instance)
                if instance == "a" {
                    await aMayFinish.wait()
                } else {
                    // b's first step ends a's wait (in the first test b never gets one).
                    aMayFinish.open()
                    try? await Task.sleep(for: .milliseconds(50))
                }
                runs.ended(context.sagaID, instance: instance, started: started)
                try await context.completeStep()
            }
            return registry
        }
        let starterBus = try await RabbitMQBus.connect(url: amqp)
        let manager = SagaManager(definitions: definitions, bus: starterBus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        try await starterBus.declare(topology.topology(forService: "slow", commands: ["slow-\(tag).work"]))

        func instance(_ name: String) async throws -> (ServiceGroup, Task<Void, any Error>, RabbitMQBus) {
            let bus = try await RabbitMQBus.connect(url: amqp)
            // The relay's grace is long: on a loaded machine a relay that re-publishes a command
            // whose sent mark is late would run a step twice (at-least-once, not this test's
            // subject).
            var configuration = ParticipantConfiguration(
                service: "slow", topology: topology, prefetch: 8, maxConcurrentHandlers: handlerLimit,
                outboxPollInterval: .seconds(1), outboxGracePeriod: .seconds(60), reaper: nil)
            let health = SagaHealth()
            configuration.health = health
            let participant = SagaParticipant(
                configuration: configuration, definitions: definitions, handlers: handlers(instance: name), bus: bus, store: store,
                logger: quietTestLogger)
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [.init(service: participant)], logger: quietTestLogger))
            // Test code: the group runs until the test shuts it down gracefully.
            let running = Task { try await group.run() }
            // Consuming before it counts.
            let deadline = ContinuousClock.now + .seconds(30)
            while !health.report().isReady, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            return (group, running, bus)
        }

        let (groupA, runningA, busA) = try await instance("a")
        var ids: [SagaID] = []
        for index in 0..<6 { ids.append(try await manager.start(definition.name, payload: ["n": .string("\(index)")])) }
        // a takes them all (prefetch 8) and runs up to its limit; b comes up while they run.
        let deadline = ContinuousClock.now + .seconds(20)
        while runs.startedCount(instance: "a") < min(handlerLimit, 6), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let (groupB, runningB, busB) = try await instance("b")

        // a stops gracefully while its handlers run.
        await groupA.triggerGracefulShutdown()
        switch releaseA {
        case .afterTheStop(let time):
            try await Task.sleep(for: time)
            aMayFinish.open()
        case .whenBStarts(let time):
            let end = ContinuousClock.now + time
            while !aMayFinish.isOpen, ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(20)) }
            aMayFinish.open()
        }
        try await runningA.value
        await busA.shutdown()
        let inFlightOnA = runs.sagas(instance: "a")

        var finals: [SagaStatus] = []
        for id in ids {
            let end = ContinuousClock.now + .seconds(30)
            var state = try await store.load(id)
            while !state.status.hasEnded, ContinuousClock.now < end {
                try await Task.sleep(for: .milliseconds(50))
                state = try await store.load(id)
            }
            finals.append(state.status)
        }
        await groupB.triggerGracefulShutdown()
        try await runningB.value
        await busB.shutdown()
        await starterBus.shutdown()
        return Result(runs: runs, inFlightOnA: inFlightOnA, finals: finals)
    }
}

/// Which instance ran which saga's step, and when.
final class RunLedger: Sendable {
    private struct Run {
        var saga: SagaID
        var instance: String
        var started: ContinuousClock.Instant
        var ended: ContinuousClock.Instant?
    }
    private let state = Mutex<[Run]>([])

    func started(_ saga: SagaID, instance: String) {
        state.withLock { $0.append(Run(saga: saga, instance: instance, started: .now)) }
    }

    func ended(_ saga: SagaID, instance: String, started: ContinuousClock.Instant) {
        state.withLock { runs in
            if let index = runs.lastIndex(where: { $0.saga == saga && $0.instance == instance && $0.ended == nil }) {
                runs[index].ended = .now
            }
        }
    }

    func startedCount(instance: String) -> Int { state.withLock { $0.filter { $0.instance == instance }.count } }
    func endedCount(instance: String) -> Int { state.withLock { $0.filter { $0.instance == instance && $0.ended != nil }.count } }
    func sagas(instance: String) -> [SagaID] { state.withLock { $0.filter { $0.instance == instance }.map(\.saga) } }
    func runs(of saga: SagaID) -> [String] { state.withLock { $0.filter { $0.saga == saga }.map(\.instance) } }
    func lastEnd(instance: String) -> ContinuousClock.Instant? {
        state.withLock { $0.filter { $0.instance == instance }.compactMap(\.ended).max() }
    }
    func firstStart(instance: String) -> ContinuousClock.Instant? {
        state.withLock { $0.filter { $0.instance == instance }.map(\.started).min() }
    }

    /// The sagas whose step ran on two instances at overlapping times.
    func overlapping() -> [SagaID] {
        state.withLock { runs in
            var found: Set<SagaID> = []
            for (i, one) in runs.enumerated() {
                for other in runs[(i + 1)...] where other.saga == one.saga {
                    let oneEnd = one.ended ?? .now
                    let otherEnd = other.ended ?? .now
                    if one.started < otherEnd && other.started < oneEnd { found.insert(one.saga) }
                }
            }
            return found.sorted()
        }
    }
}
