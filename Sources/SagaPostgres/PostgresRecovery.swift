import Foundation
import NIOCore
import PostgresNIO
import SagaCore

/// The pure decisions behind the store's recovery from a lost connection or a restarted server:
/// which failures are the connection's (not the statement's), when a statement is run again, and
/// when the connection pool is replaced. No I/O here: unit tests exercise them without a database.
enum PostgresRecovery {
    // MARK: Failures

    /// What a failed attempt at a statement says about the connection.
    enum Failure: Equatable, Sendable {
        /// The connection (or the server behind it) failed, not the statement: running it again on
        /// another connection may succeed. `sent` says whether the statement may have reached the
        /// server (then it may have been applied).
        case connection(sent: Bool)
        /// The pool gave no connection within the wait bound: nothing was sent.
        case noConnection
        /// Anything else (a constraint, a syntax error, a decoding error, our own cancellation):
        /// running it again would fail the same way.
        case other
    }

    /// SQLSTATEs that say the server ended or refused the session rather than the statement:
    /// class 08 (connection exception), 57P01 admin_shutdown (`pg_ctl -m fast stop`), 57P02
    /// crash_shutdown, 57P03 cannot_connect_now (starting up or shutting down), 57P05
    /// idle_session_timeout, 53300 too_many_connections, and 40001/40P01 are *not* among them
    /// (serialization failures and deadlocks are the statement's; they are handled elsewhere).
    static func isConnectionSQLState(_ state: String) -> Bool {
        state.hasPrefix("08") || ["57P01", "57P02", "57P03", "57P05", "53300"].contains(state)
    }

    /// SQLSTATE classes of data the server refuses — data exceptions (22), integrity constraints
    /// (23), with-check-option (44), PL/pgSQL raises (P0), features not supported (0A): the
    /// statement was fine, its values or a rule were not, and running it again changes nothing.
    static func isRefusedDataSQLState(_ state: String) -> Bool {
        ["22", "23", "44", "P0", "0A"].contains(String(state.prefix(2)))
    }

    /// SQLSTATEs of a statement and its data rather than the server or the connection: the
    /// refused data above and syntax or access rules (42: a missing table, a privilege).
    static func isStatementSQLState(_ state: String) -> Bool {
        isRefusedDataSQLState(state) || state.hasPrefix("42")
    }

    /// Classifies the error of one attempt. `leased` says whether the attempt had a connection
    /// when it failed (then the statement may have been sent).
    static func classify(_ error: any Error, leased: Bool) -> Failure {
        if error is CancellationError { return .other }
        if error is ConnectionWaitTimedOut { return .noConnection }
        // The statement held a connection that did not answer in time (closed since).
        if error is StatementTimedOut { return .connection(sent: true) }
        // The connection closed under the statement (see PostgresStatement).
        if error is ConnectionClosedUnderStatement { return .connection(sent: leased) }
        if let transaction = error as? PostgresTransactionError,
            let inner = transaction.closureError ?? transaction.beginError ?? transaction.commitError
        {
            return classify(inner, leased: leased)
        }
        if let sagaError = error as? SagaError {
            guard sagaError.code == .storeUnavailable, let underlying = sagaError.underlying else { return .other }
            return classify(underlying, leased: leased)
        }
        if let psql = error as? PSQLError {
            if let failure = classify(code: psql.code, sqlState: psql.serverInfo?[.sqlState], leased: leased) {
                return failure
            }
            return psql.underlying.map { classify($0, leased: leased) } ?? .other
        }
        if let poolErrorCase = connectionPoolErrorCase(error) { return classify(poolErrorCase: poolErrorCase) }
        if let channel = error as? ChannelError {
            switch channel {
            case .connectTimeout, .ioOnClosedChannel, .alreadyClosed, .eof, .outputClosed, .inputClosed:
                return .connection(sent: leased)
            default:
                return .other
            }
        }
        if error is IOError || error is NIOConnectionError { return .connection(sent: leased) }
        return .other
    }

    /// A `PSQLError` by its code and SQLSTATE; `nil` when its underlying error decides.
    static func classify(code: PSQLError.Code, sqlState: String?, leased: Bool) -> Failure? {
        if let sqlState { return isConnectionSQLState(sqlState) ? .connection(sent: leased) : .other }
        switch code {
        case .serverClosedConnection, .connectionError, .uncleanShutdown, .clientClosedConnection:
            return .connection(sent: leased)
        case .poolClosed:
            // The pool was shut down under a waiting request: the store replaced it (a closing
            // store stops retrying before it closes its pool).
            return .connection(sent: false)
        case .queryCancelled:
            // postgres-nio's name for a lease request the pool cancelled; the caller's own
            // cancellation is a CancellationError, checked first.
            return leased ? .other : .connection(sent: false)
        default:
            return nil
        }
    }

    /// The case of postgres-nio's `ConnectionPoolError` (`connectionCreationCircuitBreakerTripped`,
    /// `poolShutdown`, `requestCancelled`), or `nil` for another error. Its type lives in
    /// `_ConnectionPoolModule`, which SagaKit does not depend on: it is recognized by its type's
    /// name and its description, which names the case.
    static func connectionPoolErrorCase(_ error: any Error) -> String? {
        guard String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") else { return nil }
        let description = "\(error)"
        return ["connectionCreationCircuitBreakerTripped", "poolShutdown", "requestCancelled"].first {
            description.contains($0)
        }
    }

