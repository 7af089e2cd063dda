import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// `saga definitions`: the definitions the store keeps (and those compiled into this tool), with
/// how many sagas run on each.
struct DefinitionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "definitions",
        abstract: "List saga definitions: name, version, content hash, and how many sagas use each.",
        discussion: "Every participant and manager registers the definitions it runs in the store when it starts."
    )

    @OptionGroup var connection: OperatorOptions

    @Option(help: "For a store that cannot count by version: how many sagas per definition name to read when counting.")
    var countLimit = 100_000

    @Flag(help: "Count the sagas of every topology in the store, not only those of this prefix (and those that name none).")
    var allTopologies = false

    @Flag(help: "Print JSON (an array of definitions with their saga counts).")
    var json = false

    struct Row: Encodable {
        var name: String
        var version: Int
        var hash: String
        var registeredAt: Date?
        /// `store`, `tool` or `store+tool`.
        var source: String
        var sagas: Int
        var byStatus: [String: Int]
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let compiled = SagaOperatorTool.definitions
        let countLimit = countLimit
        // As `saga list` and the console count: this deployment's sagas unless told otherwise.
        let topology = allTopologies ? nil : environment.configuration.topology.prefix
        let rows = try await environment.withStore { store in
            let stored: [StoredDefinitionInfo]
            do {
                stored = try await store.definitions()
            } catch let error as SagaError where error.code == .unsupported {
                stored = []
            }
            var rows: [String: Row] = [:]
            func key(_ name: String, _ version: Int) -> String { "\(name)\u{0}\(version)" }
            for info in stored {
                let inTool = compiled.definition(named: info.name, version: info.version) != nil
                rows[key(info.name, info.version)] = Row(
                    name: info.name, version: info.version, hash: info.hash, registeredAt: info.registeredAt,
                    source: inTool ? "store+tool" : "store", sagas: 0, byStatus: [:])
            }
            for definition in compiled.all where rows[key(definition.name, definition.version)] == nil {
                rows[key(definition.name, definition.version)] = Row(
                    name: definition.name, version: definition.version, hash: definition.contentHash, registeredAt: nil,
                    source: "tool", sagas: 0, byStatus: [:])
            }
            for name in Set(rows.values.map(\.name)) {
                let counts: [Int: [SagaStatus: Int]]
                do {
                    counts = try await store.countByVersion(name: name, topology: topology)
                } catch let error as SagaError where error.code == .unsupported {
                    var listed: [Int: [SagaStatus: Int]] = [:]
                    for saga in try await store.list(SagaQuery(name: name, topology: topology, limit: countLimit)) {
                        listed.add(1, version: saga.definitionVersion, status: saga.status)
                    }
                    counts = listed
                }
                for (version, byStatus) in counts {
                    let rowKey = key(name, version)
                    for (status, count) in byStatus where count > 0 {
                        rows[rowKey]?.sagas += count
                        rows[rowKey]?.byStatus[status.cliName, default: 0] += count
                    }
                }
            }
            return rows.values.sorted { ($0.name, $0.version) < ($1.name, $1.version) }
        }
        if json { return try printJSON(rows) }
        if rows.isEmpty {
            print("no saga definitions in the store (participants and managers register theirs when they start)")
            return
        }
        printTable(
            ["NAME", "VERSION", "HASH", "SAGAS", "BY STATUS", "SOURCE", "REGISTERED"],
            rows.map { row in
                [
                    row.name, "\(row.version)", String(row.hash.prefix(8)), "\(row.sagas)",
                    row.byStatus.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "),
                    row.source, row.registeredAt.map { age($0) } ?? "-",
                ]
            })
    }
}
