import ArgumentParser
import Foundation
import Participant
import SagaConsole

struct SignalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signal",
        abstract: "Deliver a signal to a saga that waits for it (an approval, a reply): it goes on with its next step.",
        discussion: """
            The saga's wait step for that signal completes, --data is merged into the saga's data, and the saga sends \
            its next command. A signal for a wait the saga has not reached yet is kept; one that comes after the wait \
            ended (timed out, saga finished) is ignored, and the command says why (exit code 1). `saga graph NAME` \
            shows the signals a saga waits for. Recorded in the saga's history with --by. JSON (--json): the saga state. \
            The id - reads ids from standard input, one per line, and signals each in turn (one failing does not stop the \
            others; exit status 1 when any failed; JSON: an array), e.g. \
            `saga list --status waiting --name order --ids | saga signal - fraud.approved --by alice`.
            """
    )

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var action: OperatorActionOptions

    @Argument(help: "The saga id, or - to read ids from standard input.")
    var id: String

    @Argument(help: "The signal's name, as the saga's wait step declares it.")
    var name: String

    @Option(help: "A JSON object merged into the saga's data (for example '{\"approved\": true}').")
    var data: String?

    @Flag(help: "Print JSON (the saga state).")
    var json = false

    func run() async throws {
        let payload = try Self.payload(data)
        let (name, json, actor) = (name, json, action.actor)
        let ids = try expandingStandardInput([id])
        let environment = try CommandEnvironment(connection)
        let redactor = environment.redactor
        if ids.count == 1, id != "-" {
            return try await environment.withManager { manager in
                let state = try await Self.signal(
                    ids[0], name: name, payload: payload, by: actor, json: json, redactor: redactor, manager: manager)
                if json { try printJSON(redactor.redact(state)) }
            }
        }
        // Several ids: each in turn, as retry and compensate do.
        try await environment.withManager { manager in
            try await forEachSaga(ids, json: json, redactor: redactor) { id in
                try await Self.signal(
                    id, name: name, payload: payload, by: actor, json: json, redactor: redactor, manager: manager, printsIgnoredState: false
                )
            }
        }
    }

    /// Signals one saga; for people, prints what became of it. Throws when the signal is ignored.
    static func signal(
        _ id: String, name: String, payload: JSONObject, by actor: String, json: Bool, redactor: Redactor, manager: SagaManager,
        printsIgnoredState: Bool = true
    ) async throws -> SagaState {
        switch try await manager.signal(id, name: name, payload: payload, by: actor) {
        case .delivered(let state):
            if json { return state }
            let early = state.history.last { $0.outcome == .completed && $0.actor == actor }?.reason?.hasSuffix(
                "before the saga reached the wait")
            if early == true {
                print(
                    "signal '\(name)' kept for saga \(id) (by \(actor)): it has not reached its wait yet (it is \(state.status.cliName) at \(position(state))); when it does, it goes on at once."
                )
            } else {
                print("signal '\(name)' delivered to saga \(id) by \(actor): it is \(state.status.cliName) at \(position(state)).")
            }
            return state
        case .ignored(let reason, let state):
            if json && printsIgnoredState { try printJSON(redactor.redact(state)) }
            throw CommandFailure("signal '\(name)' ignored: \(reason)")
        }
    }

    /// The `--data` object.
    static func payload(_ data: String?) throws -> JSONObject {
        guard let data else { return [:] }
        do {
            return try JSONCoding.object(fromJSON: Data(data.utf8))
        } catch let error as SagaError {
            // Says where the text stops being JSON (`… at byte 4`).
            let why = error.message.replacingOccurrences(of: "payload is ", with: "")
            throw CommandFailure("--data is not a JSON object (\(why)); for example --data '{\"approved\": true}'")
        }
    }
}
