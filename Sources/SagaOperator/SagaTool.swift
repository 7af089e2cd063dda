import ArgumentParser

/// `saga`: inspect and operate the sagas in a SagaKit store.
@main
struct SagaTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saga",
        abstract: "Inspect and operate SagaKit sagas.",
        discussion: """
            Configured like the services: --store-url / SAGAKIT_STORE_URL, --amqp-url / AMQP_URL, \
            --prefix / SAGAKIT_PREFIX. Every command prints for people, or JSON with --json.
            """,
        subcommands: [
            ListCommand.self, ShowCommand.self, GraphCommand.self, RetryCommand.self, CompensateCommand.self,
            ReapCommand.self, DeadLetterCommand.self,
        ]
    )
}
