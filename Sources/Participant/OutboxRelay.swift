import Foundation
import Logging
import ServiceLifecycle

/// Publishes commands that were committed to the store but not confirmed by the broker (the
/// process died between commit and publish, or the broker was away). Every participant runs one;
/// a command published twice is harmless because participants ignore commands that are no
/// longer current.
struct OutboxRelay: Sendable {
    let engine: SagaEngine
    let pollInterval: Duration
    let gracePeriod: Duration
    let logger: Logger

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

    /// Publishes pending messages older than the grace period; returns how many were sent.
    func relayOnce(limit: Int = 500) async throws -> Int {
        let cutoff = Date().addingTimeInterval(-gracePeriod.seconds)
        let pending = try await engine.store.pendingOutbox(createdBefore: cutoff, limit: limit)
        guard !pending.isEmpty else { return 0 }
        logger.info("relaying \(pending.count) unpublished command(s) from the outbox")
        try await engine.publish(pending, logger: logger)
        return pending.count
    }
}

/// Sleeps, returning early (by throwing `CancellationError`) on cancellation or graceful
/// shutdown.
func gracefulSleep(_ duration: Duration) async throws {
    try await cancelWhenGracefulShutdown {
        try await Task.sleep(for: duration)
    }
}
