import Foundation
import Participant

/// The `/metrics` the console serves: gauges read from the shared store at scrape time, so they
/// are the same whichever process answers and survive every restart (the participants' own
/// `/metrics`, from `SagaPrometheus`, count what each process did).
///
/// - `sagakit_store_sagas{saga,status}`: sagas per definition and status (every status,
///   `waiting` included: sagas stopped at a wait step until their signal arrives).
/// - `sagakit_store_sagas_by_version{saga,version,status}`: the same per definition version
///   (``SagaStore/countByVersion(name:topology:)``; absent when the store cannot count by
///   version): a version is retired once its sagas have all ended (`Docs/Upgrades.md`).
/// - `sagakit_store_sagas_stalled{saga}`: running or compensating sagas that made no progress
///   for the console's stalled threshold (``SagaStore/listStalled(_:noProgressSince:)``: a
///   reaper's re-send is no progress).
/// - `sagakit_store_sagas_stuck_retrying{saga}`: running or compensating sagas whose current step
///   was attempted at least the console's stuck-attempts number of times.
///
/// - `sagakit_store_participants{service,state}`: the participant processes of the console's
///   topology that report in (`state="live"`) or stopped reporting (`state="silent"`), per
///   service (``ServiceDirectory``; absent when the store keeps no participant records).
/// - `sagakit_store_command_live_handlers{command}`: for every command of the known definitions,
///   how many live processes of the console's topology handle it; 0 means sagas that reach its
///   step wait (the alert `SagaCommandWithoutHandler`).
///
/// Labels are definition names, statuses, services and commands only, never a saga id.
enum StoreMetrics {
    static func render(
        store: any SagaStore, stalledThreshold: Double, stuckAttempts: Int, topology: String, definitions: [SagaDefinition],
        now: Date = Date()
    ) async throws -> String {
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
        // One count per definition: by version when the store can (the total is their sum).
        var byVersion: [String: [Int: [SagaStatus: Int]]] = [:]
        for name in names.sorted() {
            let counts: [SagaStatus: Int]
            do {
                let versions = try await store.countByVersion(name: name, topology: nil)
                byVersion[name] = versions
                counts = versions.values.reduce(into: [:]) { total, one in total.merge(one, uniquingKeysWith: +) }
            } catch let error as SagaError where error.code == .unsupported {
                counts = try await store.countByStatus(name: name)
            }
            for status in SagaStatus.allCases {
                lines.append("sagakit_store_sagas{saga=\"\(escape(name))\",status=\"\(status.rawValue)\"} \(counts[status] ?? 0)")
            }
        }
        if !byVersion.isEmpty {
            lines += [
                "# HELP sagakit_store_sagas_by_version Sagas in the store by definition, definition version and status.",
                "# TYPE sagakit_store_sagas_by_version gauge",
            ]
            for (name, versions) in byVersion.sorted(by: { $0.key < $1.key }) {
                for (version, counts) in versions.sorted(by: { $0.key < $1.key }) {
                    for status in SagaStatus.allCases {
                        lines.append(
                            "sagakit_store_sagas_by_version{saga=\"\(escape(name))\",version=\"\(version)\",status=\"\(status.rawValue)\"} \(counts[status] ?? 0)"
                        )
                    }
                }
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
        if let participants = try? await store.participants() {
            lines += services(ServiceDirectory(participants: participants, now: now), topology: topology, definitions: definitions)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The participants' gauges (see the type's documentation).
    static func services(_ directory: ServiceDirectory, topology: String, definitions: [SagaDefinition]) -> [String] {
        var lines = [
            "# HELP sagakit_store_participants Participant processes that report in to the store (live) or stopped reporting (silent).",
            "# TYPE sagakit_store_participants gauge",
        ]
        for service in directory.services(topology: topology) {
            lines.append("sagakit_store_participants{service=\"\(escape(service.service))\",state=\"live\"} \(service.live)")
            lines.append("sagakit_store_participants{service=\"\(escape(service.service))\",state=\"silent\"} \(service.silent)")
        }
        lines += [
            "# HELP sagakit_store_command_live_handlers Live participant processes that handle each command of the known definitions.",
            "# TYPE sagakit_store_command_live_handlers gauge",
        ]
        for command in ServiceDirectory.commandUses(definitions).keys.sorted() {
            let live = directory.handlers(of: command, topology: topology).live
            lines.append("sagakit_store_command_live_handlers{command=\"\(escape(command))\"} \(live)")
        }
        return lines
    }

    /// A label value in the exposition format: backslash, quote and newline escaped.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
