import Foundation
import PostgresNIO
import SagaCore
import Synchronization
import Testing

@testable import SagaPostgres

/// The PostgreSQL store's recovery decisions (``PostgresRecovery``), without a database.
@Suite("PostgreSQL recovery decisions")
struct PostgresRecoveryTests {
    private struct Unrelated: Error {}

    @Test func connectionFailuresAreTheConnections() {
        for state in ["57P01", "57P02", "57P03", "08006", "08001", "53300"] {
            #expect(PostgresRecovery.isConnectionSQLState(state), "\(state)")
        }
        for state in ["23505", "40P01", "40001", "42P01", "22P02", "P0001", "57014"] {
            #expect(!PostgresRecovery.isConnectionSQLState(state), "\(state)")
        }
        #expect(PostgresRecovery.classify(code: .server, sqlState: "57P01", leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(code: .server, sqlState: "23505", leased: true) == .other)
        #expect(PostgresRecovery.classify(code: .serverClosedConnection, sqlState: nil, leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(code: .connectionError, sqlState: nil, leased: false) == .connection(sent: false))
        #expect(PostgresRecovery.classify(code: .uncleanShutdown, sqlState: nil, leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(code: .poolClosed, sqlState: nil, leased: false) == .connection(sent: false))
        #expect(PostgresRecovery.classify(code: .queryCancelled, sqlState: nil, leased: false) == .connection(sent: false))
        // A query the caller cancelled is not the connection's.
        #expect(PostgresRecovery.classify(code: .queryCancelled, sqlState: nil, leased: true) == .other)
        #expect(PostgresRecovery.classify(code: .tooManyParameters, sqlState: nil, leased: true) == nil)
        #expect(PostgresRecovery.classify(ChannelError.ioOnClosedChannel, leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(ChannelError.connectTimeout(.seconds(1)), leased: false) == .connection(sent: false))
        #expect(PostgresRecovery.classify(IOError(errnoCode: ECONNRESET, reason: "read"), leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(StatementTimedOut(), leased: true) == .connection(sent: true))
        #expect(PostgresRecovery.classify(ConnectionWaitTimedOut(), leased: false) == .noConnection)
        #expect(PostgresRecovery.classify(ConnectionClosedUnderStatement(), leased: true) == .connection(sent: true))
        // Wrapped the way the store reports it.
        let wrapped = SagaError(.storeUnavailable, "cannot load", underlying: ChannelError.eof)
        #expect(PostgresRecovery.classify(wrapped, leased: true) == .connection(sent: true))
    }

    @Test func otherFailuresAreTheStatements() {
        #expect(PostgresRecovery.classify(Unrelated(), leased: true) == .other)
        #expect(PostgresRecovery.classify(CancellationError(), leased: false) == .other)
        #expect(PostgresRecovery.classify(SagaError.unknownSaga("s"), leased: true) == .other)
        #expect(PostgresRecovery.classify(SagaError(.storeUnavailable, "no underlying"), leased: true) == .other)
    }

