import Logging
import Synchronization

/// Marks published outbox messages as sent in batches, off the delivery path.
///
/// Marking is an optimisation, not a guarantee: a message that is confirmed by the broker but
/// not yet marked (the process died before the flush) is published again by the outbox relay
/// after its grace period, and participants ignore it as stale. Batching turns one store write
/// per published message into one per flush.
///
/// The marker sleeps while nothing is queued (an idle service does not wake it). The first id
/// queued starts a gathering window of `interval`; the ids queued until it ends are marked with
/// one store write. At one saga at a time this is one write per window instead of one per step;
/// under load, one per window whatever the rate.
final class SentMarker: Sendable {
    private struct State {
        var pending: [String] = []
        /// ``run()`` is active: ids queued now are flushed by it.
        var running = false
        /// ``run()`` waits for the first id.
        var waiter: CheckedContinuation<Void, Never>?
    }

    /// The gathering window of participants and managers: short against the outbox relay's
    /// grace period (5 s by default), long enough that a service running one saga at a time
    /// marks several steps' messages with one write.
    static let defaultInterval = Duration.milliseconds(100)

    /// The window of a participant whose outbox relay republishes unmarked messages after
    /// `gracePeriod`: the default, or a tenth of the grace period when that is shorter, so that a
    /// confirmed message is marked long before a relay takes it for lost (a short grace period
    /// would otherwise have the relay publish copies of messages that only wait for their mark).
    static func interval(forGracePeriod gracePeriod: Duration) -> Duration {
        min(defaultInterval, gracePeriod / 10)
    }

    private let state = Mutex(State())
    private let mark: @Sendable ([String]) async throws -> Void
    private let interval: Duration
    private let logger: Logger

    /// A marker whose flushes call `mark` with the window's ids.
    init(interval: Duration, logger: Logger, mark: @escaping @Sendable ([String]) async throws -> Void) {
        self.mark = mark
        self.interval = interval
        self.logger = logger
    }

    /// A marker whose flushes mark the ids sent in `store`.
    convenience init(store: any SagaStore, interval: Duration, logger: Logger) {
        self.init(interval: interval, logger: logger) { try await store.markSent($0) }
    }

    /// Queues ids to mark at the end of the current window. Returns `false` (nothing queued) when
    /// ``run()`` is not active: the caller marks them itself.
    @discardableResult
    func enqueue(_ ids: [String]) -> Bool {
        let (accepted, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard state.running else { return (false, nil) }
            guard !ids.isEmpty else { return (true, nil) }
            state.pending.append(contentsOf: ids)
            defer { state.waiter = nil }
            return (true, state.waiter)
        }
        waiter?.resume()
        return accepted
    }

    /// Flushes each window's ids until cancelled, then what is still queued. Returns at once
    /// when another call is already running (copies of a manager share their marker).
    func run() async {
        let alreadyRunning = state.withLock { state in
            defer { state.running = true }
            return state.running
        }
        guard !alreadyRunning else { return }
        while !Task.isCancelled {
            await waitForFirstID()
            guard !Task.isCancelled else { break }
            try? await Task.sleep(for: interval)
            await flush()
        }
        state.withLock { $0.running = false }
        await flush()
    }

    /// Returns once an id is queued, or the task is cancelled.
    private func waitForFirstID() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if !state.pending.isEmpty || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }

    /// Marks everything queued so far.
    func flush() async {
        let ids = state.withLock { state -> [String] in
            defer { state.pending.removeAll(keepingCapacity: true) }
            return state.pending
        }
        guard !ids.isEmpty else { return }
        do {
            try await mark(ids)
        } catch {
            // Not lost: the relay re-sends them, and they are ignored as stale.
            logger.warning(
                "could not mark \(ids.count) outbox message(s) sent; the relay may publish them again", metadata: ["error": "\(error)"])
        }
    }
}
