import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// `saga console`: the web console (``SagaConsole``) on the store and broker the other commands
/// use. Safe by default: it listens on 127.0.0.1 and is read-only unless an operator token is
/// configured; operators' actions go through the same calls as `saga retry`, `saga compensate`
/// and `saga dlq requeue`, and are recorded in each saga's history with who and why.
struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Serve the web console: overview, sagas, timelines, definitions, dead letters, live updates, actions.",
        discussion: """
            Listens on 127.0.0.1:8080 unless --host/--port say otherwise. Read-only unless an operator token is \
            configured (--token-file, or the environment variable SAGAKIT_CONSOLE_TOKEN): operators then log in with it and \
            a name, recorded with every retry and compensation they ask for. Beyond loopback (--host 0.0.0.0), say who may \
            read sagas' data: --read-access operators (log in first) or anyone (a proxy authenticates). --redact (or SAGAKIT_REDACT) hides payload \
            keys in payloads and dead-letter bodies. Stops on \
            SIGINT/SIGTERM. See Docs/Operations.md, "Web console".
            """
    )

    @OptionGroup var connection: OperatorOptions

    @Option(help: "The address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface).")
    var host = "127.0.0.1"

    @Option(help: "The port to listen on (0: any free port, printed at start).")
    var port = 8080

    @Option(
        name: .customLong("token-file"),
        help: "A file holding the operator token that enables actions (else env SAGAKIT_CONSOLE_TOKEN; neither: read-only).")
    var tokenFile: String?

    @Option(
        name: .customLong("read-access"),
        help: ArgumentHelp(
            "Who may read the pages: loopback (anyone, on a loopback address only; the default), operators (log in with the operator token), anyone (behind a proxy that authenticates its users). Env SAGAKIT_CONSOLE_READ_ACCESS.",
            valueName: "who"))
    var readAccess: String?

    @Flag(
        name: .customLong("secure-cookies"),
        help:
            "Always mark the session cookie Secure (HTTPS only; without it, only when a proxy says the login came over HTTPS). Env SAGAKIT_CONSOLE_SECURE_COOKIES=true."
    )
    var secureCookies = false

    @Option(
        help: "A running saga not updated for this many seconds is stalled (default: the reaper's, SAGAKIT_REAPER_STALLED_SECONDS or 900).")
    var stalledSeconds: Int?

    func validate() throws {
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
        if let stalledSeconds, stalledSeconds < 1 { throw ValidationError("--stalled-seconds must be 1 or more") }
    }

    /// The read access: `--read-access`, else `SAGAKIT_CONSOLE_READ_ACCESS`, else `loopback`.
    static func readAccess(_ flag: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> SagaConsoleReadAccess
    {
        let (given, source) =
            flag.map { ($0, "--read-access") } ?? environment["SAGAKIT_CONSOLE_READ_ACCESS"].map { ($0, "SAGAKIT_CONSOLE_READ_ACCESS") }
            ?? ("loopback", "")
        guard let access = SagaConsoleReadAccess(rawValue: given.trimmingCharacters(in: .whitespaces).lowercased()) else {
            throw CommandFailure(
                "\(source) '\(given)' is not a read access: use one of "
                    + SagaConsoleReadAccess.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return access
    }

    /// `SAGAKIT_CONSOLE_SECURE_COOKIES`: `true` or `false` (unset: `false`); anything else is
    /// refused by name rather than read as `false`.
    static func secureCookies(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        guard let given = environment["SAGAKIT_CONSOLE_SECURE_COOKIES"] else { return false }
        switch given.trimmingCharacters(in: .whitespaces).lowercased() {
        case "true": return true
        case "false", "": return false
        default: throw CommandFailure("SAGAKIT_CONSOLE_SECURE_COOKIES '\(given)' is not true or false")
        }
    }

    /// The operator token: the file's content (trimmed), else `SAGAKIT_CONSOLE_TOKEN` (or its older
    /// name `SAGA_CONSOLE_TOKEN`); never printed.
    static func operatorToken(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CommandFailure("cannot read the operator token file \(file): check the path and its permissions")
            }
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else {
                throw CommandFailure(
                    "the operator token file \(file) is empty: put a long random secret in it (e.g. `openssl rand -hex 32 > \(file)`)")
            }
            return token
        }
        let token = (environment["SAGAKIT_CONSOLE_TOKEN"] ?? environment["SAGA_CONSOLE_TOKEN"])?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return token?.isEmpty == false ? token : nil
    }

    func run() async throws {
        // A server: its log keeps operators' actions and refused logins (notice and up).
        let environment = try CommandEnvironment(connection, defaultLogLevel: .notice)
        let operatorConfiguration = environment.configuration
        let topology = operatorConfiguration.topology
        let logger = environment.logger
        let stalled = stalledSeconds.map { Duration.seconds($0) } ?? operatorConfiguration.reaper.stalledThreshold
        let secure = try secureCookies || Self.secureCookies()
        let console = SagaConsoleConfiguration(
            host: host, port: port, operatorToken: try Self.operatorToken(file: tokenFile), readAccess: try Self.readAccess(readAccess),
            secureCookies: secure, redactedKeys: environment.redactor.keys,
            redactsSecretLookingKeys: environment.redactor.masksSecretLookingKeys,
            stalledThreshold: stalled, prefix: topology.prefix,
            storeDescription: ConnectionURL.redact(try operatorConfiguration.requireStoreURL()))
        // Before connecting anywhere: a console that would show sagas' data to anyone says so now.
        do {
            try console.validate()
        } catch let error as SagaConsoleConfigurationError {
            throw CommandFailure(error.message)
        }
        try await environment.withStoreAndBus { store, bus in
            let known = SagaOperatorTool.definitions
            // The definitions known now and any registered since the console started.
            @Sendable func definitions() async throws -> SagaDefinitionRegistry {
                try await CommandEnvironment.definitions(known, and: store, logger: logger)
            }
            @Sendable func manager() async throws -> SagaManager {
                SagaManager(definitions: try await definitions(), bus: bus, store: store, topology: topology, logger: logger)
            }
            let backend = SagaConsoleBackend(
                store: store,
                subscribe: { try await SagaEventSubscription.subscribe(bus: bus, topology: topology, logger: logger) },
                definitions: definitions,
                next: { state in
                    let registry = (try? await definitions()) ?? known
                    var next = SagaOperatorTool.$definitions.withValue(registry) {
                        ShowCommand.next(state, configuration: operatorConfiguration)
                    }
                    if let directory = await ServiceDirectory.load(from: store) {
                        next.addHandlers(from: directory, topology: state.topology ?? topology.prefix)
                    }
                    return SagaConsoleNextStep(
                        kind: next.kind, summary: next.summary, text: next.text, retryAt: next.retryAt, stalledAt: next.stalledAt,
                        operatorCommands: next.operatorCommands)
                },
                retry: { id, actor, reason in try await manager().retry(id, by: actor, reason: reason) },
                compensate: { id, actor, reason in try await manager().compensate(id, by: actor, reason: reason) },
                deadLetters: { limit in
                    try await withDeadLetters(bus: bus, topology: topology, limit: limit, patience: Self.brokerPatience) {
                        deliveries in deliveries.map { Self.consoleLetter(DeadLetter($0, redactor: environment.redactor)) }
                    }
                },
                requeue: { wanted, limit in
                    // What `saga dlq requeue` does.
                    try await withDeadLetters(bus: bus, topology: topology, limit: limit, patience: Self.brokerPatience) {
                        deliveries in
                        let done = await requeueDeadLetters(deliveries, wanted: wanted, bus: bus, topology: topology)
                        return SagaConsoleRequeueResult(
                            requeued: done.requeued.map(deadLetterID), failed: done.failed, kept: done.kept)
                    }
                },
                signal: { id, name, data, actor in try await manager().signal(id, name: name, payload: data, by: actor) },
                resolve: { id, actor, reason in try await manager().resolve(id, by: actor, reason: reason) },
                drop: { id, limit in
                    // What `saga dlq drop --id` does.
                    try await withDeadLetters(bus: bus, topology: topology, limit: limit, patience: Self.brokerPatience) { deliveries in
                        guard let letter = deliveries.first(where: { deadLetterID($0) == id }) else { return false }
                        try await letter.ack()
                        return true
                    }
                })
            let server = SagaConsole(configuration: console, backend: backend, logger: logger) { url in
                let mode =
                    console.actionsEnabled
                    ? "actions enabled: operators log in with the operator token"
                    : "read-only: set --token-file or SAGAKIT_CONSOLE_TOKEN to enable actions"
                let readers =
                    switch console.readAccess {
                    case .operators: "pages for logged-in operators only"
                    case .anyone: "pages readable by anyone who can reach it"
                    case .loopback: "pages readable from this machine"
                    }
                FileHandle.standardOutput.write(Data("saga console listening on \(url) (\(readers); \(mode))\n".utf8))
            }
            try await ServiceGroup(
                configuration: .init(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            ).run()
        }
    }

    /// How long a console page waits for the broker before it says it cannot reach it (instead of
    /// waiting for the bus's reconnection for as long as the browser does).
    static let brokerPatience: Duration = .seconds(5)

    static func consoleLetter(_ letter: DeadLetter) -> SagaConsoleDeadLetter {
        SagaConsoleDeadLetter(
            messageID: letter.id, reason: letter.reason, service: letter.service, sourceQueue: letter.sourceQueue,
            sourceExchange: letter.sourceExchange, sourceRoutingKey: letter.sourceRoutingKey, deadLetteredAt: letter.deadLetteredAt,
            sagaID: letter.sagaId, command: letter.command, bytes: letter.bytes, body: letter.body)
    }
}
