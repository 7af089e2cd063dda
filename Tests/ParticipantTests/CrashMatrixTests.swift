import Foundation
import GRDB
import Participant
import SagaTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The crash-point matrix (issue 12, item 3): for each named crash point (``CrashPoint``) × each
/// participant that reaches it × two trials, three participant processes run the test order
/// saga; the armed one kills itself with SIGKILL at that point, is started again unarmed, and
/// every saga must end completed or compensated, with each effect applied exactly once and no
/// outbox message left unsent.
///
/// `CRASH_MATRIX_POINTS=beforeHandler,insideReaper` and `CRASH_MATRIX_SERVICES=payment` run only
/// those rows and columns (local debugging).
@Suite(
    "Crash-point matrix: participant processes killed at named points",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(6))
)
struct CrashMatrixTests {
    /// Sagas per trial: every fourth is declined by payment and compensated.
    static let sagasPerTrial = 8
    /// Trials running at once (each with its own topology, store file and processes).
    static let concurrentTrials = Int(ProcessInfo.processInfo.environment["CRASH_MATRIX_CONCURRENCY"] ?? "") ?? 3
    /// SQLite (a file per trial) unless `CRASH_MATRIX_STORE=postgres`.
    static let store = StoreKind(rawValue: ProcessInfo.processInfo.environment["CRASH_MATRIX_STORE"] ?? "") ?? .sqlite

    @Test func everySagaEndsAndEachEffectHappensOnceWhateverPointAParticipantDiesAt() async throws {
        let servers = try IntegrationServers.require()
        let only = ProcessInfo.processInfo.environment["CRASH_MATRIX_POINTS"].map { Set($0.split(separator: ",").map(String.init)) }
        let services = ProcessInfo.processInfo.environment["CRASH_MATRIX_SERVICES"].map { Set($0.split(separator: ",").map(String.init)) }
        let trials = CrashTrial.matrix.filter { (only?.contains($0.point.rawValue) ?? true) && (services?.contains($0.service) ?? true) }
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let clock = ContinuousClock()
        let began = clock.now

        // A bounded number of trials at once; each returns its own result (failures included).
        let results = await withTaskGroup(of: CrashTrialResult.self) { group in
            var pending = trials[...]
            var results: [CrashTrialResult] = []
            for _ in 0..<Self.concurrentTrials {
                guard let trial = pending.popFirst() else { break }
                group.addTask { await trial.run(servers: servers, bus: bus) }
            }
            for await result in group {
                results.append(result)
                if let trial = pending.popFirst() { group.addTask { await trial.run(servers: servers, bus: bus) } }
            }
            return results
        }
        await bus.shutdown()

        print(CrashTrialResult.matrix(results, wall: clock.now - began, concurrency: Self.concurrentTrials))
        #expect(results.count == trials.count)
        for result in results {
            #expect(result.problems.isEmpty, "\(result.trial): \(result.problems.joined(separator: "; "))")
        }
    }
}

/// One cell of the matrix and one of its trials: `service` dies at the `after`-th time it
/// reaches `point`.
struct CrashTrial: Sendable, CustomStringConvertible {
    let point: CrashPoint
    let service: String
    let after: Int

    static let services = ["inventory", "payment", "shipping"]

    /// Every point × every participant that reaches it × two trials (at the first and the
    /// second time the point is reached). Compensations run only at inventory in the test order
    /// saga (payment declines; shipping is the pivot and has no compensation).
    static let matrix: [CrashTrial] = CrashPoint.allCases.flatMap { point in
        services.filter { point != .duringCompensation || $0 == "inventory" }.flatMap { service in
            [1, 2].map { CrashTrial(point: point, service: service, after: $0) }
        }
    }

    var description: String { "\(point.rawValue) @ \(service) #\(after)" }

    /// The reaper and the relay need sagas that no other process moves first: the armed process
    /// runs alone until it dies, then the others start. At the other points all three run.
    var armedRunsAlone: Bool { point == .insideReaper || point == .insideOutboxRelay }

