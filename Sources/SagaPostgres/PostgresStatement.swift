import Logging
import NIOCore
import PostgresNIO

/// Runs one statement on a leased connection and collects its rows, in a way that always ends:
/// with the result, with the statement's error, with ``ConnectionClosedUnderStatement`` once the
/// connection is closed, or with `CancellationError` as soon as the task is cancelled.
///
/// postgres-nio's `PostgresConnection.query` can wait for ever. It writes the statement to the
/// connection's channel without a write promise; when the server has closed the connection and
/// the channel has already removed its handlers (a connection the pool leased just before the
/// server went away, written to a moment later), the write fails at the channel's head, the
/// statement's result promise is dropped and the awaiting task is never resumed. It does not
/// observe task cancellation either, so a timeout that cancels it cannot end it. Measured on
/// issue 12: after `pg_ctl -m fast stop`, an outbox read and a sent-marks batch waited on such
/// connections for good, holding their leases, which kept the pool from being replaced and every
/// later batch of their kind queued behind them.
///
/// Here the statement completes a promise of the store's own, which is also failed when the
/// connection turns out to be closed once the statement's write has gone through the channel
/// (the check runs on the connection's event loop after the write, so it sees what the write
/// saw), and when the task is cancelled (the connection is then closed: the statement's outcome
/// is unknown, and the connection is not to be used again). The store's per-attempt deadline
/// (``PostgresBatches/withStatementTimeout(_:pool:_:)``) cancels it, so no attempt outlives its
/// deadline whatever the connection does.
enum PostgresStatement {
    /// Runs `query` on `connection` and returns all its rows and its command tag.
    ///
    /// - Throws: the statement's error; ``ConnectionClosedUnderStatement`` when the connection
    ///   was or became closed before the statement finished; `CancellationError` when cancelled.
    static func run(
        _ query: PostgresQuery, on connection: PostgresConnection, logger: Logger
    ) async throws -> PostgresQueryResult {
        let eventLoop = connection.eventLoop
        let result = eventLoop.makePromise(of: PostgresQueryResult.self)
        return try await withTaskCancellationHandler {
            // Completing a promise a second time does nothing: the first outcome stands.
            let answer: EventLoopFuture<PostgresQueryResult> = connection.query(query, logger: logger)
            answer.cascade(to: result)
            // Runs after the statement's write on the same event loop (tasks submitted from one
            // thread run in order). A channel closed by then either failed the statement itself
            // or dropped it unanswered; either way the connection's failure is the outcome. An
            // open channel answers the statement, or fails it when it closes later.
            eventLoop.execute {
                if connection.isClosed { result.fail(ConnectionClosedUnderStatement()) }
            }
            return try await result.futureResult.get()
        } onCancel: {
            result.fail(CancellationError())
            let closing: EventLoopFuture<Void> = connection.close()
            closing.whenComplete { _ in }
        }
    }

    /// Runs `query` on `connection` and returns its rows, made randomly accessible.
    static func rows(
        _ query: PostgresQuery, on connection: PostgresConnection, logger: Logger
    ) async throws -> [PostgresRandomAccessRow] {
        try await run(query, on: connection, logger: logger).rows.map { $0.makeRandomAccess() }
    }
}

/// The connection a statement was sent on closed before the statement finished (the server
/// restarted or dropped the session): the statement may have been applied.
struct ConnectionClosedUnderStatement: Error, CustomStringConvertible {
    var description: String { "the connection closed before the statement finished" }
}
