import ArgumentParser
import Foundation
import Participant
import SagaConsole
import Synchronization

struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "Dead-lettered messages: list them with their reasons, put them back, or drop them.",
        subcommands: [DeadLetterList.self, DeadLetterRequeue.self, DeadLetterDrop.self]
    )
}

/// The value `--id` selects a dead letter by: its message id, or for a message without one
/// `body-` and a hash of its body (the same in every listing, unlike a position in the queue).
func deadLetterID(_ delivery: Delivery) -> String {
    if let id = delivery.messageId, !id.isEmpty { return id }
    // FNV-1a, 64 bits: a stable name for the body, not a secret.
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in delivery.body {
        hash ^= UInt64(byte)
        hash = hash &* 0x0000_0100_0000_01b3
    }
    return "body-" + String(hash, radix: 16)
}

/// One dead letter as the CLI shows it.
struct DeadLetter: Encodable {
    /// What `--id` selects it by (``deadLetterID(_:)``).
    var id: String
    var messageId: String?
    var reason: String?
    var service: String?
    var sourceQueue: String?
    var sourceExchange: String?
    var sourceRoutingKey: String?
    var deadLetteredAt: String?
    var sagaId: String?
    var command: String?
    var redelivered: Bool
    var bytes: Int
    var body: String

    /// - Parameter redactor: masks payload keys in the body, before it is shortened to 512 bytes.
    init(_ delivery: Delivery, redactor: Redactor) {
        let headers = delivery.headers
        id = deadLetterID(delivery)
        messageId = delivery.messageId
        let death = DeadLetters.brokerDeath(of: headers)
        reason = DeadLetters.reason(of: delivery)
        service = headers[SagaHeaders.deadLetterService]
        sourceQueue = headers[SagaHeaders.deadLetterQueue] ?? death?.queue
        sourceExchange = headers[SagaHeaders.deadLetterExchange] ?? death?.exchange
        sourceRoutingKey = headers[SagaHeaders.deadLetterRoutingKey] ?? death?.routingKeys.first
        deadLetteredAt = headers[SagaHeaders.deadLetterTime]
        sagaId = (try? JSONCoding.decode(SagaCommand.self, from: Data(delivery.body)))?.sagaID ?? delivery.correlationId
        command = delivery.type
        redelivered = delivery.redelivered
        bytes = delivery.body.count
        let text = redactor.redact(body: delivery.body)
        body = text.utf8.count > 512 ? String(decoding: text.utf8.prefix(512), as: UTF8.self) + "…" : text
    }
}

