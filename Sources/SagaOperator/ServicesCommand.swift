import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// `saga services`: the participant processes that report in to the store, by service, and the
/// commands of the known definitions that no live process handles.
struct ServicesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "services",
        abstract: "List the services whose participants report in: their commands, live and silent processes, and unhandled commands.",
        discussion: """
            Every participant records itself in the store while it runs (every 15 s by default, \
            SAGAKIT_PRESENCE_SECONDS) and removes its record when it stops gracefully. A process \
            that misses three reports is silent: killed, hung, or cut off from the store. Commands \
            of the known saga definitions that no live process handles are listed last: sagas that \
            reach those steps wait until a service that handles them runs (the newest version of \
            each definition, and older ones while they have unfinished sagas: a retired version \
            needs no handlers). Exit status 0 either way; with --check, 1 when a command has no \
            live handler.
            """
    )

    @OptionGroup var connection: OperatorOptions

    @Flag(help: "Show every topology's services, not only this tool's (--prefix).")
    var allTopologies = false

    @Flag(help: "Exit with status 1 when a command of a known definition has no live handler.")
    var check = false

    @Flag(help: "Print JSON: {topology, services: [{service, topology, commands, instances}], unhandled}.")
    var json = false

    struct Service: Encodable {
        var service: String
        var topology: String
        var commands: [String]
        var instances: [Instance]
    }

    struct Instance: Encodable {
        var instance: String
        var commands: [String]
        var live: Bool
        var startedAt: Date
        var lastSeen: Date
        var reportIntervalSeconds: Double
    }

    struct Output: Encodable {
        var topology: String?
        var services: [Service]
        var unhandled: [ServiceDirectory.Unhandled]
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let topology = environment.configuration.topology.prefix
        let allTopologies = allTopologies
        let now = Date()
        let (participants, definitions) = try await environment.withStore { store in
            do {
                // A retired version (no unfinished saga of its own) needs no handlers any more.
                let inUse = await ServiceDirectory.inUse(environment.definitions.all, store: store, topology: topology)
                return (try await store.participants(), inUse)
            } catch let error as SagaError where error.code == .unsupported {
                throw ValidationError(
                    "this store keeps no participant records (\(error.message)); its participants cannot be listed")
            }
        }
        let directory = ServiceDirectory(participants: participants, now: now)
        let services = directory.services(topology: allTopologies ? nil : topology).map { service in
            Service(
                service: service.service, topology: service.topology, commands: service.commands,
                instances: service.instances.map {
                    Instance(
                        instance: $0.instance, commands: $0.commands.sorted(), live: $0.isLive(at: now), startedAt: $0.startedAt,
                        lastSeen: $0.lastSeen, reportIntervalSeconds: $0.reportInterval.seconds)
                })
        }
        let unhandled = directory.unhandled(definitions, topology: topology)

        if json {
            try printJSON(Output(topology: allTopologies ? nil : topology, services: services, unhandled: unhandled))
        } else {
            print(Self.render(services, unhandled: unhandled, topology: topology, allTopologies: allTopologies, now: now))
        }
        if check && !unhandled.isEmpty { throw ExitCode(1) }
    }

    static func render(_ services: [Service], unhandled: [ServiceDirectory.Unhandled], topology: String, allTopologies: Bool, now: Date)
        -> String
    {
        var lines: [String] = []
        if services.isEmpty {
            lines.append(
                allTopologies
                    ? "no participant has reported in to this store"
                    : "no participant has reported in on topology '\(topology)' (another prefix? try --all-topologies)")
        } else {
            var header = ["SERVICE", "PROCESSES", "LAST REPORT", "COMMANDS"]
            if allTopologies { header.insert("TOPOLOGY", at: 1) }
            let rows = services.map { service -> [String] in
                let live = service.instances.filter(\.live).count
                let silent = service.instances.count - live
                let last = service.instances.map(\.lastSeen).max().map { age($0, now: now) } ?? "-"
                var row = [
                    service.service, "\(live) live" + (silent > 0 ? ", \(silent) silent" : ""), last,
                    service.commands.joined(separator: ", "),
                ]
                if allTopologies { row.insert(service.topology, at: 1) }
                return row
            }
            lines.append(tableText(header, rows))
            // A service whose processes handle different commands (a rolling upgrade, or a release
            // that lost a handler): which process handles what.
            for service in services {
                let differing = Set(service.instances.map(\.commands)).count > 1
                guard differing else { continue }
                lines.append("")
                lines.append("\(service.service): its processes handle different commands (a rolling upgrade?):")
                for instance in service.instances.sorted(by: { $0.instance < $1.instance }) {
                    let missing = Set(service.commands).subtracting(instance.commands).sorted()
                    lines.append(
                        "  \(PrintableText.escaped(instance.instance)) (\(instance.live ? "live" : "silent")): "
                            + instance.commands.joined(separator: ", ")
                            + (missing.isEmpty ? "" : " (not: \(missing.joined(separator: ", ")))"))
                }
            }
        }
        if unhandled.isEmpty {
            lines.append("every command of the known definitions has a live handler on topology '\(topology)'")
        } else {
            lines.append("")
            lines.append("\(unhandled.count) command(s) with no live handler on topology '\(topology)' (sagas that reach them wait):")
            for entry in unhandled {
                let silent =
                    entry.silentServices.isEmpty
                    ? "no service handles it" : "handled by \(entry.silentServices.joined(separator: ", ")), all silent"
                lines.append("  \(entry.command): \(silent); used by \(entry.usedBy.joined(separator: ", "))")
            }
        }
        return lines.joined(separator: "\n")
    }
}
