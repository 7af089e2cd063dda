import SagaCore
import Synchronization

/// Ends the store's statement attempts that pass their deadline, with one task for all of them
/// instead of a timer per attempt.
///
/// A timer per attempt (a sleeping child task racing the statement) cost a task, a timer that
/// fires long after the statement has finished, and a thread woken for it: measured on the
/// like-for-like benchmark at one saga in flight, dropping it cut a participant's CPU per step
/// by 12–15 %. Here an attempt registers its deadline
/// (``watch(deadline:generation:leased:expire:)``) in a ``SagaCore/DeadlineTicker``, and
/// ``run(pool:)`` looks at all of them four times a second: an attempt past its deadline is ended
/// as timed out (its waiting caller resumes, closes the connection and cancels the statement),
/// and an attempt that has waited long for a connection is reported to the pool, which may
/// replace a wedged pool. A deadline therefore ends an attempt within a quarter second after it.
///
/// While ``run(pool:)`` is not running (before the store runs, after it stopped), nothing is
/// watched: ``watch(deadline:generation:leased:expire:)`` returns `nil` and the attempt uses a
/// timer of its own.
final class AttemptWatch: Sendable {
    /// The attempts' deadlines.
    private let deadlines: DeadlineTicker
    /// The watched attempts that had no connection yet when last looked at, by deadline id.
    private let waiting = Mutex<[Int: (start: ContinuousClock.Instant, generation: Int, leased: LeasedConnection)]>([:])

    init(tick: Duration = .milliseconds(250)) {
        deadlines = DeadlineTicker(tick: tick)
    }

    /// Watches an attempt until ``unwatch(_:)``: `expire` is called once when `deadline` passes.
    /// Returns `nil` (nothing watched) while ``run(pool:)`` is not running.
    func watch(
        deadline: ContinuousClock.Instant, generation: Int, leased: LeasedConnection, expire: @escaping @Sendable () -> Void
    ) -> Int? {
        guard let id = deadlines.schedule(at: deadline, expire) else { return nil }
        waiting.withLock { $0[id] = (.now, generation, leased) }
        return id
    }

    /// Stops watching an attempt (it finished, or it was expired already).
    func unwatch(_ id: Int) {
        deadlines.cancel(id)
        waiting.withLock { _ = $0.removeValue(forKey: id) }
    }

    /// Looks at the attempts every tick until cancelled: expires those past their deadline and
    /// tells the pool, per generation, the longest wait of an attempt that has no connection yet.
    /// When cancelled (the store is closing its pool), expires the attempts still watched.
    func run(pool: PostgresPool) async {
        await deadlines.run { [self] now in
            let waits = self.waiting.withLock { waiting -> [Int: Duration] in
                var waits: [Int: Duration] = [:]
                for (id, attempt) in waiting {
                    // A connection once leased is the attempt's for good: no longer waiting.
                    guard !attempt.leased.everLeased else {
                        waiting[id] = nil
                        continue
                    }
                    waits[attempt.generation] = max(waits[attempt.generation] ?? .zero, attempt.start.duration(to: now))
                }
                return waits
            }
            for (generation, waited) in waits { pool.waiting(generation, for: waited) }
        }
    }

    /// How many attempts are watched (for tests).
    var watchedCount: Int { deadlines.scheduledCount }
}

/// How a watched attempt ended: the statement's result, or the watch's timeout.
enum AttemptResolution<T: Sendable>: Sendable {
    case finished(Result<T, any Error>)
    case timedOut
}
