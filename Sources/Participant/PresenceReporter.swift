import Foundation
import Logging
import ServiceLifecycle

/// Records in the store, every interval, that this participant process runs, which service it
/// is and which commands it handles (``ParticipantInstance``); forgets it on a graceful stop. The
/// operator's tools read these records to say which service a saga waits for and whether any of
/// its processes is alive.
struct PresenceReporter: Sendable {
    let store: any SagaStore
    let interval: Duration
    let logger: Logger
    private let record: ParticipantInstance

    init(
        store: any SagaStore, topology: String, service: String, commands: [String], interval: Duration, instance: String,
        logger: Logger
    ) {
        self.store = store
        self.interval = interval
        self.logger = logger
        let now = Date()
        self.record = ParticipantInstance(
            topology: topology, service: service, instance: instance, commands: commands, startedAt: now,
            lastSeen: now, reportInterval: interval)
    }

    /// `<name>@<host>` (the name the process's log lines carry, so that an operator finds its
    /// lines), or `<host>:<pid>:<random>` without a name (several participants of one service
    /// in one process each have their own record).
    static func instanceID(_ name: String?, process: ProcessInfo = .processInfo) -> String {
        guard let name, !name.isEmpty else {
            return "\(process.hostName):\(process.processIdentifier):\(UUID().uuidString.prefix(8).lowercased())"
        }
        return "\(name)@\(process.hostName)"
    }

    /// Says once, at start, when the service's other live processes handle commands this one
    /// does not (a release that lost a handler: its sagas' commands are handed back to the queue
    /// whenever this process takes them), or this one handles commands they do not (a rolling
    /// upgrade that adds a step: expected while it rolls).
    func compareWithTheServicesOtherProcesses(at now: Date) async {
        guard let participants = try? await store.participants() else { return }
        let others = participants.filter {
            $0.topology == record.topology && $0.service == record.service && $0.instance != record.instance && $0.isLive(at: now)
        }
        guard !others.isEmpty else { return }
        let mine = Set(record.commands)
        let theirs = Set(others.flatMap(\.commands))
        let missing = theirs.subtracting(mine).sorted()
        let added = mine.subtracting(theirs).sorted()
        if !missing.isEmpty {
            logger.warning(
                "other live processes of service '\(record.service)' handle commands this one has no handler for: \(missing.joined(separator: ", ")); it hands them back to the queue when it takes them (a release that lost a handler? register them, or finish the rollout) — `saga services` lists every process",
                metadata: ["service.commands.missing": "\(missing.joined(separator: ","))", "service.processes.others": "\(others.count)"])
        }
        if !added.isEmpty {
            logger.info(
                "this process of service '\(record.service)' handles commands its other live processes do not: \(added.joined(separator: ", ")) (a rolling upgrade: they go to this release's processes)",
                metadata: ["service.commands.added": "\(added.joined(separator: ","))", "service.processes.others": "\(others.count)"])
        }
    }

    /// Says once, a report interval after the process started, which commands unfinished sagas
    /// still need while no live process of the topology handles them: a release that dropped a
    /// handler while sagas of an older version still send its command (an outside trial's v3
    /// started without `billing.fraud-check` while 65 v2 sagas needed it, and nothing said so
    /// until their commands were dead-lettered ten minutes later). Versions are read from the
    /// store, counted by ``SagaStore/countByVersion(name:topology:)``; a store that cannot count,
    /// or keeps no definitions or participants, is skipped.
    func warnAboutNeededCommandsNobodyHandles(at now: Date) async {
        guard let lines = try? await Self.neededCommandsNobodyHandles(store: store, topology: record.topology, now: now),
            !lines.isEmpty
        else { return }
        logger.warning(
            "\(lines.count) command(s) that unfinished sagas still need have no live handler on topology '\(record.topology)': \(lines.joined(separator: "; ")). Sagas that reach them wait, and after 10 min of hand-backs their commands are dead-lettered: did a release drop a handler an older version still uses? Keep it until that version is retired (Docs/Upgrades.md); `saga services` shows which service handled it",
            metadata: ["service.commands.unhandled": "\(lines.count)"])
    }

    /// `"billing.fraud-check (ticket v2: 65 unfinished sagas)"` for each command of a definition
    /// version with unfinished sagas on `topology` that no live process of it handles.
    static func neededCommandsNobodyHandles(store: any SagaStore, topology: String, now: Date) async throws -> [String] {
        let live = try await store.participants().filter { $0.topology == topology && $0.isLive(at: now) }
        guard !live.isEmpty else { return [] }
        let handled = Set(live.flatMap(\.commands))
        var needed: [String: [String]] = [:]
        for name in Set(try await store.definitions().map(\.name)).sorted() {
            let versions = try await store.unfinishedByVersion(name: name, topology: topology)
            for (version, byStatus) in versions.sorted(by: { $0.key < $1.key }) {
                let unfinished = byStatus.values.reduce(0, +)
                let definition = try await store.definition(named: name, version: version)
                for command in Set(definition.commands).subtracting(handled) {
                    needed[command, default: []].append("\(name) v\(version): \(unfinished) unfinished saga\(unfinished == 1 ? "" : "s")")
                }
            }
        }
        return needed.keys.sorted().map { "\($0) (\(needed[$0, default: []].joined(separator: ", ")))" }
    }

    /// Reports until cancelled or gracefully shut down, then, on a graceful stop, removes the
    /// record (a process killed or cancelled leaves it, and the tools see it stop reporting). A
    /// store that keeps no participants is told once and not again.
    func run() async {
        var record = self.record
        var failing = false
        var compared = false
        var reports = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            record.lastSeen = Date()
            do {
                try await store.recordParticipant(record)
                failing = false
                reports += 1
                if !compared {
                    compared = true
                    await compareWithTheServicesOtherProcesses(at: record.lastSeen)
                }
                // One interval after the first report, when the deployment's other processes
                // have had time to report in too.
                if reports == 2 { await warnAboutNeededCommandsNobodyHandles(at: record.lastSeen) }
            } catch let error as SagaError where error.code == .unsupported {
                logger.debug("the store keeps no participants; the tools will not know this process: \(error.message)")
                return
            } catch {
                // The store's outage is reported by the steps that need it; say it here once.
                if !failing {
                    logger.debug("could not record this participant in the store; trying again", metadata: ["error": "\(error)"])
                }
                failing = true
            }
            do { try await gracefulSleep(interval) } catch { break }
        }
        // Cancelled (not a graceful stop): the process is torn down, and the store may be going
        // with it; the record goes silent and the tools say so.
        guard !Task.isCancelled else { return }
        do {
            try await store.removeParticipant(topology: record.topology, service: record.service, instance: record.instance)
        } catch {
            logger.debug("could not remove this participant's record from the store", metadata: ["error": "\(error)"])
        }
    }
}
