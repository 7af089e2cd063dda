import ArgumentParser
import Foundation
import Participant

struct GraphCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "Print a saga definition as a Mermaid flowchart.",
        discussion: "Paste the output into a ```mermaid block (GitHub renders it)."
    )

    @Argument(help: "The definition's name.")
    var definition: String

    @Flag(help: "Print JSON (steps and the Mermaid text).")
    var json = false

    struct Output: Encodable {
        struct Step: Encodable {
            var name: String
            var action: String
            var compensation: String?
            var pivot: Bool
            var maxAttempts: Int
        }
        var name: String
        var steps: [Step]
        var mermaid: String
    }

    func run() async throws {
        let found = try SagaOperatorTool.definitions.definition(named: definition)
        if json {
            try printJSON(
                Output(
                    name: found.name,
                    steps: found.steps.map {
                        .init(
                            name: $0.name, action: $0.action, compensation: $0.compensation, pivot: $0.options.isPivot,
                            maxAttempts: $0.options.retry.maxAttempts)
                    },
                    mermaid: found.mermaidFlowchart))
        } else {
            print(found.mermaidFlowchart)
        }
    }
}
