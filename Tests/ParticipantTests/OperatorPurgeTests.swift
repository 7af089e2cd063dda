import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

/// `saga purge` deletes finished sagas older than N days from a real store, and nothing else.
@Suite("saga purge on a SQLite store", .timeLimit(.minutes(2)))
struct OperatorPurgeTests {
    @Test func purgeDeletesOnlyOldFinishedSagas() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-purge-\(UUID().uuidString).db").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = SQLiteSagaStore(path: path)
        let days = { (count: Double) in Date().addingTimeInterval(-count * 86_400) }
        func saga(_ id: String, _ status: SagaStatus, updated: Date) -> SagaState {
            SagaState(
                id: id, name: "trip", status: status, currentStep: 0, attempt: 1, payload: ["card": "4111"], context: [:], history: [],
                createdAt: updated, updatedAt: updated, version: 0)
        }
        try await store.withRunning { store in
            for state in [
                saga("old-done", .completed, updated: days(40)), saga("old-undone", .compensated, updated: days(31)),
                saga("old-stopped", .needsAttention, updated: days(40)), saga("old-running", .running, updated: days(40)),
                saga("new-done", .completed, updated: days(2)),
            ] {
                _ = try await store.create(state, outbox: [])
            }
        }
        func purge(_ arguments: [String]) async -> CommandRun {
            var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SAGAKIT_") }
            environment["SAGAKIT_STORE_URL"] = "sqlite://\(path)"
            return await CommandRun.run(SagaCLI.executable.path, ["purge"] + arguments, environment: environment)
        }

        let dry = await purge(["--older-than-days", "30", "--dry-run", "--json"])
        #expect(dry.status == 0, "\(dry)")
        let counted = try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any]
        #expect(counted?["wouldDelete"] as? Int == 2, "\(dry)")
        let refused = await purge(["--older-than-days", "0"])
        #expect(refused.status != 0 && refused.stderr.contains("--older-than-days must be a positive number of days"), "\(refused)")

        let done = await purge(["--older-than-days", "30"])
        #expect(done.status == 0, "\(done)")
        #expect(done.stdout.hasPrefix("deleted 2 finished saga(s) of topology prefix 'sagakit'"), "\(done)")
        let remaining = try await SQLiteSagaStore(path: path).withRunning { try await $0.list(SagaQuery(limit: 10)) }
        #expect(Set(remaining.map(\.id)) == ["old-stopped", "old-running", "new-done"])
    }
}
