import Logging
import Synchronization

/// Marks published outbox messages as sent in batches, off the delivery path.
///
/// Marking is an optimisation, not a guarantee: a message that is confirmed by the broker but
/// not yet marked (the process died before the flush) is published again by the outbox relay
/// after its grace period, and participants ignore it as stale. Batching turns one store write
/// per step into one per flush.
final class SentMarker: Sendable {
    private let pending = Mutex<[String]>([])
    private let store: any SagaStore
    private let interval: Duration
    private let logger: Logger

    init(store: any SagaStore, interval: Duration, logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    /// Queues ids to mark at the next flush.
    func enqueue(_ ids: [String]) {
        pending.withLock { $0.append(contentsOf: ids) }
    }

    /// Flushes every `interval` until cancelled.
    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            await flush()
        }
    }

    /// Marks everything queued so far.
    func flush() async {
        let ids = pending.withLock { pending -> [String] in
            defer { pending.removeAll(keepingCapacity: true) }
            return pending
        }
        guard !ids.isEmpty else { return }
        do {
            try await store.markSent(ids)
        } catch {
            // Not lost: the relay re-sends them, and they are ignored as stale.
            logger.warning(
                "could not mark \(ids.count) outbox message(s) sent; the relay may publish them again", metadata: ["error": "\(error)"])
        }
    }
}
