import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// Sagas across a three-node RabbitMQ cluster with quorum queues, while nodes die: first a node
/// nobody is connected to, later (after it is back) the node every participant is connected to.
/// Every saga must finish with each effect applied once, and the participants must reconnect to
/// the surviving nodes through the bus's list of broker addresses.
///
/// Starts its own cluster (`scripts/rabbitmq-cluster.sh`, ports 5781–5783) and stops it after.
@Suite(
    "RabbitMQ cluster",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(8))
)
struct ClusterTests {
    @Test func sagasFinishWhileClusterNodesDie() async throws {
        let started = ContinuousClock.now
        try await TestCluster.run(["start"])
        print("cluster: three nodes up in \(ContinuousClock.now - started)")
        do {
            try await runAcrossCluster()
        } catch {
            _ = try? await TestCluster.run(["stop"])
            throw error
        }
        try await TestCluster.run(["stop"])
    }

    private func bus(_ name: String) throws -> RabbitMQBus {
        var configuration = try RabbitMQConfiguration(url: TestCluster.url)
        configuration.connectionName = name
        configuration.reconnectDelayMax = .seconds(1)
        configuration.logger = quietTestLogger
        return RabbitMQBus(configuration: configuration)
    }

    private func runAcrossCluster() async throws {
        let store = InMemorySagaStore()
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "cluster-\(UUID().uuidString.prefix(6))", queueKind: .quorum, delayLevels: [1])
        let buses = try (1...3).map { try bus("participant-\($0)") }
        let starter = try bus("starter")
        for bus in buses + [starter] { try await bus.connect() }
        let finished = Progress()
        let stopStarting = Progress()
        let clock = ContinuousClock()
        let began = clock.now
        // A reaper with a short threshold re-sends anything a dying node swallowed; the test
        // reports how many sagas needed it.
        let reaper = ReaperConfiguration(pollInterval: .seconds(2), stalledThreshold: .seconds(8), maxReapAttempts: 10)

        let ids = try await withParticipants(
            orderHandlers(ledger: ledger), buses: buses, starterBus: starter, store: store, topology: topology, reaper: reaper
        ) { manager in
            try await withThrowingTaskGroup(of: [SagaID].self) { group in
                // The faults, on a timeline, while sagas keep starting.
                group.addTask {
                    try await Task.sleep(for: .seconds(5))
                    print("cluster: \(finished.count) sagas done; killing node 3 (no client on it)")
                    try await TestCluster.run(["stop-node", "3"])
                    try await Task.sleep(for: .seconds(3))
                    try await TestCluster.run(["start-node", "3"])
                    print("cluster: node 3 back at \(clock.now - began); \(finished.count) sagas done")
                    // A quorum queue survives one lost member at a time: before the next fault,
                    // wait (as an operator would before taking a node down) until node 3's
                    // replicas have caught up, so losing node 1 leaves every queue a quorum.
                    let catchingUp = clock.now
                    try await TestCluster.run(["await-quorum", "1"])
                    print("cluster: node 3's queue replicas online \(clock.now - catchingUp) later")
                    try await Task.sleep(for: .seconds(3))
                    let before = finished.count
                    print("cluster: \(before) sagas done; killing node 1 (every client is connected to it)")
                    let killed = clock.now
                    try await TestCluster.run(["stop-node", "1"])
                    try await waitFor({ finished.count > before + 20 }, orAfter: .seconds(20)) {
                        // Sagas did not resume: show how the surviving nodes see the queues.
                        let queues = (try? await TestCluster.run(["queues", "2"])) ?? "(node 2 did not answer)"
                        print("cluster: sagas not finishing 20 s after node 1 died; queues as node 2 sees them:\n\(queues)")
                    }
                    print("cluster: sagas finishing again \(clock.now - killed) after node 1 died")
                    try await Task.sleep(for: .seconds(5))
                    stopStarting.increment()
                    return []
                }
                // Sagas started at a steady pace (about 40 a second, at most 40 in flight) until
                // the faults are over.
                group.addTask {
                    try await withThrowingTaskGroup(of: SagaID.self) { sagas in
                        var ids: [SagaID] = []
                        var index = 0
                        while stopStarting.count == 0 {
                            if index >= 40, let id = try await sagas.next() { ids.append(id) }
                            let id = "cluster-\(index)"
                            index += 1
                            sagas.addTask {
                                try await manager.start("order", payload: ["orderId": .string(id), "amount": 1], id: id)
                                _ = try await manager.outcome(of: id, timeout: .seconds(180))
                                finished.increment()
                                return id
                            }
                            try await Task.sleep(for: .milliseconds(25))
                        }
                        for try await id in sagas { ids.append(id) }
                        return ids
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
        }
        var finals: [SagaState] = []
        for id in ids { finals.append(try await store.load(id)) }
        let count = finals.count
        let elapsed = clock.now - began
        let reaped = finals.filter { $0.reapAttempts > 0 }.count
        print(
            "cluster: \(count) sagas in \(elapsed) (\(Int(Double(count) / elapsed.seconds)) sagas/s) with two node failures; \(reaped) needed the reaper"
        )
        #expect(finals.allSatisfy { $0.status == .completed }, "\(Dictionary(grouping: finals, by: \.status).mapValues(\.count))")
        for saga in finals {
            #expect(ledger.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"], "saga \(saga.id)")
        }
        for bus in buses + [starter] { await bus.shutdown() }
    }
}

/// Polls `condition` every 50 ms for at most three minutes; runs `report` once if the condition
/// still does not hold after `patience`.
private func waitFor(
    _ condition: @Sendable () -> Bool, orAfter patience: Duration, _ report: () async -> Void
) async throws {
    let started = ContinuousClock.now
    let deadline = started.advanced(by: .seconds(180))
    var reported = false
    while !condition() {
        if ContinuousClock.now > deadline { throw TestFailure("condition not met within 180 s") }
        if !reported, ContinuousClock.now - started > patience {
            reported = true
            await report()
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// Sagas finished so far.
private final class Progress: Sendable {
    private let value = Atomic<Int>(0)
    var count: Int { value.load(ordering: .relaxed) }
    func increment() { value.add(1, ordering: .relaxed) }
}
