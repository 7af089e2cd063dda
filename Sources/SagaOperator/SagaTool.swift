import ArgumentParser
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
        await $toolName.withValue(name) {
            await $definitions.withValue(registry) {
                await SagaRootCommand.main(arguments)
            }
        }
    }
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
                ListCommand.self, ShowCommand.self, GraphCommand.self, DefinitionsCommand.self, RetryCommand.self, CompensateCommand.self,
                ResolveCommand.self,
                SignalCommand.self, ReapCommand.self, DeadLetterCommand.self, EventsCommand.self, ConsoleCommand.self,
            ]
        )
    }
}