    /// A `ConnectionPoolError`: the circuit breaker and a pool shut down under a waiting request
    /// (the store replaced it; a closing store stops retrying first) are the connection's,
    /// nothing having been sent; a cancelled request is the caller's.
    static func classify(poolErrorCase: String) -> Failure {
        poolErrorCase == "requestCancelled" ? .other : .connection(sent: false)
    }

    // MARK: Retrying

    /// Whether a statement may run again after a failed attempt that may have reached the server.
    enum Safety: Sendable {
        /// Running it twice has the effect of running it once: reads, and writes guarded by the
        /// saga's version (the compare-and-swap of a transition, the insert of a creation, the
        /// delete of sent marks, an insert `ON CONFLICT DO NOTHING`). When the first attempt did
        /// commit, the second finds the new version and changes nothing.
        case idempotent
        /// It may only run again when no attempt was sent (an increment, an operator's raw SQL).
        case onlyIfNotSent
    }

    /// What to do after a failed attempt.
    enum Decision: Equatable, Sendable {
        /// Run the statement again after this pause.
        case retry(after: Duration)
        /// Report the failure.
        case giveUp
    }

    /// The pause before the attempt after `attempt` (1 for the first): 50 ms, doubling, at most
    /// 1 s. Short, because PostgreSQL is usually back within seconds and sagas wait meanwhile.
    static func backoff(after attempt: Int) -> Duration {
        let exponent = min(max(attempt - 1, 0), 5)
        return min(.milliseconds(50 * (1 << exponent)), .seconds(1))
    }

    /// Whether to run a statement again after its `attempt`-th attempt failed with `failure`,
    /// `remaining` being what is left of the statement timeout. A closing store never retries.
    static func decide(
        _ failure: Failure, safety: Safety, attempt: Int, remaining: Duration, closing: Bool
    ) -> Decision {
        guard !closing else { return .giveUp }
        switch failure {
        case .other:
            return .giveUp
        case .connection(sent: true) where safety == .onlyIfNotSent:
            return .giveUp
        case .connection, .noConnection:
            let pause = backoff(after: attempt)
            // Worth another attempt only if the pause leaves time for one.
            return remaining > pause + .milliseconds(100) ? .retry(after: pause) : .giveUp
        }
    }

    /// How long one attempt may take: the statement timeout's remainder, but at most
    /// `max(attemptFloor, statementTimeout / 3)` for a statement that may be run again. A
    /// statement written to a connection the server dropped without a word can stay unanswered
    /// for good; this bounds what such an attempt costs before it is run on a fresh connection.
    static func attemptTimeout(
        statementTimeout: Duration, remaining: Duration, safety: Safety, attemptFloor: Duration = .seconds(5)
    ) -> Duration {
        guard safety == .idempotent else { return remaining }
        return min(remaining, max(attemptFloor, statementTimeout / 3))
    }

    /// Whether the stored saga is exactly what `written` wrote — the new version, the same
    /// update time to the millisecond, status, step, attempt, failure, reap count and history
    /// length — so that a write that seemed to lose its compare-and-swap (or a creation that
    /// found its saga existing) on a second attempt is recognized as the first attempt's, whose
    /// reply was lost with its connection. Another writer's state matches only if it made the
    /// same transition in the same millisecond.
    static func isOwnWrite(stored: SagaState, written: EncodedSaga) -> Bool {
        let row = written.row
        return stored.version == written.expected + 1 && StoreCoding.milliseconds(stored.updatedAt) == row.updatedAt
            && StoreCoding.milliseconds(stored.createdAt) == row.createdAt && stored.status.rawValue == row.status
            && stored.currentStep == row.currentStep && stored.attempt == row.attempt
            && stored.failureReason == row.failureReason && stored.reapAttempts == row.reapAttempts
            && stored.history.count == written.state.history.count
    }

    // MARK: Replacing the pool

    /// What the store knows about its pool when a statement has waited for a connection.
    struct PoolObservation: Equatable, Sendable {
        /// How long the longest current wait for a connection has lasted (a request the
        /// tripped circuit breaker failed at once counts as having waited the bound).
        var longestWait: Duration
        /// How many of the store's statements hold an open connection of this pool right now
        /// (one the server closed under its statement does not count).
        var leased: Int
        /// How long ago the pool was created.
        var age: Duration
        /// Whether a connection opened outside the pool just now succeeded (the server answers).
        var serverAnswers: Bool
    }

    /// Whether the pool is wedged, to be replaced by a fresh one: a statement has waited at least
    /// `waitBound` for a connection while none of the store's statements holds one (a pool with
    /// a live connection would have handed it over; one that is merely busy has leased ones), the
    /// server accepts connections (the wait is the pool's, not the server's), and the pool is not
    /// one that was itself created less than `waitBound` ago.
    ///
    /// postgres-nio's pool, after the server restarts, can keep its queued requests waiting
    /// without a connection until its 60 s circuit breaker trips; its reconnection backoff also
    /// grows to tens of seconds during a long outage. A fresh pool connects at once.
    static func shouldReplacePool(_ observation: PoolObservation, waitBound: Duration) -> Bool {
        observation.longestWait >= waitBound && observation.leased == 0 && observation.serverAnswers
            && observation.age >= waitBound
    }
}

/// A statement waited longer than its attempt allows for a connection (nothing was sent).
struct ConnectionWaitTimedOut: Error {}