    func run(servers: (amqp: String, postgres: String), bus: RabbitMQBus) async -> CrashTrialResult {
        let clock = ContinuousClock()
        let began = clock.now
        var result = CrashTrialResult(trial: self)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-crash-\(UUID().uuidString.prefix(8))")
        let topology = SagaTopology(prefix: "crash-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        var hosts: [String: HostProcess] = [:]
        var closeStore: (@Sendable () async -> Void)?
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let storeURL =
                CrashMatrixTests.store == .postgres ? servers.postgres : "sqlite://" + directory.appendingPathComponent("sagas.db").path
            let effectsPath = directory.appendingPathComponent("effects.db").path
            let markerPath = directory.appendingPathComponent("crash-marker").path
            let (store, close) = try await openStore(storeURL)
            closeStore = close
            let environment = [
                "AMQP_URL": servers.amqp, "STORE_URL": storeURL, "EFFECTS_DB": effectsPath, "PREFIX": topology.prefix,
                "REAPER_MS": "300", "HANDLER_DELAY_MS": "20", "OUTBOX_POLL_MS": "200", "OUTBOX_GRACE_MS": "500",
            ]
            let armed = environment.merging(["CRASH_AT": point.rawValue, "CRASH_AFTER": "\(after)", "CRASH_MARKER": markerPath]) { $1 }
            // Queues exist before any process runs: commands wait for a service that is down.
            let manager = SagaManager(definitions: TestSagas.registry, bus: bus, store: store, topology: topology, logger: quietTestLogger)
            try await manager.declareTopology()
            for (service, commands) in TestSagas.commandsByService {
                try await bus.declare(topology.topology(forService: service, commands: commands))
            }

            hosts[service] = try HostProcess(service: service, environment: armed)
            if !armedRunsAlone {
                for other in Self.services where other != service {
                    hosts[other] = try HostProcess(service: other, environment: environment)
                }
            }
            // The relay's point needs outbox messages that were never published: the starter's
            // publishes fail, so the sagas are stored with their first command unsent.
            let starter =
                point == .insideOutboxRelay
                ? SagaManager(
                    definitions: TestSagas.registry, bus: UnpublishedBus(bus), store: store, topology: topology, logger: quietTestLogger)
                : manager
            let ids = try await withThrowingTaskGroup(of: (Int, SagaID).self) { group in
                for index in 0..<CrashMatrixTests.sagasPerTrial {
                    group.addTask {
                        let payload: JSONObject = ["orderId": .string("c-\(index)"), "amount": 1, "declinePayment": .bool(index % 4 == 0)]
                        return (index, try await starter.start("order", payload: payload))
                    }
                }
                return try await group.reduce(into: [Int: SagaID]()) { $0[$1.0] = $1.1 }.sorted { $0.key < $1.key }.map(\.value)
            }

            // The armed process dies at its point, by its own SIGKILL.
            guard let host = hosts[service], let signal = await host.waitForExit(timeout: .seconds(30)) else {
                throw TestFailure("the \(service) process did not reach \(point.rawValue) \(after) time(s) within 30 s")
            }
            result.crashedAfter = clock.now - began
            if signal != SIGKILL { result.problems.append("the armed process ended with \(signal), not by SIGKILL") }
            let marker = (try? String(contentsOfFile: markerPath, encoding: .utf8)) ?? ""
            if !marker.hasPrefix("\(point.rawValue) \(after) ") {
                result.problems.append("the armed process did not die at its crash point (marker: '\(marker)')")
            }
            var unfinished = 0
            for id in ids where !(try await store.load(id).status.isTerminal) { unfinished += 1 }
            result.unfinishedAtCrash = unfinished
            result.unsentAtCrash = try await Self.unsent(topology, store: store).count

            // Started again unarmed (and the others, when the armed one ran alone).
            hosts[service] = try HostProcess(service: service, environment: environment)
            for other in Self.services where hosts[other] == nil {
                hosts[other] = try HostProcess(service: other, environment: environment)
            }

            var finals: [SagaState] = []
            for (index, id) in ids.enumerated() {
                let state = try await manager.outcome(of: id, timeout: .seconds(60))
                finals.append(state)
                let expected: SagaStatus = index % 4 == 0 ? .compensated : .completed
                if state.status != expected {
                    result.problems.append("saga \(index) ended \(state.status.rawValue), expected \(expected.rawValue)")
                }
            }
            // A process that died by itself (not at its crash point) explains stalled sagas.
            for (name, host) in hosts.sorted(by: { $0.key < $1.key }) where !host.isRunning {
                result.problems.append("the \(name) process ended by itself (\(host.exitDescription)); its standard error is above")
            }
            result.completed = finals.filter { $0.status == .completed }.count
            result.compensated = finals.filter { $0.status == .compensated }.count
            result.finished = clock.now - began

            // Nothing left in flight: every outbox message of these sagas published and marked
            // (a crash between publish and mark is repaired by a relay after its grace period).
            var unsent = try await Self.unsent(topology, store: store)
            let deadline = clock.now.advanced(by: .seconds(10))
            while !unsent.isEmpty && clock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                unsent = try await Self.unsent(topology, store: store)
            }
            if !unsent.isEmpty {
                result.problems.append("\(unsent.count) outbox message(s) never sent: \(unsent.map(\.routingKey).sorted())")
            }

            // Each effect exactly once per idempotency key, and exactly the saga's outcome's.
            let effects = try DatabaseQueue(path: effectsPath)
            let (rows, calls) = try effects.read { db in
                (
                    try Row.fetchAll(db, sql: "SELECT key, saga_id, command FROM effects"),
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM calls") ?? 0
                )
            }
            result.calls = calls
            result.effects = rows.count
            var bySaga: [String: [String]] = [:]
            for row in rows { bySaga[row["saga_id"], default: []].append(row["command"]) }
            for saga in finals {
                let expected =
                    saga.status == .completed
                    ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.release", "inventory.reserve"]
                let applied = (bySaga[saga.id] ?? []).sorted()
                if applied != expected.sorted() {
                    result.problems.append(
                        "saga \(saga.id) (\(saga.status.rawValue)) has effects \(applied), expected \(expected.sorted())")
                }
            }
        } catch {
            result.problems.append("\(error)")
        }
        // Nothing running: every process of the trial stops (SIGTERM, then SIGKILL).
        await withTaskGroup(of: Void.self) { group in
            for host in hosts.values { group.addTask { await host.stop() } }
        }
        if hosts.values.contains(where: { !$0.hasEnded }) { result.problems.append("a participant process is still running") }
        await closeStore?()
        await Self.deleteTopology(topology, bus: bus)
        try? FileManager.default.removeItem(at: directory)
        return result
    }

    /// The trial's outbox messages not marked sent (whether or not they are due).
    private static func unsent(_ topology: SagaTopology, store: any SagaStore) async throws -> [OutboxMessage] {
        try await store.pendingOutbox(topology: topology.prefix, createdBefore: .distantFuture, now: .distantFuture, limit: 10_000)
    }

    /// Removes the trial's queues and exchanges from the shared broker.
    private static func deleteTopology(_ topology: SagaTopology, bus: RabbitMQBus) async {
        var all = topology.shared
        for (service, commands) in TestSagas.commandsByService {
            all = all.merging(topology.topology(forService: service, commands: commands))
        }
        for queue in Set(all.queues.map(\.name)) { try? await bus.deleteQueue(queue) }
        for exchange in Set(all.exchanges.map(\.name)) { try? await bus.deleteExchange(exchange) }
    }
}

