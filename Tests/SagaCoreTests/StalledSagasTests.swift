import Foundation
import SagaCore
import Testing

/// "Stalled" means no progress: a reaper's re-send updates a saga, and must not hide it.
@Suite("Stalled sagas")
struct StalledSagasTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    private func saga(_ id: String, updated: Double, reaped: Int = 0, lastRecord: Double? = nil, resentAfter: Double? = nil) -> SagaState {
        var history: [StepRecord] = []
        if let lastRecord {
            let at = now.addingTimeInterval(lastRecord)
            history.append(
                StepRecord(step: 0, stepName: "a", phase: .action, attempt: 1, startedAt: at, finishedAt: at, outcome: .completed))
        }
        if let resentAfter {
            let at = now.addingTimeInterval(resentAfter)
            history.append(StepRecord(step: 1, stepName: "b", phase: .action, attempt: 1, startedAt: at, finishedAt: at, outcome: .resent))
        }
        return SagaState(
            id: id, name: "order", status: .running, currentStep: 1, attempt: 1, payload: [:], context: [:], history: history,
            reapAttempts: reaped, createdAt: now.addingTimeInterval(-7200), updatedAt: now.addingTimeInterval(updated), version: 1)
    }

    @Test func aSagaTheReaperReSentAMomentAgoIsStillStalled() async throws {
        let store = InMemorySagaStore()
        let sagas = [
            saga("quiet", updated: -1800),  // not updated for 30 min
            saga("re-sent", updated: -5, reaped: 2, lastRecord: -2000, resentAfter: -5),  // no progress for 33 min
            saga("moved-then-re-sent", updated: -5, reaped: 1, lastRecord: -60, resentAfter: -5),  // progress a minute ago
            saga("busy", updated: -5, lastRecord: -5),
            saga("re-sent-never-ran", updated: -5, reaped: 1, resentAfter: -5),  // no record but re-sends: since its start
        ]
        for state in sagas { _ = try await store.create(state, outbox: []) }
        #expect(sagas[1].lastProgressAt == now.addingTimeInterval(-2000))
        #expect(sagas[3].lastProgressAt == sagas[3].updatedAt)
        let stalled = try await store.listStalled(SagaQuery(statuses: [.running]), noProgressSince: now.addingTimeInterval(-900))
        #expect(stalled.map(\.id) == ["re-sent", "re-sent-never-ran", "quiet"])
        // The plain filter on the update time loses the re-sent ones.
        #expect(try await store.list(SagaQuery(updatedBefore: now.addingTimeInterval(-900))).map(\.id) == ["quiet"])
        let limited = try await store.listStalled(SagaQuery(statuses: [.running], limit: 1), noProgressSince: now.addingTimeInterval(-900))
        #expect(limited.map(\.id) == ["re-sent"])
    }
}
