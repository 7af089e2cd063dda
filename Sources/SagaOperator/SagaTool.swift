import ArgumentParser
import Foundation
public import Participant

/// The `saga` operator tool as a library: build your own `saga` executable that knows your
/// saga definitions.
///
/// ```swift
/// import SagaOperator
///
/// @main struct TripSagaTool {
///     static func main() async {
///         await SagaOperatorTool.main(definitions: [TripSaga.definition])
///     }
/// }
/// ```
///
/// Commands: `list`, `show`, `graph`, `definitions`, `retry`, `compensate`, `reap`,
/// `dlq list|requeue`; each takes `--store-url`/`SAGAKIT_STORE_URL`, `--amqp-url`/`AMQP_URL`,
/// `--prefix`/`SAGAKIT_PREFIX` and prints for people, or one JSON document on standard output
/// with `--json` (errors go to standard error, with a non-zero exit status). Definitions come
/// from the tool (compiled in) and from the store, where every participant and manager
/// registers the definitions it runs: a plain `saga` executable operates any saga.
public enum SagaOperatorTool {
    @TaskLocal static var definitions = SagaDefinitionRegistry.empty

    /// The tool's name as its help and its hints say it (`saga show <id>`): the name of the
    /// executable, unless ``main(definitions:arguments:commandName:)`` names it.
    @TaskLocal static var toolName = "saga"

    /// Runs the command line (`arguments`, or the process's when `nil`) with `definitions`, and
    /// exits the process with the command's status. Help and hints name the tool `commandName`,
    /// by default the name the executable was started by (`travel-tool`, not `saga`), so that a
    /// command they suggest runs as printed.
    public static func main(definitions: [SagaDefinition] = [], arguments: [String]? = nil, commandName: String? = nil) async {
        let registry: SagaDefinitionRegistry
        do {
            registry = try SagaDefinitionRegistry(definitions)
        } catch {
            SagaRootCommand.exit(withError: error)
        }
        let arguments = ListCommand.completingStuckRetrying(arguments ?? Array(CommandLine.arguments.dropFirst()))
        let name = commandName ?? CommandLine.arguments.first.map(executableName) ?? "saga"
        if let first = arguments.first, let message = unknownCommandMessage(first, tool: name) {
            printError(message)
            exit(64)  // EX_USAGE, as ArgumentParser exits for a usage error
        }
        await $toolName.withValue(name) {
            await $definitions.withValue(registry) {
                await SagaRootCommand.main(arguments)
            }
        }
    }
}

/// For a first argument that is neither an option nor one of the tool's commands, the error to
/// print, with the closest command when one is a typo away (`lsit` → `list`); `nil` otherwise.
func unknownCommandMessage(_ word: String, tool: String) -> String? {
    guard !word.isEmpty, !word.hasPrefix("-") else { return nil }
    let commands = SagaRootCommand.configuration.subcommands.map { $0._commandName } + ["help"]
    guard !commands.contains(word) else { return nil }
    let closest = commands.map { ($0, editDistance($0, word)) }.min { $0.1 < $1.1 }
    let hint = closest.flatMap { $0.1 <= 2 ? " (did you mean '\($0.0)'?)" : nil } ?? ""
    return
        "Error: '\(word)' is not a command of \(tool)\(hint); its commands: \(commands.dropLast().joined(separator: ", ")) (see `\(tool) --help`)"
}

/// The Levenshtein distance between two words.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in stride(from: 1, through: b.count, by: 1) {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return a.isEmpty ? b.count : previous[b.count]
}

/// The last component of the path an executable was started by (`.build/debug/travel-tool` →
/// `travel-tool`).
func executableName(_ path: String) -> String {
    let name = path.split(separator: "/").last.map(String.init) ?? ""
    return name.isEmpty ? "saga" : name
}

extension SagaDefinitionRegistry {
    /// A registry with no definitions.
    static let empty: SagaDefinitionRegistry = {
        do { return try SagaDefinitionRegistry([]) } catch { preconditionFailure("an empty registry cannot fail: \(error)") }
    }()
}

/// `saga`: inspect and operate the sagas in a SagaKit store.
struct SagaRootCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: SagaOperatorTool.toolName,
            abstract: "Inspect and operate SagaKit sagas.",
            discussion: """
                Configured like the services: --store-url / SAGAKIT_STORE_URL (required), --amqp-url / AMQP_URL, \
                --prefix / SAGAKIT_PREFIX. Every command prints for people, or one JSON document with --json; errors go to \
                standard error with a non-zero exit status.
                """,
            subcommands: [
                ListCommand.self, ShowCommand.self, GraphCommand.self, DefinitionsCommand.self, ServicesCommand.self, RetryCommand.self,
                CompensateCommand.self, StopCommand.self,
                ResolveCommand.self,
                SignalCommand.self, ReapCommand.self, PurgeCommand.self, DeadLetterCommand.self, EventsCommand.self,
                ConsoleCommand.self,
            ]
        )
    }
}
