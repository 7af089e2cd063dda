import Foundation
import Participant

/// The console's own health, for an orchestrator's probes: live while it answers, ready while
/// its saga store answers (the pages and `/metrics` need it; the broker is needed only for dead
/// letters and live updates, which say so on their own). The same JSON as a participant's
/// `/health/ready` (``SagaCore/SagaHealthReport``).
final class ConsoleHealth: Sendable {
    /// How long a readiness probe waits for the store (well within a probe's usual 1 s–10 s).
    static let patience: Duration = .seconds(2)

    private let registry = SagaHealth()
    private let store: SagaHealth.Component

    /// Creates the console's registry with its one part, the saga store (not ready until probed).
    init(storeDescription: String) {
        let location = storeDescription.isEmpty ? "" : " (\(storeDescription))"
        store = registry.register("saga store\(location)", detail: "not asked yet")
    }

    /// Asks the store for one saga (bounded by ``patience``) and reports.
    func probe(_ sagaStore: any SagaStore) async -> SagaHealthReport {
        do {
            _ = try await withTimeLimit(Self.patience, timedOut: { StoreDidNotAnswer() }) {
                try await sagaStore.list(SagaQuery(limit: 1))
            }
            store.ready("answers")
        } catch {
            store.notReady("\(error)")
        }
        return registry.report()
    }

    private struct StoreDidNotAnswer: Error, CustomStringConvertible {
        var description: String { "no answer within \(ConsoleHealth.patience)" }
    }
}