    @Test func poolErrorsAreRecognizedByTheirNames() {
        #expect(
            PostgresRecovery.connectionPoolErrorCase(
                ConnectionPoolError(
                    description:
                        "ConnectionPoolError(base: _ConnectionPoolModule.ConnectionPoolError.Base.connectionCreationCircuitBreakerTripped)")
            ) == "connectionCreationCircuitBreakerTripped")
        #expect(
            PostgresRecovery.connectionPoolErrorCase(
                ConnectionPoolError(description: "ConnectionPoolError(base: _ConnectionPoolModule.ConnectionPoolError.Base.poolShutdown)"))
                == "poolShutdown")
        #expect(PostgresRecovery.connectionPoolErrorCase(Unrelated()) == nil)
        #expect(PostgresRecovery.classify(poolErrorCase: "connectionCreationCircuitBreakerTripped") == .connection(sent: false))
        #expect(PostgresRecovery.classify(poolErrorCase: "poolShutdown") == .connection(sent: false))
        #expect(PostgresRecovery.classify(poolErrorCase: "requestCancelled") == .other)
        #expect(
            PostgresRecovery.classify(ConnectionPoolError(description: "ConnectionPoolError(base: poolShutdown)"), leased: false)
                == .connection(sent: false))
    }

    @Test func retriesAreBoundedByTheStatementTimeout() {
        let long: Duration = .seconds(20)
        #expect(
            PostgresRecovery.decide(.connection(sent: false), safety: .onlyIfNotSent, attempt: 1, remaining: long, closing: false)
                == .retry(after: .milliseconds(50)))
        #expect(
            PostgresRecovery.decide(.connection(sent: true), safety: .idempotent, attempt: 2, remaining: long, closing: false)
                == .retry(after: .milliseconds(100)))
        #expect(
            PostgresRecovery.decide(.noConnection, safety: .onlyIfNotSent, attempt: 3, remaining: long, closing: false)
                == .retry(after: .milliseconds(200)))
        // A statement that may have been applied is not run again unless that is harmless.
        #expect(
            PostgresRecovery.decide(.connection(sent: true), safety: .onlyIfNotSent, attempt: 1, remaining: long, closing: false) == .giveUp
        )
        // The statement's own failures, a closing store and an exhausted timeout end it.
        #expect(PostgresRecovery.decide(.other, safety: .idempotent, attempt: 1, remaining: long, closing: false) == .giveUp)
        #expect(
            PostgresRecovery.decide(.connection(sent: false), safety: .idempotent, attempt: 1, remaining: long, closing: true) == .giveUp)
        #expect(
            PostgresRecovery.decide(
                .connection(sent: false), safety: .idempotent, attempt: 1, remaining: .milliseconds(120), closing: false) == .giveUp)
        // The pause grows to a second and stays there.
        #expect(PostgresRecovery.backoff(after: 1) == .milliseconds(50))
        #expect(PostgresRecovery.backoff(after: 5) == .milliseconds(800))
        #expect(PostgresRecovery.backoff(after: 6) == .seconds(1))
        #expect(PostgresRecovery.backoff(after: 60) == .seconds(1))
    }

    @Test func attemptsOfRetryableStatementsAreShorterThanTheTimeout() {
        #expect(
            PostgresRecovery.attemptTimeout(statementTimeout: .seconds(30), remaining: .seconds(30), safety: .idempotent) == .seconds(10))
        #expect(PostgresRecovery.attemptTimeout(statementTimeout: .seconds(30), remaining: .seconds(4), safety: .idempotent) == .seconds(4))
        #expect(PostgresRecovery.attemptTimeout(statementTimeout: .seconds(6), remaining: .seconds(6), safety: .idempotent) == .seconds(5))
        #expect(
            PostgresRecovery.attemptTimeout(statementTimeout: .seconds(30), remaining: .seconds(30), safety: .onlyIfNotSent) == .seconds(30)
        )
    }

    @Test func onlyAPoolWithoutConnectionsWhileTheServerAnswersIsReplaced() {
        let wedged = PostgresRecovery.PoolObservation(longestWait: .seconds(2), leased: 0, age: .seconds(30), serverAnswers: true)
        #expect(PostgresRecovery.shouldReplacePool(wedged, waitBound: .seconds(2)))
        var busy = wedged
        busy.leased = 3
        #expect(!PostgresRecovery.shouldReplacePool(busy, waitBound: .seconds(2)))
        var down = wedged
        down.serverAnswers = false
        #expect(!PostgresRecovery.shouldReplacePool(down, waitBound: .seconds(2)))
        var young = wedged
        young.age = .milliseconds(500)
        #expect(!PostgresRecovery.shouldReplacePool(young, waitBound: .seconds(2)))
        var brief = wedged
        brief.longestWait = .seconds(1)
        #expect(!PostgresRecovery.shouldReplacePool(brief, waitBound: .seconds(2)))
    }

    @Test func aWriteWhoseReplyWasLostIsRecognizedAsOwn() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000.123)
        let before = SagaState(
            id: "s1", name: "order", status: .running, currentStep: 1, attempt: 1, payload: [:], context: [:], history: [],
            failureReason: nil, deadline: nil, reapAttempts: 0, createdAt: now, updatedAt: now, version: 3)
        var next = before
        next.currentStep = 2
        next.updatedAt = now.addingTimeInterval(1)
        next.version = 4
        let written = try EncodedSaga(next, expected: 3, outbox: [])
        #expect(PostgresRecovery.isOwnWrite(stored: next, written: written))
        // Another writer's transition: another version, step or time.
        var other = next
        other.updatedAt = now.addingTimeInterval(2)
        #expect(!PostgresRecovery.isOwnWrite(stored: other, written: written))
        other = next
        other.version = 5
        #expect(!PostgresRecovery.isOwnWrite(stored: other, written: written))
        other = next
        other.currentStep = 3
        #expect(!PostgresRecovery.isOwnWrite(stored: other, written: written))
        #expect(!PostgresRecovery.isOwnWrite(stored: before, written: written))
    }
}