/// Consumes up to `limit` dead letters (stopping when none arrived for `idle`), hands them to
/// `body`, then stops consuming: whatever `body` did not acknowledge goes back to the queue, in
/// its order, when it is released (each unsettled delivery's settler nacks it with requeue, and
/// the broker puts it back where it was).
///
/// Declares nothing: the services declare the dead-letter queue when they start, and a prefix
/// that names no deployment (a typing mistake) is an error saying so, not a new empty topology.
///
/// `patience` bounds the wait for the broker (a bus whose connection is down waits for it to come
/// back): after it, `unreachable` is thrown. What `body` does once the letters are there is not
/// bounded.
func withDeadLetters<T: Sendable>(
    bus: RabbitMQBus, topology: SagaTopology, limit: Int, idle: Duration = .seconds(1), patience: Duration? = nil,
    _ body: @Sendable ([Delivery]) async throws -> T
) async throws -> T {
    let stream: DeliveryStream
    do {
        stream = try await consumeDeadLetters(bus: bus, topology: topology, limit: limit, patience: patience)
    } catch let error as BusError where error.code == .notFound {
        throw ValidationError(
            "the broker has no queue '\(topology.deadLetterQueue)': either no service ran with the prefix '\(topology.prefix)' "
                + "(check --prefix or SAGAKIT_PREFIX against the services' prefix), or the queue was deleted "
                + "(a running service declares it again when it next dead-letters a message, or when it restarts)")
    }
    let collected = DeliveryBuffer()
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            for try await delivery in stream {
                collected.items.withLock { $0.append(delivery) }
            }
        }
        var last = -1
        while true {
            try await Task.sleep(for: idle)
            let count = collected.items.withLock { $0.count }
            if count >= limit || count == last { break }
            last = count
        }
        let deliveries = Array(collected.items.withLock { $0 }.prefix(limit))
        do {
            let result = try await body(deliveries)
            group.cancelAll()
            return result
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

/// The consumer of the dead-letter queue, given up after `patience` (the consume is cancelled:
/// it never starts later).
private func consumeDeadLetters(bus: RabbitMQBus, topology: SagaTopology, limit: Int, patience: Duration?) async throws
    -> DeliveryStream
{
    let consume: @Sendable () async throws -> DeliveryStream = {
        try await bus.consume(queue: topology.deadLetterQueue, prefetch: min(max(limit, 1), 65_535))
    }
    guard let patience else { return try await consume() }
    return try await withTimeLimit(
        patience,
        timedOut: {
            BusError(
                .unreachable, "the broker did not answer within \(patience)",
                recoverySuggestion: "check that RabbitMQ runs and that --amqp-url reaches it; try again once it does",
                isRetryable: true)
        }, consume)
}

/// What requeueing dead letters did.
struct RequeueOutcome: Sendable {
    /// The letters republished and removed.
    var requeued: [Delivery] = []
    /// `<id>: <error>` of each that could not be republished (it stays).
    var failed: [String] = []
    /// The letters looked at and not asked for.
    var kept = 0
    /// Ids asked for that no letter looked at has.
    var missing: [String] = []
}

/// Republishes the dead letters asked for (`wanted`, or all when `nil`) where they came from
/// (``DeadLetters/original(of:topology:)``) and removes them, one after the other: what `saga
/// dlq requeue` and the console's Requeue do.
func requeueDeadLetters(_ deliveries: [Delivery], wanted: Set<String>?, bus: RabbitMQBus, topology: SagaTopology) async
    -> RequeueOutcome
{
    var outcome = RequeueOutcome()
    var matched: Set<String> = []
    for delivery in deliveries {
        let id = deadLetterID(delivery)
        guard wanted?.contains(id) ?? true else {
            outcome.kept += 1
            continue
        }
        matched.insert(id)
        do {
            try await bus.publish(DeadLetters.original(of: delivery, topology: topology))
            try await delivery.ack()
            outcome.requeued.append(delivery)
        } catch {
            outcome.failed.append("\(id): \(error)")
        }
    }
    if let wanted { outcome.missing = wanted.subtracting(matched).sorted() }
    return outcome
}

/// Deliveries shared between the consuming task and the command.
final class DeliveryBuffer: Sendable {
    let items = Mutex<[Delivery]>([])
}

struct DeadLetterList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List dead-lettered messages with why and where they came from (they stay in the queue)."
    )

    @OptionGroup var connection: OperatorOptions

    @Option(help: "At most this many messages.")
    var limit = 100

    @Option(
        name: .customLong("saga"),
        help: "Only the dead letters of this saga (repeatable; its command's saga id, or the message's correlation id).")
    var sagas: [String] = []

    @Flag(help: "Print JSON (an array of dead letters).")
    var json = false

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let topology = environment.configuration.topology
        let (limit, sagas) = (limit, Set(sagas))
        let looked = try await environment.withBus { bus in
            try await withDeadLetters(bus: bus, topology: topology, limit: limit) { deliveries in
                deliveries.map { DeadLetter($0, redactor: environment.redactor) }
            }
        }
        let letters = sagas.isEmpty ? looked : looked.filter { $0.sagaId.map(sagas.contains) ?? false }
        if json { return try printJSON(letters) }
        if letters.isEmpty {
            if looked.isEmpty {
                print("\(topology.deadLetterQueue) is empty")
            } else {
                print(
                    "no dead letter of \(sagas.sorted().joined(separator: ", ")) among the \(looked.count) in \(topology.deadLetterQueue)\(looked.count == limit ? " looked at (limit reached; raise --limit to look further)" : "")"
                )
            }
            return
        }
        // Everything below comes from the messages: printed with its control characters escaped.
        func printEscaped(_ line: String) { print(PrintableText.escaped(line)) }
        for (index, letter) in letters.enumerated() {
            printEscaped("#\(index + 1) \(letter.messageId != nil ? letter.id : "\(letter.id) (no message id: select it by this)")")
            printEscaped("  reason      \(letter.reason ?? "(none recorded)")")
            printEscaped(
                "  from        queue \(letter.sourceQueue ?? "?") · service \(letter.service ?? "?") · at \(letter.deadLetteredAt ?? "?")")
            printEscaped(
                "  requeue to  exchange '\(letter.sourceExchange ?? "?")' routing key '\(letter.sourceRoutingKey ?? letter.command ?? "?")'"
            )
            if let saga = letter.sagaId { printEscaped("  saga        \(saga)") }
            printEscaped("  body        \(letter.bytes) bytes: \(letter.body)")
        }
        let of = sagas.isEmpty ? "" : " of \(sagas.sorted().joined(separator: ", ")), among \(looked.count)"
        print(
            "\n\(letters.count) dead letter(s)\(of) in \(topology.deadLetterQueue)\(looked.count == limit ? " (limit reached; there may be more)" : "")"
        )
        let tool = SagaOperatorTool.toolName
        print("once the cause is fixed, put them back: \(tool) dlq requeue --id <id>   (or --all)")
        print("remove one that must not run again:     \(tool) dlq drop --id <id>")
    }
}

