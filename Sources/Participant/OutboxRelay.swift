import Foundation
import Logging
import ServiceLifecycle

/// Publishes commands that were committed to the store but not confirmed by the broker (the
/// process died between commit and publish, or the broker was away). Every participant runs one;
/// a command published twice is harmless because participants ignore commands that are no
/// longer current.
///
/// A relay reads only the messages of its own topology (``SagaTopology/prefix``), so deployments
/// that share a store never publish each other's commands. A message that fails to publish is
/// deferred with an exponential backoff (``SagaStore/recordFailedAttempts(_:retryAt:)``) and moves
/// behind the others: messages that can never be published cannot keep good ones waiting.
struct OutboxRelay: Sendable {
    let engine: SagaEngine
    let pollInterval: Duration
    let gracePeriod: Duration
    let logger: Logger
    /// From this many failed attempts on, every further failure of a message is logged as an
    /// error naming its saga.
    var loudAfterAttempts = 5
    /// The longest a failing message waits before its next attempt.
    var maximumBackoff: Duration = .seconds(300)

    /// Polls until cancelled or gracefully shut down.
    func run() async {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await gracefulSleep(pollInterval)
                _ = try await relayOnce()
            } catch is CancellationError {
                return
            } catch {
                logger.warning("outbox relay pass failed; retrying at the next poll", metadata: ["error": "\(error)"])
            }
        }
    }

    /// How long a relay holds the messages it claimed before another relay may take them
    /// (`nil`: ``claimLease(forGracePeriod:)``).
    var claimLease: Duration?
    /// How many sagas' messages are published at once (each saga's in their order): the bus
    /// pipelines their confirms instead of waiting for each before the next.
    var concurrentSagas = 64

    /// Publishes this topology's due messages older than the grace period, `limit` at a time
    /// (claimed in the store, so that other processes' relays do not publish them too), until
    /// none is left or a batch had a failure (the broker's trouble waits for the next poll);
    /// returns how many were sent. Each failed message is recorded with its next attempt time.
    func relayOnce(limit: Int = 500, now: Date = Date()) async throws -> Int {
        let cutoff = now.addingTimeInterval(-gracePeriod.seconds)
        var total = 0
        while !Task.isCancelled {
            let pending = try await engine.store.claimPendingOutbox(
                topology: engine.topology.prefix, createdBefore: cutoff, now: now,
                lease: claimLease ?? Self.claimLease(forGracePeriod: gracePeriod), limit: limit)
            guard !pending.isEmpty else { break }
            logger.info("relaying \(pending.count) unpublished command(s) from the outbox")
            let errors = await publish(pending)
            var sent: [String] = []
            var failed: [Date: [String]] = [:]
            for (message, error) in zip(pending, errors) {
                guard let error else {
                    sent.append(message.id)
                    continue
                }
                let attempts = message.publishAttempts + 1
                let retryAt = now.addingTimeInterval(backoff(afterAttempts: attempts).seconds)
                failed[retryAt, default: []].append(message.id)
                var metadata: Logger.Metadata = [
                    "saga.id": "\(message.sagaID)", "saga.command": "\(message.routingKey)",
                    "outbox.message": "\(message.id)", "outbox.attempts": "\(attempts)", "error": "\(error)",
                ]
                metadata["outbox.retryAt"] = "\(retryAt)"
                if attempts >= loudAfterAttempts {
                    logger.error(
                        "an outbox message keeps failing to publish (\(attempts) attempts); it is retried with a backoff and does not hold up other messages",
                        metadata: metadata)
                } else {
                    logger.warning("relaying an outbox message failed; it will be retried", metadata: metadata)
                }
            }
            // Marked at once (not by the engine's sent marker a moment later): the next batch
            // must not find them again in a store that only reads.
            try await engine.store.markSent(sent)
            for (retryAt, ids) in failed {
                try await engine.store.recordFailedAttempts(ids, retryAt: retryAt)
            }
            total += sent.count
            guard pending.count == limit, failed.isEmpty else { break }
        }
        return total
    }

    /// Four grace periods, at least 2 and at most 60 seconds: publishing a batch takes far less
    /// (a relay still publishing when it ends only risks duplicates, which participants ignore),
    /// and the messages of a relay that dies mid-batch wait no longer than the grace period's
    /// order of magnitude for another relay.
    static func claimLease(forGracePeriod gracePeriod: Duration) -> Duration {
        min(max(gracePeriod * 4, .seconds(2)), .seconds(60))
    }

    /// Publishes the messages, up to ``concurrentSagas`` sagas at a time and each saga's in
    /// their order; the error of each message that failed, by index.
    private func publish(_ messages: [OutboxMessage]) async -> [(any Error)?] {
        var sagas: [SagaID: [Int]] = [:]
        var order: [SagaID] = []
        for (index, message) in messages.enumerated() {
            if sagas[message.sagaID] == nil { order.append(message.sagaID) }
            sagas[message.sagaID, default: []].append(index)
        }
        let bus = engine.bus
        @Sendable func publishInOrder(_ indices: [Int]) async -> [(Int, (any Error)?)] {
            var results: [(Int, (any Error)?)] = []
            for index in indices {
                do {
                    try await bus.publish(SagaMessages.outgoing(messages[index]))
                    results.append((index, nil))
                    CrashPoints.reach(.insideOutboxRelay)
                } catch {
                    results.append((index, error))
                }
            }
            return results
        }
        var errors = [(any Error)?](repeating: nil, count: messages.count)
        await withTaskGroup(of: [(Int, (any Error)?)].self) { group in
            var waiting = order.makeIterator()
            for _ in 0..<max(1, concurrentSagas) {
                guard let saga = waiting.next(), let indices = sagas[saga] else { break }
                group.addTask { await publishInOrder(indices) }
            }
            while let done = await group.next() {
                for (index, error) in done { errors[index] = error }
                if let saga = waiting.next(), let indices = sagas[saga] {
                    group.addTask { await publishInOrder(indices) }
                }
            }
        }
        return errors
    }

    /// The wait before the next attempt of a message that failed `attempts` times: the poll
    /// interval (at least a second), doubled with every further failure, at most
    /// ``maximumBackoff``.
    func backoff(afterAttempts attempts: Int) -> Duration {
        let base = max(pollInterval.seconds, 1)
        let seconds = base * pow(2, Double(min(max(attempts - 1, 0), 20)))
        return .milliseconds(Int64(min(seconds, maximumBackoff.seconds) * 1000))
    }
}

/// Sleeps, returning early (by throwing `CancellationError`) on cancellation or graceful
/// shutdown.
func gracefulSleep(_ duration: Duration) async throws {
    try await cancelWhenGracefulShutdown {
        try await Task.sleep(for: duration)
    }
}
