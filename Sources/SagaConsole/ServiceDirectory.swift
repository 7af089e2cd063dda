package import Foundation
package import Participant

/// What the participants' records in the store (``ParticipantInstance``) say about the services
/// of the sagas: which service handles a command, and whether any of its processes is alive.
package struct ServiceDirectory: Sendable {
    /// Every recorded participant process.
    package let participants: [ParticipantInstance]
    /// The time the records are judged at.
    package let now: Date

    /// The processes that handle a command, as `saga show` reports them.
    package struct Handlers: Encodable, Equatable, Sendable {
        /// The services whose processes have a handler for the command (one, normally).
        package var services: [String]
        /// Their processes that report in.
        package var live: Int
        /// Their processes that stopped reporting (killed, hung, or cut off from the store).
        package var silent: Int
        /// The last report of any of them.
        package var lastSeen: Date?
    }

    /// Judges `participants` at `now`.
    package init(participants: [ParticipantInstance], now: Date) {
        self.participants = participants
        self.now = now
    }

    /// A command of a known definition that no live process of the topology handles.
    package struct Unhandled: Encodable, Equatable, Sendable {
        /// The command.
        package var command: String
        /// `definition vN step 'name' (action|compensation|fallback)`, for each use.
        package var usedBy: [String]
        /// Services with a handler for it whose processes are all silent.
        package var silentServices: [String]
    }

    /// The commands of `definitions` (their steps' actions, compensations and fallbacks) that no
    /// live process of `topology` handles, by command.
    package func unhandled(_ definitions: [SagaDefinition], topology: String) -> [Unhandled] {
        let uses = Self.commandUses(definitions)
        return uses.keys.sorted().compactMap { command in
            let found = handlers(of: command, topology: topology)
            guard found.live == 0 else { return nil }
            return Unhandled(command: command, usedBy: uses[command] ?? [], silentServices: found.services)
        }
    }

    /// The definitions whose commands still need handlers: the newest version of each name, and
    /// older versions only while sagas of theirs are unfinished (running, waiting, compensating
    /// or needing attention) on `topology`. A retired version — none of its sagas left — needs
    /// none (``SagaStore/countByVersion(name:topology:)``; a store that cannot count keeps them
    /// all).
    package static func inUse(_ definitions: [SagaDefinition], store: any SagaStore, topology: String?) async -> [SagaDefinition] {
        var kept: [SagaDefinition] = []
        for name in Set(definitions.map(\.name)).sorted() {
            let versions = definitions.filter { $0.name == name }.sorted { $0.version < $1.version }
            guard let newest = versions.last else { continue }
            guard let unfinished = try? await store.unfinishedByVersion(name: name, topology: topology) else {
                kept += versions
                continue
            }
            kept += versions.dropLast().filter { unfinished[$0.version] != nil }
            kept.append(newest)
        }
        return kept
    }

    /// Every command the steps of `definitions` send (actions, compensations, fallbacks; not
    /// waits), with where each is used: `definition vN step 'name' (action)`.
    package static func commandUses(_ definitions: [SagaDefinition]) -> [String: [String]] {
        var uses: [String: [String]] = [:]
        for definition in definitions {
            for step in definition.steps where step.wait == nil {
                let at = "\(definition.name) v\(definition.version) step '\(step.name)'"
                uses[step.action, default: []].append("\(at) (action)")
                if let compensation = step.compensation { uses[compensation, default: []].append("\(at) (compensation)") }
                if let fallback = step.fallback?.action { uses[fallback, default: []].append("\(at) (fallback)") }
            }
        }
        return uses
    }

    /// The processes of one service on one topology.
    package struct Service: Sendable {
        package var topology: String
        package var service: String
        /// Its processes, live and silent.
        package var instances: [ParticipantInstance]
        /// How many of them report in.
        package var live: Int
        /// How many stopped reporting.
        package var silent: Int { instances.count - live }
        /// The commands any of them handles, sorted.
        package var commands: [String] { Array(Set(instances.flatMap(\.commands))).sorted() }
        /// The last report of any of them.
        package var lastSeen: Date? { instances.map(\.lastSeen).max() }
    }

    /// The services of `topology` (of every topology when `nil`), by topology then name.
    package func services(topology: String?) -> [Service] {
        let shown = participants.filter { topology == nil || $0.topology == topology }
        return Dictionary(grouping: shown) { "\($0.topology)\u{0}\($0.service)" }.values.map { instances in
            Service(
                topology: instances[0].topology, service: instances[0].service, instances: instances,
                live: instances.count { $0.isLive(at: now) })
        }.sorted { ($0.topology, $0.service) < ($1.topology, $1.service) }
    }

    /// The records of `store`; `nil` when the store keeps none (a store written before SagaKit
    /// recorded participants) or cannot list them.
    package static func load(from store: any SagaStore, now: Date = Date()) async -> ServiceDirectory? {
        guard let participants = try? await store.participants() else { return nil }
        return ServiceDirectory(participants: participants, now: now)
    }

    /// The processes of `topology` that handle `command`.
    package func handlers(of command: String, topology: String) -> Handlers {
        let handling = participants.filter { $0.topology == topology && $0.commands.contains(command) }
        let live = handling.filter { $0.isLive(at: now) }
        return Handlers(
            services: Array(Set(handling.map(\.service))).sorted(), live: live.count, silent: handling.count - live.count,
            lastSeen: handling.map(\.lastSeen).max())
    }

    /// One line on who handles `command` in `topology`, for people; `tool` is how the operator
    /// calls the `saga` tool.
    package func describe(_ command: String, topology: String, tool: String = "saga") -> String {
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
            "handled by service \(names), but none of its \(found.silent) process(es) reported in lately (\(last)): start it, or see why it stopped (its log, `\(tool) services`)"
    }
}

/// How long ago `date` was, for people: `now`, `3 s ago`, `2 min ago`, `5 h ago`, `2 d ago`.
package func age(_ date: Date, now: Date = Date()) -> String {
    let seconds = max(0, now.timeIntervalSince(date))
    switch seconds {
    case ..<1: return "now"
    case ..<120: return "\(Int(seconds)) s ago"
    case ..<7200: return "\(Int(seconds / 60)) min ago"
    case ..<172_800: return "\(Int(seconds / 3600)) h ago"
    default: return "\(Int(seconds / 86400)) d ago"
    }
}
