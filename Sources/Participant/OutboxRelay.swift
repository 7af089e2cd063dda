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

    /// Publishes this topology's due messages older than the grace period; returns how many were
    /// sent. Each failed message is recorded with its next attempt time.
    func relayOnce(limit: Int = 500, now: Date = Date()) async throws -> Int {
        let cutoff = now.addingTimeInterval(-gracePeriod.seconds)
        let pending = try await engine.store.pendingOutbox(
            topology: engine.topology.prefix, createdBefore: cutoff, now: now, limit: limit)
        guard !pending.isEmpty else { return 0 }
        logger.info("relaying \(pending.count) unpublished command(s) from the outbox")
        var sent: [String] = []
        var failed: [Date: [String]] = [:]
        for message in pending {
            do {
                try await engine.bus.publish(SagaMessages.outgoing(message))
                sent.append(message.id)
                CrashPoints.reach(.insideOutboxRelay)
            } catch {
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
        }
        if !sent.isEmpty {
            if let sentMarker = engine.sentMarker {
                sentMarker.enqueue(sent)
            } else {
                try await engine.store.markSent(sent)
            }
        }
        for (retryAt, ids) in failed {
            try await engine.store.recordFailedAttempts(ids, retryAt: retryAt)
        }
        return sent.count
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