struct DeadLetterRequeue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "requeue",
        abstract: "Republish dead letters to the exchange and routing key they were consumed from, then remove them.",
        discussion: "Fix the cause first (deploy the missing handler, repair the data): a message that fails again is dead-lettered again."
    )

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var which: DeadLetterSelection

    @Flag(help: "Print JSON: {requeued, failed, kept}.")
    var json = false

    struct Result: Encodable {
        var requeued: [DeadLetter]
        var failed: [String]
        var kept: Int
        /// Ids asked for with --id that no dead letter looked at has.
        var missing: [String] = []
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let topology = environment.configuration.topology
        let (limit, all, wanted) = (which.limit, which.all, Set(which.ids))
        let outcome = try await environment.withBus { bus in
            try await withDeadLetters(bus: bus, topology: topology, limit: limit) { deliveries in
                let done = await requeueDeadLetters(deliveries, wanted: all ? nil : wanted, bus: bus, topology: topology)
                return Result(
                    requeued: done.requeued.map { DeadLetter($0, redactor: environment.redactor) }, failed: done.failed, kept: done.kept,
                    missing: done.missing)
            }
        }
        if json {
            try printJSON(outcome)
            if !outcome.failed.isEmpty || !outcome.missing.isEmpty { throw ExitCode(1) }
            return
        }
        for letter in outcome.requeued {
            print(
                PrintableText.escaped(
                    "requeued \(letter.id) → '\(letter.sourceExchange ?? "")' / '\(letter.sourceRoutingKey ?? letter.command ?? "")'"
                ))
        }
        for failure in outcome.failed { printError("could not requeue \(failure)") }
        if !outcome.missing.isEmpty {
            printError("not found in the first \(limit) dead letters: \(outcome.missing.joined(separator: ", "))")
        }
        print("\(outcome.requeued.count) requeued, \(outcome.failed.count) failed, \(outcome.kept) left in \(topology.deadLetterQueue)")
        if !outcome.failed.isEmpty || !outcome.missing.isEmpty { throw ExitCode(1) }
    }

}

/// `dlq drop`: removes dead letters that must not run again (a duplicate of work already done,
/// a message from a test), after printing each one, so that `dlq requeue --all` does not send
/// them back. What is dropped is gone: list first.
struct DeadLetterDrop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drop",
        abstract: "Remove dead letters for good (each is printed as it goes; list them first).",
        discussion: "Exit status 1 when an --id was not found. JSON (--json): {dropped, kept, missing}."
    )

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var which: DeadLetterSelection

    @Flag(help: "Print JSON: {dropped, kept, missing}.")
    var json = false

    struct Result: Encodable {
        var dropped: [DeadLetter]
        var kept: Int
        var missing: [String]
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let topology = environment.configuration.topology
        let (limit, all, wanted) = (which.limit, which.all, Set(which.ids))
        var result = try await environment.withBus { bus in
            try await withDeadLetters(bus: bus, topology: topology, limit: limit) { deliveries in
                var result = Result(dropped: [], kept: 0, missing: [])
                for delivery in deliveries {
                    guard all || wanted.contains(deadLetterID(delivery)) else {
                        result.kept += 1
                        continue
                    }
                    try await delivery.ack()
                    result.dropped.append(DeadLetter(delivery, redactor: environment.redactor))
                }
                return result
            }
        }
        if !all { result.missing = wanted.subtracting(result.dropped.map(\.id)).sorted() }
        if json {
            try printJSON(result)
        } else {
            for letter in result.dropped {
                print(
                    PrintableText.escaped(
                        "dropped \(letter.id) (saga \(letter.sagaId ?? "?"), \(letter.command ?? "?")): \(letter.reason ?? "no reason recorded")"
                    ))
            }
            if !result.missing.isEmpty {
                printError("not found in the first \(limit) dead letters: \(result.missing.joined(separator: ", "))")
            }
            print("\(result.dropped.count) dropped, \(result.kept) left in \(topology.deadLetterQueue)")
        }
        if !result.missing.isEmpty { throw ExitCode(1) }
    }
}

/// Which dead letters `dlq requeue` and `dlq drop` act on.
struct DeadLetterSelection: ParsableArguments {
    @Flag(help: "Every dead letter (up to --limit).")
    var all = false

    @Option(
        name: .customLong("id"),
        help: "The dead letter with this id, as `dlq list` shows it: its message id, or body-… for one without (repeatable).")
    var ids: [String] = []

    @Option(help: "Look at most at this many messages.")
    var limit = 1000

    func validate() throws {
        guard all || !ids.isEmpty else {
            throw ValidationError("say which: --all, or --id <id> (see `\(SagaOperatorTool.toolName) dlq list`)")
        }
    }
}
