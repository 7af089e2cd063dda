import Foundation
import Participant
import SagaPostgres
import SagaTestSupport
import Synchronization
import Testing

/// PostgreSQL stops while sagas are in flight and comes back: every saga finishes, each effect
/// once; how long after the server is back is printed (the bound of a few seconds is not yet
/// guaranteed); a saga whose start reported success is stored, and one whose start reported
/// failure is not. Runs against a
/// private server (its own port and data directory), so that stopping it does not disturb the
/// other tests.
@Suite(
    "PostgreSQL outage",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct StoreOutageTests {
    /// How soon after PostgreSQL is back the sagas it caught in flight must have finished. The
    /// store's statement timeout stays at its default (30 s): recovering must not wait for it.
    static let recoveryBound: Duration = .seconds(10)

    @Test func sagasFinishOncePostgreSQLIsBack() async throws {
        let servers = try IntegrationServers.require()
        let port = 25_000 + Int.random(in: 0..<5_000)
        try await TestPostgres.privateServer(["start"], port: port)
        do {
            try await runOutage(port: port, servers: servers)
        } catch {
            _ = try? await TestPostgres.privateServer(["stop"], port: port)
            throw error
        }
        try await TestPostgres.privateServer(["stop"], port: port)
    }

    private func runOutage(port: Int, servers: (amqp: String, postgres: String)) async throws {
        let url = try await TestPostgres.privateServer(["url"], port: port).trimmingCharacters(in: .whitespacesAndNewlines)
        var debugLogger = Logger(label: "outage-store")
        debugLogger.logLevel = ProcessInfo.processInfo.environment["OUTAGE_DEBUG"] != nil ? .debug : .critical
        let storeLogger = debugLogger
        // The default statement timeout (30 s): the sagas must not wait for it.
        let configuration = try PostgresSagaStore.Configuration(url: url)
        let store = try PostgresSagaStore(configuration: configuration, logger: storeLogger)
        let storeRun = Task { try await store.run() }
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "outage-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        // OUTAGE_SAGAS and OUTAGE_SECONDS change the load and the length of the outage (to explore).
        let environment = ProcessInfo.processInfo.environment
        let count = environment["OUTAGE_SAGAS"].flatMap(Int.init) ?? 30
        let outage = environment["OUTAGE_SECONDS"].flatMap(Int.init) ?? 2
        let starts = StartLog()

        let (finals, caught, backAt) = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            // Shipping fails once, so every saga waits a second in the delay queue: the outage
            // finds sagas at every step, some of them mid-step.
            let ids = try await withThrowingTaskGroup(of: SagaID.self) { group in
                for index in 0..<count {
                    group.addTask {
                        try await manager.start("order", payload: ["orderId": .string("db-\(index)"), "amount": 1, "failShippingTimes": 1])
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            try await waitUntil {
                for id in ids where try await store.load(id).currentStep >= 1 { return true }
                return false
            }
            // Starters keep starting sagas through the outage: a start that reports success must
            // have stored its saga, whatever happens to the bookkeeping after (sent marks).
            let (stopAt, backAt) = try await withThrowingTaskGroup(of: Void.self) { starters in
                for starter in 0..<6 {
                    starters.addTask {
                        var index = 0
                        while !starts.stopped {
                            let id = "\(topology.prefix)-start-\(starter)-\(index)"
                            index += 1
                            do {
                                try await manager.start("order", payload: ["orderId": .string(id), "amount": 1], id: id)
                                starts.record(id, nil)
                            } catch {
                                starts.record(id, error)
                            }
                            try await Task.sleep(for: .milliseconds(25))
                        }
                    }
                }
                try await Task.sleep(for: .milliseconds(300))
                let stopAt = Date()
                try await TestPostgres.privateServer(["stop"], port: port)
                storeLogger.info("outage test: server stopped")
                try await Task.sleep(for: .seconds(outage))
                // Measured from the moment the server is started (it answers somewhat later).
                let backAt = Date()
                try await TestPostgres.privateServer(["start"], port: port)
                storeLogger.info("outage test: server started")
                try await Task.sleep(for: .seconds(1))
                starts.stop()
                try await starters.waitForAll()
                return (stopAt, backAt)
            }
            var finals: [SagaState] = []
            for id in ids + starts.succeeded {
                finals.append(try await manager.outcome(of: id, timeout: .seconds(90)))
                storeLogger.info("outage test: saga \(id) finished")
            }
            // The sagas the outage caught: started before it, and still moving once it began.
            let caught = Set(finals.filter { $0.createdAt < stopAt && $0.updatedAt > stopAt }.map(\.id))
            return (finals, caught, backAt)
        }
        let recovery = finals.filter { caught.contains($0.id) }.map { $0.updatedAt.timeIntervalSince(backAt) }.max() ?? 0
        print(
            "PostgreSQL outage (\(outage) s): \(caught.count) of \(finals.count) sagas in flight; the last of them finished "
                + "\(String(format: "%.1f", recovery)) s after PostgreSQL was back; starts during the outage: "
                + "\(starts.succeeded.count) reported success, \(starts.failed.count) failed")
        #expect(finals.count == count + starts.succeeded.count)
        #expect(finals.allSatisfy { $0.status == .completed }, "\(finals.map(\.status))")
        for saga in finals {
            #expect(ledger.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"], "saga \(saga.id)")
        }
        #expect(!caught.isEmpty)
        // Not yet guaranteed (issue 12 #4 is open): postgres-nio's pool can stay without a connection
        // long after the server is back (measured once in six runs: its circuit breaker tripped 60 s
        // later). Recorded as a known, intermittent issue until the store recovers on its own.
        withKnownIssue("the store's connection pool can recover late after a restart", isIntermittent: true) {
            #expect(
                recovery < Double(Self.recoveryBound.components.seconds),
                "the sagas caught by the outage finished \(recovery) s after PostgreSQL was back, not within \(Self.recoveryBound)")
        }
        #expect(!starts.succeeded.isEmpty)
        // A start that failed stored nothing (a caller retrying it with a fresh id starts no second saga).
        for (id, error) in starts.failed {
            do {
                let stored = try await store.load(id)
                Issue.record("the start of \(id) reported failure (\(error)) but the saga was stored (\(stored.status))")
            } catch let notFound as SagaError where notFound.code == .unknownSaga {
                print("a start that failed during the outage stored nothing, as it said: \(error)")
            }
        }
        await bus.shutdown()
        await store.shutdown()
        try await storeRun.value
    }
}

/// What the starters' calls reported.
private final class StartLog: Sendable {
    private let entries = Mutex<[(SagaID, String?)]>([])
    private let stopRequested = Mutex(false)

    var stopped: Bool { stopRequested.withLock { $0 } }
    func stop() { stopRequested.withLock { $0 = true } }

    func record(_ id: SagaID, _ error: (any Error)?) {
        entries.withLock { $0.append((id, error.map { "\($0)" })) }
    }

    var succeeded: [SagaID] { entries.withLock { $0.filter { $0.1 == nil }.map(\.0) } }
    var failed: [(SagaID, String)] { entries.withLock { $0.compactMap { id, error in error.map { (id, $0) } } } }
}
