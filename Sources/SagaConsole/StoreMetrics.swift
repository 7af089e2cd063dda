import Foundation
import Participant

/// The `/metrics` the console serves: gauges read from the shared store at scrape time, so they
/// are the same whichever process answers and survive every restart (the participants' own
/// `/metrics`, from `SagaPrometheus`, count what each process did).
///
/// - `sagakit_store_sagas{saga,status}`: sagas per definition and status (every status,
///   `waiting` included: sagas stopped at a wait step until their signal arrives).
/// - `sagakit_store_sagas_stalled{saga}`: running or compensating sagas that made no progress
///   for the console's stalled threshold (``SagaStore/listStalled(_:noProgressSince:)``: a
///   reaper's re-send is no progress).
/// - `sagakit_store_sagas_stuck_retrying{saga}`: running or compensating sagas whose current step
///   was attempted at least the console's stuck-attempts number of times.
///
/// Labels are definition names and statuses only, never a saga id.
enum StoreMetrics {
    static func render(store: any SagaStore, stalledThreshold: Double, stuckAttempts: Int, now: Date = Date()) async throws -> String {
        var names = Set<String>()
        if let stored = try? await store.definitions() { names.formUnion(stored.map(\.name)) }
        let active: Set<SagaStatus> = [.running, .compensating]
        let stalled = try await store.listStalled(
            SagaQuery(statuses: active, limit: 10_000), noProgressSince: now.addingTimeInterval(-stalledThreshold))
        let stuck = try await store.list(SagaQuery(statuses: active, minimumAttempt: stuckAttempts, limit: 10_000))
        names.formUnion(stalled.map(\.name))
        names.formUnion(stuck.map(\.name))
        var lines = [
            "# HELP sagakit_store_sagas Sagas in the store by definition and status.",
            "# TYPE sagakit_store_sagas gauge",
        ]
        for name in names.sorted() {
            let counts = try await store.countByStatus(name: name)
            for status in SagaStatus.allCases {
                lines.append("sagakit_store_sagas{saga=\"\(escape(name))\",status=\"\(status.rawValue)\"} \(counts[status] ?? 0)")
            }
        }
        lines += [
            "# HELP sagakit_store_sagas_stalled Running or compensating sagas not updated for \(Int(stalledThreshold)) s.",
            "# TYPE sagakit_store_sagas_stalled gauge",
        ]
        for name in names.sorted() {
            lines.append("sagakit_store_sagas_stalled{saga=\"\(escape(name))\"} \(stalled.count { $0.name == name })")
        }
        lines += [
            "# HELP sagakit_store_sagas_stuck_retrying Running or compensating sagas at attempt \(stuckAttempts) or more of their step.",
            "# TYPE sagakit_store_sagas_stuck_retrying gauge",
        ]
        for name in names.sorted() {
            lines.append("sagakit_store_sagas_stuck_retrying{saga=\"\(escape(name))\"} \(stuck.count { $0.name == name })")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A label value in the exposition format: backslash, quote and newline escaped.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
