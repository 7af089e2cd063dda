import Synchronization

/// Fires the deadlines of many waits from one task that wakes every ``tick``, instead of a timer
/// task per wait.
///
/// A timer per wait (a sleeping child task racing the work) costs a task, a dispatch timer that
/// still fires long after the work finished, and a thread woken for it; on the hot path of a
/// participant or a starter that is several per saga. Here a wait schedules its deadline
/// (``schedule(at:_:)``) and cancels it when the work finishes first (``cancel(_:)``); ``run()``
/// fires the due ones once per tick, so a deadline fires within one tick after it.
///
/// While ``run()`` is not running nothing is scheduled (``schedule(at:_:)`` returns `nil`): the
/// caller keeps a timer of its own then.
package final class DeadlineTicker: Sendable {
    /// How often ``run()`` looks for due deadlines.
    package let tick: Duration

    private struct State {
        var running = false
        var nextID = 0
        var scheduled: [Int: (deadline: ContinuousClock.Instant, fire: @Sendable () -> Void)] = [:]
    }

    private let state = Mutex(State())

    package init(tick: Duration) {
        self.tick = tick
    }

    /// Calls `fire` once, at or within one ``tick`` after `deadline`, unless ``cancel(_:)`` comes
    /// first (or when ``run()`` ends before it). Returns the id to cancel it with, or `nil`
    /// (nothing scheduled) while ``run()`` is not running.
    package func schedule(at deadline: ContinuousClock.Instant, _ fire: @escaping @Sendable () -> Void) -> Int? {
        state.withLock { state -> Int? in
            guard state.running else { return nil }
            state.nextID &+= 1
            state.scheduled[state.nextID] = (deadline, fire)
            return state.nextID
        }
    }

    /// Withdraws a deadline that has not fired yet.
    package func cancel(_ id: Int) {
        state.withLock { _ = $0.scheduled.removeValue(forKey: id) }
    }

    /// Fires the deadlines due at `now` (``run()`` calls it every tick).
    package func fireDue(at now: ContinuousClock.Instant) {
        let due = state.withLock { state -> [@Sendable () -> Void] in
            var due: [@Sendable () -> Void] = []
            for (id, entry) in state.scheduled where entry.deadline <= now {
                due.append(entry.fire)
                state.scheduled[id] = nil
            }
            return due
        }
        for fire in due { fire() }
    }

    /// Whether ``run()`` is running (deadlines can be scheduled).
    package var isRunning: Bool { state.withLock { $0.running } }

    /// How many deadlines are scheduled (for tests).
    package var scheduledCount: Int { state.withLock { $0.scheduled.count } }

    /// Fires due deadlines every ``tick`` until cancelled, then calls `eachTick` (for a caller
    /// that also looks at its waits each tick); when cancelled, fires the ones left (their waits
    /// end early rather than never) and schedules nothing more.
    package func run(eachTick: (@Sendable (ContinuousClock.Instant) -> Void)? = nil) async {
        state.withLock { $0.running = true }
        while !Task.isCancelled {
            do { try await Task.sleep(for: tick) } catch { break }
            let now = ContinuousClock.now
            fireDue(at: now)
            eachTick?(now)
        }
        let left = state.withLock { state -> [@Sendable () -> Void] in
            state.running = false
            defer { state.scheduled = [:] }
            return state.scheduled.values.map(\.fire)
        }
        for fire in left { fire() }
    }
}

/// A value that one party sets once (the first setting stands) and another awaits: the outcome
/// of a race between some work and its deadline, without a task group child per contestant.
package final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiter: CheckedContinuation<Value, Never>?
    }

    private let state = Mutex(State())

    package init() {}

    /// Sets the value unless it is set already; wakes the waiter.
    package func set(_ value: Value) {
        let waiter = state.withLock { state -> CheckedContinuation<Value, Never>? in
            guard state.value == nil else { return nil }
            state.value = value
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: value)
    }

    /// Waits until the value is set (one waiter at a time). Not cancellable by itself: the
    /// contestants end on cancellation and set it.
    package func value() async -> Value {
        await withCheckedContinuation { continuation in
            let settled = state.withLock { state -> Value? in
                if let value = state.value { return value }
                state.waiter = continuation
                return nil
            }
            if let settled { continuation.resume(returning: settled) }
        }
    }
}