/// What one trial observed.
struct CrashTrialResult: Sendable {
    let trial: CrashTrial
    var problems: [String] = []
    var completed = 0
    var compensated = 0
    /// Sagas not finished, and outbox messages not marked sent, when the armed process died.
    var unfinishedAtCrash = 0
    var unsentAtCrash = 0
    /// Handler calls and effects applied (calls beyond effects were repeats absorbed by the
    /// idempotency key).
    var calls = 0
    var effects = 0
    var crashedAfter: Duration?
    var finished: Duration?

    /// The matrix as printed: a row per point, a column per participant (both trials' outcomes
    /// and the slower one's time to the end), then a line per trial.
    static func matrix(_ results: [CrashTrialResult], wall: Duration, concurrency: Int) -> String {
        func seconds(_ duration: Duration?) -> String {
            guard let duration else { return "-" }
            return String(format: "%.1f", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
        }
        func pad(_ text: String, _ width: Int) -> String {
            text + String(repeating: " ", count: max(width - text.count, 1))
        }
        let store = CrashMatrixTests.store == .postgres ? "PostgreSQL store (shared)" : "SQLite store (a file per trial)"
        let sagas = CrashMatrixTests.sagasPerTrial
        var lines = [
            "Crash-point matrix: \(store), \(sagas) sagas per trial (\(sagas - sagas / 4) complete, \(sagas / 4) compensate), "
                + "2 trials per cell (killed at the 1st and the 2nd reach), \(concurrency) trials at once",
            pad("point", 26) + CrashTrial.services.map { pad($0, 18) }.joined(),
        ]
        let ordered = results.sorted {
            ($0.trial.point.index, $0.trial.service, $0.trial.after) < ($1.trial.point.index, $1.trial.service, $1.trial.after)
        }
        for point in CrashPoint.allCases {
            var line = pad(point.rawValue, 26)
            for service in CrashTrial.services {
                let cell = ordered.filter { $0.trial.point == point && $0.trial.service == service }
                guard !cell.isEmpty else {
                    line += pad("n/a", 18)
                    continue
                }
                let outcomes = cell.map { $0.problems.isEmpty ? "ok" : "FAIL" }.joined(separator: " ")
                line += pad("\(outcomes) \(seconds(cell.compactMap(\.finished).max()))s", 18)
            }
            lines.append(line)
        }
        let passed = results.filter(\.problems.isEmpty).count
        lines.append("\(passed) of \(results.count) trials passed, \(results.count - passed) failed; wall time \(seconds(wall)) s")
        lines.append(
            "per trial: outcome, sagas completed+compensated, sagas in flight / outbox messages unsent at the crash, "
                + "handler calls / effects, seconds to the crash / to the end")
        for result in ordered {
            let trial = result.trial
            lines.append(
                "  \(pad("\(trial.point.rawValue) @ \(trial.service) #\(trial.after)", 40))\(result.problems.isEmpty ? "ok  " : "FAIL") "
                    + "\(result.completed)+\(result.compensated)  \(result.unfinishedAtCrash)/\(result.unsentAtCrash)  "
                    + "\(result.calls)/\(result.effects)  \(seconds(result.crashedAfter))/\(seconds(result.finished))s")
        }
        return lines.joined(separator: "\n")
    }
}

extension CrashPoint {
    /// The point's place in ``CrashPoint/allCases`` (the matrix's row order).
    var index: Int { Self.allCases.firstIndex(of: self) ?? 0 }
}

/// A bus whose publishes all fail: sagas started through it are stored with their first command
/// in the outbox, unsent, for a relay to publish.
final class UnpublishedBus: MessageBus {
    private let base: any MessageBus

    init(_ base: any MessageBus) { self.base = base }

    func declare(_ topology: Topology) async throws { try await base.declare(topology) }

    func publish(_ message: OutgoingMessage) async throws {
        throw BusError(.connectionLost, "this test bus publishes nothing (the outbox relay must send it)", isRetryable: true)
    }

    func consume(queue: String, prefetch: Int) async throws -> DeliveryStream { try await base.consume(queue: queue, prefetch: prefetch) }

    func shutdown() async {}
}
