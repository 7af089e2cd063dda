import Foundation
import Participant
import SagaPostgres
import SagaTestSupport
import Synchronization
import Testing

/// PostgreSQL restarts (`pg_ctl -m fast stop`, a pause, start) while sagas are in flight — more
/// than once — with the store's default statement timeout (30 s): after each restart the store
/// answers again within ``storeBound``; every saga finishes, all of them within ``sagaBound`` of
/// the last restart, each effect once; a saga whose start reported success is
/// stored, and one whose start reported failure is not. The recovery times are printed. Runs
/// against a private server (its own port and data directory), so that stopping it does not
/// disturb the other tests.
///
/// Issue 12: it used to stall in about half of the runs, a statement written to a connection the
/// server had just closed never returning (see `PostgresStatement` and
/// `PostgresClosedConnectionTests`).
@Suite(
    "PostgreSQL outage",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(4))
)
struct StoreOutageTests {
    /// How soon after PostgreSQL is ready again (`pg_ctl -w start` returned) the store must
    /// answer a statement. The pool is replaced when it has had no connection for 2 s while the
    /// server answers a probe (bounded to 2 s); the rest is margin for a busy 2-core machine.
    static let storeBound: Duration = .seconds(8)
    /// How soon after PostgreSQL is started again (the last time) every saga — those it caught
    /// in flight and those started during the outages — must have been seen finished: the
    /// store's recovery (``storeBound``), then a step's delay (1 s), a redelivery or the outbox
    /// relay's next round, the test's own 1 s pause and polling, and a busy 2-core machine. Far
    /// below the statement timeout (30 s), which recovery must not wait for.
    static let sagaBound: Duration = .seconds(20)

    @Test func sagasFinishSoonAfterPostgreSQLRestarts() async throws {
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
        // A server left running by an earlier run keeps its own port: restart it on that one.
        let port = URLComponents(string: url)?.port ?? port
        var debugLogger = Logger(label: "outage-store")
        debugLogger.logLevel = ProcessInfo.processInfo.environment["OUTAGE_DEBUG"] != nil ? .debug : .critical
        let storeLogger = debugLogger
        // The default statement timeout (30 s): the sagas must not wait for it.
        let configuration = try PostgresSagaStore.Configuration(url: url)
        #expect(configuration.statementTimeout == .seconds(30))
        let store = try PostgresSagaStore(configuration: configuration, logger: storeLogger)
        let storeRun = Task { try await store.run() }
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "outage-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        // OUTAGE_SAGAS, OUTAGE_SECONDS and OUTAGE_RESTARTS change the load, the length of each
        // outage and how many there are (to explore).
        let environment = ProcessInfo.processInfo.environment
        let count = environment["OUTAGE_SAGAS"].flatMap(Int.init) ?? 30
        let outage = environment["OUTAGE_SECONDS"].flatMap(Int.init) ?? 2
        let restarts = max(2, environment["OUTAGE_RESTARTS"].flatMap(Int.init) ?? 2)
        let starts = StartLog()

        let (finals, answered, lastStop, lastBack, allFinished) = try await withParticipants(
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
            // Starters keep starting sagas through the outages: a start that reports success
            // must have stored its saga, whatever happens to the bookkeeping after (sent marks).
            let (answered, lastStop, lastBack) = try await withThrowingTaskGroup(of: Void.self) { starters in
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
                // After the start command, and after the server was ready.
                var answered: [(Duration, Duration)] = []
                var lastStop = Date()
                var lastBack = Date()
                for restart in 1...restarts {
                    try await Task.sleep(for: .milliseconds(300))
                    lastStop = Date()
                    try await TestPostgres.privateServer(["stop"], port: port)
                    storeLogger.info("outage test: server stopped (\(restart))")
                    try await Task.sleep(for: .seconds(outage))
                    // Measured from the moment the server is started (it answers somewhat later).
                    let back = ContinuousClock.now
                    lastBack = Date()
                    try await TestPostgres.privateServer(["start"], port: port)
                    // pg_ctl -w has seen the server accept connections.
                    let ready = ContinuousClock.now
                    storeLogger.info("outage test: server started (\(restart))")
                    // The first statement the store answers after the restart.
                    while true {
                        do {
                            _ = try await store.countByStatus(name: nil)
                            break
                        } catch {
                            if back.duration(to: .now) > .seconds(60) { throw error }
                            try await Task.sleep(for: .milliseconds(50))
                        }
                    }
                    answered.append((back.duration(to: .now), ready.duration(to: .now)))
                    try await Task.sleep(for: .seconds(1))
                }
                starts.stop()
                try await starters.waitForAll()
                return (answered, lastStop, lastBack)
            }
            var finals: [SagaState] = []
            for id in ids + starts.succeeded {
                finals.append(try await manager.outcome(of: id, timeout: .seconds(90)))
                storeLogger.info("outage test: saga \(id) finished")
            }
            // Every saga, the ones started during the outages too, was seen finished by now.
            return (finals, answered, lastStop, lastBack, Date())
        }
        // The sagas the last outage caught: started before it, and still moving once it began.
        let caught = finals.filter { $0.createdAt < lastStop && $0.updatedAt > lastStop }
        // When the last transition of the caught sagas was decided (it may have been decided
        // during the outage and committed once the server was back) ...
        let decided = caught.map { $0.updatedAt.timeIntervalSince(lastBack) }.max() ?? 0
        // ... and when every saga had been seen finished: an upper bound, which the bound holds.
        let recovery = allFinished.timeIntervalSince(lastBack)
        func seconds(_ duration: Duration) -> String {
            String(format: "%.1f s", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
        }
        let answeredText = answered.map { "\(seconds($0.0)) (\(seconds($0.1)) after it was ready)" }
        print(
            "PostgreSQL outage (\(restarts) restarts, \(outage) s each): the store answered \(answeredText.joined(separator: ", ")) "
                + "after each start; \(caught.count) of \(finals.count) sagas in flight at the last restart, the last transition of "
                + "them decided \(String(format: "%.1f", decided)) s after PostgreSQL was back; every saga seen finished "
                + "\(String(format: "%.1f", recovery)) s after PostgreSQL was back; starts during the outages: "
                + "\(starts.succeeded.count) reported success, \(starts.failed.count) failed")
        #expect(finals.count == count + starts.succeeded.count)
        #expect(finals.allSatisfy { $0.status == .completed }, "\(finals.map(\.status))")
        for saga in finals {
            #expect(ledger.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"], "saga \(saga.id)")
        }
        #expect(answered.count == restarts)
        for (index, (_, afterReady)) in answered.enumerated() {
            #expect(
                afterReady <= Self.storeBound,
                "after restart \(index + 1) the store answered \(afterReady) after the server was ready")
        }
        #expect(
            recovery <= Double(Self.sagaBound.components.seconds),
            "the sagas were seen finished \(recovery) s after PostgreSQL was back, not within \(Self.sagaBound)")
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
