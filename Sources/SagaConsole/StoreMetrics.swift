import Foundation
import Participant
import Synchronization

/// The `/metrics` the console serves: gauges read from the shared store at scrape time, so they
/// are the same whichever process answers and survive every restart (the participants' own
/// `/metrics`, from `SagaPrometheus`, count what each process did).
///
/// - `sagakit_store_sagas{saga,status}`: sagas per definition and status (every status,
///   `waiting` included: sagas stopped at a wait step until their signal arrives).
/// - `sagakit_store_sagas_by_version{saga,version,status}`: the same per definition version
///   (``SagaStore/countByVersion(name:topology:)``; absent when the store cannot count by
///   version): a version is retired once its sagas have all ended (`Docs/Upgrades.md`). The
///   finished sagas' counts (`completed`, `compensated`, in both metrics) are up to 5 minutes
///   old (``SagaCountCache``), the others are counted at every scrape.
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
        countCache: SagaCountCache = SagaCountCache(), now: Date = Date()
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
                let versions = try await countCache.countByVersion(name: name, store: store)
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

/// The counts by version and status that `/metrics` serves: the finished sagas (completed,
/// compensated) from a count at most ``interval`` old, the unfinished ones counted at every
/// scrape. Counting every saga a store keeps reads all of them (about a second per million on
/// PostgreSQL, at every scrape: past 8 s the scrape fails); the unfinished ones, which the alerts
/// watch, come from the status index (``SagaStore/unfinishedByVersion(name:topology:)``).
final class SagaCountCache: Sendable {
    /// How old the finished sagas' counts may be.
    let interval: Duration
    private let taken = Mutex<[String: (at: ContinuousClock.Instant, counts: [Int: [SagaStatus: Int]])]>([:])

    init(interval: Duration = .seconds(300)) { self.interval = interval }

    /// The sagas of `name` by version and status (every status present for a version found),
    /// as ``SagaStore/countByVersion(name:topology:)`` counts them, with the finished ones up
    /// to ``interval`` old.
    func countByVersion(
        name: String, store: any SagaStore, now: ContinuousClock.Instant = .now
    ) async throws -> [Int: [SagaStatus: Int]] {
        guard let earlier = taken.withLock({ $0[name] }), now - earlier.at < interval else {
            let counts = try await store.countByVersion(name: name, topology: nil)
            taken.withLock { $0[name] = (now, counts) }
            return counts
        }
        return Self.merging(finishedOf: earlier.counts, unfinished: try await store.unfinishedByVersion(name: name, topology: nil))
    }

    /// `counts` with its unfinished statuses replaced by `unfinished`'s (0 where it has none).
    static func merging(
        finishedOf counts: [Int: [SagaStatus: Int]], unfinished: [Int: [SagaStatus: Int]]
    ) -> [Int: [SagaStatus: Int]] {
        var merged = counts
        for version in Set(counts.keys).union(unfinished.keys) {
            for status in SagaStatus.allCases {
                if status.hasEnded {
                    merged[version, default: [:]][status] = counts[version]?[status] ?? 0
                } else {
                    merged[version, default: [:]][status] = unfinished[version]?[status] ?? 0
                }
            }
        }
        return merged
    }
}