/// The PostgreSQL store's recovery from connections the server closes, on a real server (the
/// shared test server: only the test's own sessions are terminated).
@Suite("PostgreSQL recovery from a closed connection")
struct PostgresClosedConnectionTests {
    /// Issue 12: the pool leased a connection, and the server closed it before the statement was
    /// written to it (`pg_ctl -m fast stop`, or `pg_terminate_backend` here). postgres-nio drops
    /// such a statement unanswered, and its `query` then waits for ever, whatever the attempt's
    /// deadline does; the store must instead see the closed connection at once and run the
    /// statement again on another connection — well before the attempt's 10 s deadline.
    @Test func aStatementOnAConnectionTheServerClosedRunsAgainAtOnce() async throws {
        guard let configuration = try await testPostgresConfiguration() else { return }
        try await PostgresSagaStore(configuration: configuration).withRunning { store in
            let (batches, logger) = (store.batches, store.logger)
            for round in 1...3 {
                let attempts = Mutex(0)
                let started = ContinuousClock.now
                let outcome = await finishing(within: .seconds(25)) {
                    try await batches.run("select after the server closed the connection", safety: .idempotent) { connection in
                        let attempt = attempts.withLock { attempts in
                            attempts += 1
                            return attempts
                        }
                        if attempt == 1 {
                            // Ends this connection's session from another connection, and waits
                            // until the channel has closed (and dropped its handlers).
                            let pid = try await PostgresStatement.rows("SELECT pg_backend_pid() AS pid", on: connection, logger: logger)
                                .first?["pid"].decode(Int32.self)
                            _ = try await batches.rows("terminate", "SELECT pg_terminate_backend(\(try #require(pid)))")
                            try? await connection.closeFuture.get()
                            #expect(connection.isClosed)
                        }
                        return try await PostgresStatement.rows("SELECT 42 AS answer", on: connection, logger: logger)
                            .first?["answer"].decode(Int.self)
                    }
                }
                let elapsed = started.duration(to: .now)
                guard let outcome else {
                    Issue.record("round \(round): the statement on the closed connection never ended (not within 25 s)")
                    return
                }
                let attempted = try outcome.get()
                #expect(attempted.value == 42, "round \(round)")
                #expect(attempts.withLock { $0 } == 2, "round \(round): one attempt on the closed connection, one on a fresh one")
                // The first attempt may have been applied: a write checks its own outcome.
                #expect(attempted.mayHaveRunBefore, "round \(round)")
                // Below the attempt's 10 s deadline: it did not wait for it (on a 2-core machine
                // running the whole suite a round took up to 6 s; alone, 0.1 s).
                #expect(elapsed < .seconds(9), "round \(round): took \(elapsed), the attempt's deadline is 10 s")
            }
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
        }
    }
}

