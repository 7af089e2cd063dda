import Foundation
import Participant

/// What the participants' records in the store (``ParticipantInstance``) say about the services
/// of the sagas: which service handles a command, and whether any of its processes is alive.
struct ServiceDirectory: Sendable {
    /// Every recorded participant process.
    let participants: [ParticipantInstance]
    /// The time the records are judged at.
    let now: Date

    /// The processes that handle a command, as `saga show` reports them.
    struct Handlers: Encodable, Equatable {
        /// The services whose processes have a handler for the command (one, normally).
        var services: [String]
        /// Their processes that report in.
        var live: Int
        /// Their processes that stopped reporting (killed, hung, or cut off from the store).
        var silent: Int
        /// The last report of any of them.
        var lastSeen: Date?
    }

    /// The records of `store`; `nil` when the store keeps none (a store written before SagaKit
    /// recorded participants) or cannot list them.
    static func load(from store: any SagaStore, now: Date = Date()) async -> ServiceDirectory? {
        guard let participants = try? await store.participants() else { return nil }
        return ServiceDirectory(participants: participants, now: now)
    }

    /// The processes of `topology` that handle `command`.
    func handlers(of command: String, topology: String) -> Handlers {
        let handling = participants.filter { $0.topology == topology && $0.commands.contains(command) }
        let live = handling.filter { $0.isLive(at: now) }
        return Handlers(
            services: Array(Set(handling.map(\.service))).sorted(), live: live.count, silent: handling.count - live.count,
            lastSeen: handling.map(\.lastSeen).max())
    }

    /// One line on who handles `command` in `topology`, for people.
    func describe(_ command: String, topology: String) -> String {
        let found = handlers(of: command, topology: topology)
        guard !found.services.isEmpty else {
            let others = Set(participants.filter { $0.topology == topology }.map(\.service)).sorted()
            let seen =
                others.isEmpty ? "none has reported in on topology '\(topology)'" : "services seen: \(others.joined(separator: ", "))"
            return
                "no service has reported a handler for '\(command)' (\(seen)): deploy the service that handles it, or check its handler registry"
        }
        let names = found.services.map { "'\($0)'" }.joined(separator: ", ")
        let last = found.lastSeen.map { "last report \(age($0, now: now))" } ?? "no report"
        if found.live > 0 {
            let silent = found.silent > 0 ? ", \(found.silent) silent" : ""
            return "handled by service \(names): \(found.live) process(es) report in\(silent) (\(last))"
        }
        return
            "handled by service \(names), but none of its \(found.silent) process(es) reported in lately (\(last)): start it, or see why it stopped (its log, `\(SagaOperatorTool.toolName) services`)"
    }
}
