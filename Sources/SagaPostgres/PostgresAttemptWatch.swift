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
    /// A watched attempt.
    private struct Attempt {
        let start: ContinuousClock.Instant
        let deadline: ContinuousClock.Instant
        let generation: Int
        let leased: LeasedConnection
        /// Whether it has had no connection yet when last looked at.
        var waitingForConnection = true
    }
    private struct Attempts {
        var byID: [Int: Attempt] = [:]
        /// When an attempt last finished before its deadline (with a result or an error).
        var lastFinished: ContinuousClock.Instant?
        /// Since when attempts have run without one finishing: the last finish while others
        /// ran, or the start of the first one after none ran. An attempt that ran out of time
        /// leaves it: its retry, within a second, waits for the same answer.
        var silentSince: ContinuousClock.Instant?
        /// When an attempt last ended, finished or not.
        var lastEnded: ContinuousClock.Instant?
    }

    /// How soon after an attempt that ran out of time another one counts as its retry, still
    /// waiting for the same answer (retries back off up to 1 s).
    static let retryWindow: Duration = .seconds(2)
    /// The watched attempts, by deadline id.
    private let attempts = Mutex(Attempts())
    /// Says when statements stop finishing, and when they finish again.
    private let stalls: Mutex<StatementStallWatch>

    init(tick: Duration = .milliseconds(250), stallThreshold: Duration = StatementStallWatch.defaultThreshold) {
        deadlines = DeadlineTicker(tick: tick)
        stalls = Mutex(StatementStallWatch(threshold: stallThreshold))
    }

    /// Watches an attempt until ``unwatch(_:)``: `expire` is called once when `deadline` passes.
    /// Returns `nil` (nothing watched) while ``run(pool:)`` is not running.
    func watch(
        deadline: ContinuousClock.Instant, generation: Int, leased: LeasedConnection, expire: @escaping @Sendable () -> Void
    ) -> Int? {
        guard let id = deadlines.schedule(at: deadline, expire) else { return nil }
        let attempt = Attempt(start: .now, deadline: deadline, generation: generation, leased: leased)
        attempts.withLock { attempts in
            if attempts.byID.isEmpty,
                attempts.silentSince == nil || attempts.lastEnded.map({ $0.duration(to: attempt.start) > Self.retryWindow }) ?? true
            {
                attempts.silentSince = attempt.start
            }
            attempts.byID[id] = attempt
        }
        return id
    }

    /// Stops watching an attempt (it finished, or it was expired already).
    func unwatch(_ id: Int) {
        deadlines.cancel(id)
        let now = ContinuousClock.now
        attempts.withLock { attempts in
            guard let attempt = attempts.byID.removeValue(forKey: id) else { return }
            attempts.lastEnded = now
            // One that ran out of time is no sign that the server answers.
            if now < attempt.deadline {
                attempts.lastFinished = now
                attempts.silentSince = attempts.byID.isEmpty ? nil : now
            }
        }
    }

    /// Looks at the attempts every tick until cancelled: expires those past their deadline, tells
    /// the pool, per generation, the longest wait of an attempt that has no connection yet, and
    /// calls `report` when no attempt has finished for the stall threshold while some wait, and
    /// when one finishes again (``StatementStallWatch``). When cancelled (the store is closing its
    /// pool), expires the attempts still watched.
    func run(pool: PostgresPool, report: @escaping @Sendable (StatementStallWatch.Event) -> Void = { _ in }) async {
        await deadlines.run { [self] now in
            let (waits, observation) = self.attempts.withLock {
                attempts -> ([Int: Duration], StatementStallWatch.Observation) in
                var waits: [Int: Duration] = [:]
                let observation = StatementStallWatch.Observation(
                    lastFinished: attempts.lastFinished, silentSince: attempts.silentSince, running: attempts.byID.count)
                for (id, attempt) in attempts.byID {
                    // A connection once leased is the attempt's for good: no longer waiting.
                    guard attempt.waitingForConnection else { continue }
                    guard !attempt.leased.everLeased else {
                        attempts.byID[id]?.waitingForConnection = false
                        continue
                    }
                    waits[attempt.generation] = max(waits[attempt.generation] ?? .zero, attempt.start.duration(to: now))
                }
                return (waits, observation)
            }
            for (generation, waited) in waits { pool.waiting(generation, for: waited) }
            if let event = self.stalls.withLock({ $0.observe(observation, at: now) }) { report(event) }
        }
    }

    /// How many attempts are watched (for tests).
    var watchedCount: Int { deadlines.scheduledCount }
}

/// Decides when to say that the store's statements have stopped finishing — the server paused
/// or overloaded, the network silently dropping packets, a lock held — and when they finish
/// again: pure, fed every tick with what the attempts look like.
///
/// Without it such a stall was silent: each statement waits up to its timeout, sagas wait with
/// them, and only the driver's own lines (if any) hinted at it.
struct StatementStallWatch: Sendable {
    /// How long no attempt may finish while some wait before it is reported: 10 s.
    static let defaultThreshold: Duration = .seconds(10)
    /// How often a stall that goes on is reported again: every minute.
    static let repeatEvery: Duration = .seconds(60)

    /// What the attempts look like at one tick.
    struct Observation: Sendable, Equatable {
        /// When an attempt last finished before its deadline, if one ever did.
        var lastFinished: ContinuousClock.Instant?
        /// Since when attempts have run without one finishing (attempts that ran out of time
        /// and were tried again included).
        var silentSince: ContinuousClock.Instant?
        /// How many attempts are running.
        var running: Int
    }

    /// What to report.
    enum Event: Sendable, Equatable {
        /// No attempt has finished for `silent` while `waiting` attempts run.
        case stalled(silent: Duration, waiting: Int)
        /// The stall reported goes on.
        case stillStalled(silent: Duration, waiting: Int)
        /// An attempt finished again, after `silent` without one.
        case finishingAgain(silent: Duration)
    }

    let threshold: Duration
    /// Since when no attempt has finished, once reported.
    private(set) var stalledSince: ContinuousClock.Instant?
    private var lastReport: ContinuousClock.Instant?

    init(threshold: Duration = Self.defaultThreshold) {
        self.threshold = threshold
    }

    /// What to report at `now`, if anything.
    mutating func observe(_ observation: Observation, at now: ContinuousClock.Instant) -> Event? {
        if let since = stalledSince {
            if let finished = observation.lastFinished, finished > since {
                stalledSince = nil
                lastReport = nil
                return .finishingAgain(silent: since.duration(to: finished))
            }
            guard observation.running > 0, let last = lastReport, last.duration(to: now) >= Self.repeatEvery else { return nil }
            lastReport = now
            return .stillStalled(silent: since.duration(to: now), waiting: observation.running)
        }
        guard observation.running > 0, let since = observation.silentSince, since.duration(to: now) >= threshold else {
            return nil
        }
        stalledSince = since
        lastReport = now
        return .stalled(silent: since.duration(to: now), waiting: observation.running)
    }
}

/// How a watched attempt ended: the statement's result, or the watch's timeout.
enum AttemptResolution<T: Sendable>: Sendable {
    case finished(Result<T, any Error>)
    case timedOut
}