/// The connections the store keeps leased between statements (`heldConnections`), on a real
/// server: statements run on them, and one the server closes is given up, its statement runs
/// again on another connection, and the store holds a fresh one.
@Suite("PostgreSQL held connections")
struct PostgresHeldConnectionTests {
    @Test func statementsRunOnHeldConnectionsAndOneTheServerClosesIsReplaced() async throws {
        try await withPostgresStore { stores, store in
            let held = store.batches.held
            #expect(held.count == 2)
            try await eventually("the store holds two connections") { held.holding == 2 }
            let pid = { @Sendable () async throws -> Int32 in
                try #require(try await store.rows("pid", "SELECT pg_backend_pid() AS pid").first?["pid"].decode(Int32.self))
            }
            let served = held.attemptsServed
            var pids: Set<Int32> = []
            for _ in 0..<10 { pids.insert(try await pid()) }
            // One after the other, every statement took the first idle held connection.
            #expect(held.attemptsServed - served == 10)
            #expect(pids.count == 1)
            let first = try #require(pids.first)

            // Another pool ends that session; the next statements still answer, on others.
            let other = try #require(stores.other as? PostgresSagaStore)
            _ = try await other.rows("terminate", "SELECT pg_terminate_backend(\(first))")
            for _ in 0..<5 { #expect(try await pid() != first) }
            try await eventually("the store holds two open connections again") { held.holding == 2 }
            let again = held.attemptsServed
            #expect(try await pid() != first)
            #expect(held.attemptsServed == again + 1)
        }
    }

    /// When the store says its statements get no answer: only after the threshold without any
    /// attempt finishing while some run, again each minute while it lasts, and once when one
    /// finishes again; an attempt that timed out is no answer (``AttemptWatch`` does not count
    /// it as finished).
    @Test func aStallIsReportedAfterTheThresholdAndItsEndOnce() {
        let t0 = ContinuousClock.now
        var watch = StatementStallWatch(threshold: .seconds(10))
        func observe(at seconds: Int, lastFinished: Int?, silentSince: Int?, running: Int) -> StatementStallWatch.Event? {
            let observation = StatementStallWatch.Observation(
                lastFinished: lastFinished.map { t0 + .seconds($0) }, silentSince: silentSince.map { t0 + .seconds($0) },
                running: running)
            return watch.observe(observation, at: t0 + .seconds(seconds))
        }
        // Nothing runs: nothing to say, however long the silence.
        #expect(observe(at: 100, lastFinished: 1, silentSince: 2, running: 0) == nil)
        // Attempts that run long while others finish: a busy server, not a silent one.
        #expect(observe(at: 120, lastFinished: 119, silentSince: 119, running: 2) == nil)
        // Silent since 119: for 9 s, then 10 s.
        #expect(observe(at: 128, lastFinished: 119, silentSince: 119, running: 2) == nil)
        #expect(observe(at: 129, lastFinished: 119, silentSince: 119, running: 2) == .stalled(silent: .seconds(10), waiting: 2))
        #expect(watch.stalledSince == t0 + .seconds(119))
        // Said once; again a minute later, with what runs then.
        #expect(observe(at: 150, lastFinished: 119, silentSince: 119, running: 1) == nil)
        #expect(observe(at: 189, lastFinished: 119, silentSince: 119, running: 3) == .stillStalled(silent: .seconds(70), waiting: 3))
        #expect(observe(at: 200, lastFinished: 119, silentSince: 119, running: 3) == nil)
        // An answer ends it, once.
        #expect(observe(at: 201, lastFinished: 200, silentSince: 200, running: 1) == .finishingAgain(silent: .seconds(81)))
        #expect(watch.stalledSince == nil)
        #expect(observe(at: 202, lastFinished: 201, silentSince: nil, running: 0) == nil)
    }

    /// The watch's silence spans attempts that ran out of time and were tried again (a retried
    /// load waits for the same answer), and starts afresh when nothing ran in between.
    @Test func theSilenceSpansAttemptsThatRanOutOfTime() async throws {
        let watch = AttemptWatch(tick: .milliseconds(20), stallThreshold: .milliseconds(300))
        let pool = PostgresPool(
            client: PostgresClient(
                configuration: .init(host: "127.0.0.1", port: 1, username: "u", password: nil, database: nil, tls: .disable)),
            waitBound: .seconds(2), logger: Logger(label: "test"))
        let events = Mutex<[StatementStallWatch.Event]>([])
        let run = Task { await watch.run(pool: pool) { event in events.withLock { $0.append(event) } } }
        defer { run.cancel() }
        try await eventually("the watch runs") {
            guard let probe = watch.watch(deadline: .now, generation: 0, leased: LeasedConnection(), expire: {}) else { return false }
            watch.unwatch(probe)
            return true
        }
        // Long after that attempt, the silence starts afresh.
        try await Task.sleep(for: AttemptWatch.retryWindow + .milliseconds(100))
        // Attempts of 150 ms that run out of time, one after the other: 450 ms without an answer.
        // (Without the silence spanning them, each one alone would stay below the threshold.)
        for _ in 0..<3 {
            let attempt = watch.watch(deadline: .now + .milliseconds(150), generation: 0, leased: LeasedConnection(), expire: {})
            let id = try #require(attempt)
            try await Task.sleep(for: .milliseconds(160))
            watch.unwatch(id)
        }
        // Reported while they ran, though none ran for the threshold.
        try await eventually("the stall is reported") { events.withLock { !$0.isEmpty } }
        let answered = watch.watch(deadline: .now + .seconds(5), generation: 0, leased: LeasedConnection(), expire: {})
        watch.unwatch(try #require(answered))
        try await eventually("its end is reported") { events.withLock { $0.count == 2 } }
        let reported = events.withLock { $0 }
        guard case .stalled = reported[0], case .finishingAgain = reported[1] else {
            Issue.record("\(reported)")
            return
        }
    }

    /// Waits up to 10 s for `condition`.
    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("not within 10 s: \(what)")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// Runs `body` in a task of its own and waits for it at most `limit`: `nil` when it has not ended
/// by then (it is left running), so that an await that is never resumed fails the test instead of
/// hanging it.
private func finishing<T: Sendable>(
    within limit: Duration, _ body: @escaping @Sendable () async throws -> T
) async -> Result<T, any Error>? {
    let waiter = Mutex<CheckedContinuation<Result<T, any Error>?, Never>?>(nil)
    let resume: @Sendable (Result<T, any Error>?) -> Void = { outcome in
        waiter.withLock { continuation in
            continuation?.resume(returning: outcome)
            continuation = nil
        }
    }
    return await withCheckedContinuation { continuation in
        waiter.withLock { $0 = continuation }
        Task {
            do { resume(.success(try await body())) } catch { resume(.failure(error)) }
        }
        Task {
            try? await Task.sleep(for: limit)
            resume(nil)
        }
    }
}

/// Stands in for postgres-nio's `ConnectionPoolError` (same type name, same description), whose
/// module the tests do not import.
private struct ConnectionPoolError: Error, CustomStringConvertible {
    let description: String
}
