import SagaCore
import Synchronization

/// Ends the store's statement attempts that pass their deadline, with one task for all of them
/// instead of a timer per attempt.
///
/// A timer per attempt (a sleeping child task racing the statement) cost a task, a timer that
/// fires long after the statement has finished, and a thread woken for it: measured on the
/// like-for-like benchmark at one saga in flight, dropping it cut a participant's CPU per step
/// by about 15 %. Here an attempt registers its deadline (``watch(deadline:generation:leased:outcome:)``)
/// and ``run(pool:)`` looks at all of them every ``tick``: an attempt past its deadline is ended
/// as timed out (its waiting caller resumes, closes the connection and cancels the statement),
/// and an attempt that has waited long for a connection is reported to the pool, which may
/// replace a wedged pool. A deadline therefore ends an attempt within one tick after it.
///
/// While ``run(pool:)`` is not running (before the store runs, after it stopped), nothing is
/// watched: ``watch(deadline:generation:leased:outcome:)`` returns `nil` and the attempt uses a
/// timer of its own.
final class AttemptWatch: Sendable {
    /// How often ``run(pool:)`` looks at the attempts.
    let tick: Duration

    private struct Watched {
        let start: ContinuousClock.Instant
        let deadline: ContinuousClock.Instant
        let generation: Int
        let leased: LeasedConnection
        let expire: @Sendable () -> Void
    }

    private struct State {
        var running = false
        var nextID = 0
        var attempts: [Int: Watched] = [:]
    }

    private let state = Mutex(State())

    init(tick: Duration = .milliseconds(250)) {
        self.tick = tick
    }

    /// Watches an attempt until ``unwatch(_:)``: `expire` is called once when `deadline` passes.
    /// Returns `nil` (nothing watched) while ``run(pool:)`` is not running.
    func watch(
        deadline: ContinuousClock.Instant, generation: Int, leased: LeasedConnection, expire: @escaping @Sendable () -> Void
    ) -> Int? {
        state.withLock { state -> Int? in
            guard state.running else { return nil }
            state.nextID &+= 1
            state.attempts[state.nextID] = Watched(
                start: .now, deadline: deadline, generation: generation, leased: leased, expire: expire)
            return state.nextID
        }
    }

    /// Stops watching an attempt (it finished, or it was expired already).
    func unwatch(_ id: Int) {
        state.withLock { _ = $0.attempts.removeValue(forKey: id) }
    }

    /// Looks at the attempts every ``tick`` until cancelled; then expires the attempts still
    /// watched (the store is closing its pool) and watches nothing more.
    func run(pool: PostgresPool) async {
        state.withLock { $0.running = true }
        while !Task.isCancelled {
            do { try await Task.sleep(for: tick) } catch { break }
            let (expired, waits) = due(at: .now)
            for expire in expired { expire() }
            for (generation, waited) in waits { pool.waiting(generation, for: waited) }
        }
        let left = state.withLock { state -> [@Sendable () -> Void] in
            state.running = false
            defer { state.attempts = [:] }
            return state.attempts.values.map(\.expire)
        }
        for expire in left { expire() }
    }

    /// Removes and returns the attempts past their deadline, and, per pool generation, the
    /// longest wait of an attempt that has no connection yet.
    func due(at now: ContinuousClock.Instant) -> (expired: [@Sendable () -> Void], waits: [Int: Duration]) {
        state.withLock { state in
            var expired: [@Sendable () -> Void] = []
            var waits: [Int: Duration] = [:]
            for (id, attempt) in state.attempts {
                if now >= attempt.deadline {
                    expired.append(attempt.expire)
                    state.attempts[id] = nil
                } else if !attempt.leased.everLeased {
                    waits[attempt.generation] = max(waits[attempt.generation] ?? .zero, attempt.start.duration(to: now))
                }
            }
            return (expired, waits)
        }
    }

    /// How many attempts are watched (for tests).
    var watchedCount: Int { state.withLock { $0.attempts.count } }
}

/// How a watched attempt ended: the statement's result, or the watch's timeout.
enum AttemptResolution<T: Sendable>: Sendable {
    case finished(Result<T, any Error>)
    case timedOut
}
