import ArgumentParser
import Foundation
import Participant

struct GraphCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "Print a saga definition as a Mermaid flowchart (wait steps show the signal they wait for).",
        discussion: """
            Paste the output into a ```mermaid block (GitHub renders it). A definition compiled into this tool is \
            printed without opening the store; any other is read from the store (--store-url / SAGAKIT_STORE_URL), \
            where every participant and manager registers the definitions it runs.
            """
    )

    @OptionGroup var connection: OperatorOptions

    @Argument(help: "The definition's name.")
    var definition: String

    @Option(help: "The definition's version (default: the latest known).")
    var version: Int?

    @Flag(help: "Print JSON (steps and the Mermaid text).")
    var json = false

    struct Output: Encodable {
        struct Step: Encodable {
            var name: String
            var action: String
            var compensation: String?
            var pivot: Bool
            var maxAttempts: Int
            /// When the step runs (the condition's text); absent for always.
            var condition: String?
            /// The parallel group the step belongs to; absent for a step on its own.
            var group: String?
            /// For a wait step, what it waits for; absent for a step that runs a command.
            var wait: Wait?
            /// The step's fallback; absent for none.
            var fallback: Fallback?
        }
        /// A step's fallback and its circuit breaker.
        struct Fallback: Encodable {
            /// The fallback's command.
            var action: String
            /// Failures in a row that open the circuit; absent without a breaker.
            var failureThreshold: Int?
            /// How long the circuit stays open, in seconds; absent without a breaker.
            var openForSeconds: Double?
        }
        /// What a wait step waits for.
        struct Wait: Encodable {
            /// The signal's name (the step's `action` too).
            var signal: String
            /// How long the saga waits once it reaches the step, in seconds.
            var timeoutSeconds: Double
            /// `compensate` or `continue`: what happens when no signal arrives in time.
            var onTimeout: String
        }
        var name: String
        var version: Int
        var hash: String
        var steps: [Step]
        var mermaid: String
    }

    func run() async throws {
        let (name, version) = (definition, version)
        let found: SagaDefinition
        if let compiled = Self.find(name, version: version, in: SagaOperatorTool.definitions) {
            found = compiled
        } else {
            found = try await CommandEnvironment(connection).withStore { _ in
                guard let stored = Self.find(name, version: version, in: SagaOperatorTool.definitions) else {
                    let known = SagaOperatorTool.definitions.all.map { "\($0.name) v\($0.version)" }.joined(separator: ", ")
                    throw CommandFailure(
                        "no saga definition '\(name)'\(version.map { " version \($0)" } ?? "") in this tool or the store (known: \(known.isEmpty ? "none" : known))"
                    )
                }
                return stored
            }
        }
        if json {
            try printJSON(
                Output(
                    name: found.name,
                    version: found.version,
                    hash: found.contentHash,
                    steps: found.steps.map {
                        .init(
                            name: $0.name, action: $0.action, compensation: $0.compensation, pivot: $0.options.isPivot,
                            maxAttempts: $0.options.retry.maxAttempts, condition: $0.condition?.description, group: $0.group,
                            wait: $0.wait.map {
                                .init(signal: $0.signal, timeoutSeconds: $0.timeout.seconds, onTimeout: $0.onTimeout.rawValue)
                            },
                            fallback: $0.fallback.map {
                                .init(
                                    action: $0.action, failureThreshold: $0.breaker?.failureThreshold,
                                    openForSeconds: $0.breaker?.openFor.seconds)
                            })
                    },
                    mermaid: found.mermaidFlowchart))
        } else {
            print("%% saga '\(found.name)' version \(found.version) (\(found.contentHash))")
            print(found.mermaidFlowchart)
        }
    }

    /// The definition with that name: that version, or the latest when `version` is `nil`.
    static func find(_ name: String, version: Int?, in registry: SagaDefinitionRegistry) -> SagaDefinition? {
        if let version { return registry.definition(named: name, version: version) }
        return try? registry.definition(named: name)
    }
}
