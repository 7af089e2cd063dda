import Foundation
public import Tracing

/// Header names SagaKit writes on its messages.
///
/// What a command or an event is about (its saga, step, phase, attempt, kind) is in its JSON body
/// and its properties (`correlation-id` is the saga id, `type` the command or routing key,
/// `message-id` names the saga, step, phase and attempt), so the headers carry only what is
/// not: the saga's context, trace context, and the `x-sagakit-` headers of dead letters.
public enum SagaHeaders {
    /// The delay a message waited for, in seconds.
    public static let delay = "x-saga-delay-seconds"
    /// Why a message was dead-lettered.
    public static let deadLetterReason = "x-sagakit-reason"
    /// The queue a dead letter was consumed from.
    public static let deadLetterQueue = "x-sagakit-source-queue"
    /// The exchange a dead letter had been published to.
    public static let deadLetterExchange = "x-sagakit-source-exchange"
    /// The routing key a dead letter had been published with.
    public static let deadLetterRoutingKey = "x-sagakit-source-routing-key"
    /// The service that dead-lettered the message.
    public static let deadLetterService = "x-sagakit-service"
    /// When the message was dead-lettered (ISO 8601).
    public static let deadLetterTime = "x-sagakit-dead-lettered-at"
    /// The original message's `expiration` property, in milliseconds (an `int64` header): a dead
    /// letter does not carry it as a property, or it would expire from the dead-letter queue.
    /// `saga dlq requeue` restores it.
    public static let deadLetterOriginalExpiration = "x-sagakit-original-expiration"
    /// The original message's `user-id` property: a dead letter does not carry it as a property,
    /// because RabbitMQ refuses a `user-id` other than the publishing connection's user, and the
    /// service that dead-letters may log in as another user. `saga dlq requeue` restores it.
    public static let deadLetterOriginalUserID = "x-sagakit-original-user-id"
    /// The content type of saga commands.
    public static let contentType = "application/json"
}

/// Conversions between saga commands and broker messages.
enum SagaMessages {
    /// The outbox message that sends `scheduled` for `state`.
    /// `stateCopy` is the sealed copy of the state the command carries (see ``SealedState``).
    static func outbox(
        _ scheduled: ScheduledCommand, state: SagaState, topology: SagaTopology, now: Date, stateCopy: SealedState? = nil
    ) throws -> OutboxMessage {
        let command = scheduled.command
        var headers = contextHeaders(of: state)
        var exchange = topology.commandsExchange
        if let delay = scheduled.delay, delay > .zero {
            let level = topology.delayLevel(for: delay)
            exchange = topology.delayName(seconds: level)
            headers[SagaHeaders.delay] = String(level)
        }
        SagaTracing.inject(into: &headers)
        // The copy goes with the publish after the commit, not into the store: the outbox relay
        // sends a command later without it, and its receiver loads the saga.
        return OutboxMessage(
            id: "\(command.messageID):\(UniqueTag.next(length: 8))",
            sagaID: command.sagaID,
            exchange: exchange,
            routingKey: command.command,
            body: command.jsonBytes,
            headers: headers,
            transientBody: stateCopy.map { command.jsonBytes(stateCopy: ($0.json, $0.seal)) },
            createdAt: now
        )
    }

    /// The outbox message that publishes a lifecycle event (recorded with the transition that
    /// caused it). The saga's context (trace ids) travels in the headers, as on commands.
    static func outbox(_ event: SagaLifecycleEvent, state: SagaState, topology: SagaTopology) throws -> OutboxMessage {
        OutboxMessage(
            id: event.id, sagaID: event.sagaID, exchange: topology.eventsExchange, routingKey: event.routingKey,
            body: event.jsonBytes, headers: contextHeaders(of: state), createdAt: event.at)
    }

    /// The headers of a saga's messages: its context entries (a caller's correlation id, the trace
    /// ids recorded at its start), without SagaKit's own `sagakit-` entries, which receivers read
    /// from the saga. Every header costs the broker CPU on every publish and delivery (it decodes
    /// the table), so nothing the body or the properties already say is repeated here.
    static func contextHeaders(of state: SagaState) -> [String: String] {
        var headers: [String: String] = [:]
        for (key, value) in state.context where !key.hasPrefix("sagakit-") { headers[key] = value }
        return headers
    }

    /// The outbox messages of a transition's lifecycle events that `topology` publishes.
    static func eventOutbox(_ events: [SagaLifecycleEvent], state: SagaState, topology: SagaTopology) throws -> [OutboxMessage] {
        try events.filter { topology.events.includes($0.kind) }.map { try outbox($0, state: state, topology: topology) }
    }

    /// Whether the exchange is a topology's events exchange (`<prefix>.events`).
    static func isEventsExchange(_ exchange: String) -> Bool { exchange.hasSuffix(".events") }

    /// The broker message for an outbox message. Commands are mandatory (an unroutable command is
    /// an error); events are not (nobody has to listen).
    static func outgoing(_ message: OutboxMessage) -> OutgoingMessage {
        OutgoingMessage(
            exchange: message.exchange,
            routingKey: message.routingKey,
            body: message.bodyToPublish,
            headers: MessageHeaders(message.headers),
            messageId: message.id,
            contentType: SagaHeaders.contentType,
            type: message.routingKey,
            correlationId: message.sagaID,
            mandatory: !isEventsExchange(message.exchange)
        )
    }

    /// How many bytes more than a participant's `maxBodyBytes` a command's body may have for the
    /// copy of its saga's state: the largest copy, its seal and their two keys.
    static let stateCopyAllowance = SagaEngine.maxStateCopyBytes + 128

    /// Decodes a delivery into a command (with the copy of its saga's state its body may carry), or
    /// says why it cannot be one.
    ///
    /// `maxBodyBytes` limits the command itself: the copy of its saga's state a body may carry
    /// (at most ``SagaEngine/maxStateCopyBytes``, sent by SagaKit) does not count, so that a
    /// service with a small limit still takes the commands SagaKit sends it. A body larger than
    /// the limit plus ``stateCopyAllowance`` is refused without being parsed.
    static func command(from delivery: Delivery, maxBodyBytes: Int) -> Result<SagaCommandBody, SagaError> {
        let size = delivery.body.count
        let tooLarge = SagaError(.invalidMessage, "body of \(size) bytes exceeds the limit of \(maxBodyBytes) bytes")
        if size > maxBodyBytes + stateCopyAllowance { return .failure(tooLarge) }
        if let contentType = delivery.contentType, !contentType.lowercased().hasPrefix(SagaHeaders.contentType) {
            return .failure(SagaError(.invalidMessage, "content type '\(contentType)' is not \(SagaHeaders.contentType)"))
        }
        let body: SagaCommandBody
        do {
            body = try SagaCommandBody(jsonBytes: delivery.body)
        } catch {
            if size > maxBodyBytes { return .failure(tooLarge) }
            return .failure(SagaError(.invalidMessage, "body is not a saga command (\(describe(error)))"))
        }
        if let copy = body.stateCopy?.bytesInBody, size - copy > maxBodyBytes {
            return .failure(
                SagaError(
                    .invalidMessage,
                    "command of \(size - copy) bytes (without the \(copy) bytes of its saga's state copy) exceeds the limit of \(maxBodyBytes) bytes"
                ))
        }
        if size > maxBodyBytes, body.stateCopy == nil { return .failure(tooLarge) }
        let command = body.command
        if command.attempt < 1 || command.step < 0 {
            return .failure(SagaError(.invalidMessage, "step \(command.step) / attempt \(command.attempt) out of range"))
        }
        // No saga, definition, step or command has such a name: a message that says so was not
        // made by SagaKit, and its text must not reach a log line or a terminal as it is.
        // Checked field by field (no array per delivery: this runs for every message).
        func refuse(_ field: String, _ text: String) -> Result<SagaCommandBody, SagaError>? {
            guard PrintableText.needsEscaping(text) else { return nil }
            return .failure(SagaError(.invalidMessage, "\(field) '\(PrintableText.escaped(text))' contains control characters"))
        }
        if let refusal = refuse("sagaID", command.sagaID) ?? refuse("sagaName", command.sagaName)
            ?? refuse("command", command.command) ?? refuse("stepName", command.stepName)
        {
            return refusal
        }
        return .success(body)
    }

    /// The dead letter for a delivery that cannot be processed: the same message (body, every
    /// property and every header with its AMQP type), plus headers saying why and where it came from.
    ///
    /// Two properties travel as headers instead (``SagaHeaders/deadLetterOriginalExpiration`` and
    /// ``SagaHeaders/deadLetterOriginalUserID``): an `expiration` would make the dead letter expire
    /// from the dead-letter queue, and a `user-id` is refused by the broker when the service logs
    /// in as another user. ``DeadLetters/original(of:topology:)`` puts them back.
    ///
    /// A dead letter is as large as the message. When it cannot be published (larger than the bus's
    /// `maxBodySize`), the participant rejects the delivery instead (see ``rejectsInsteadOfDeadLettering(_:)``):
    /// the broker dead-letters it through the queue's dead-letter exchange, unchanged, with an `x-death` header.
    static func deadLetter(_ delivery: Delivery, reason: String, service: String, topology: SagaTopology, now: Date) -> OutgoingMessage {
        var message = OutgoingMessage(
            republishing: delivery, exchange: topology.deadLetterExchange, routingKey: delivery.queue)
        // The state copy is of no use once dead-lettered (too old to be used when requeued), and
        // keeps the saga's payload out of the dead-letter queue and `saga dlq show`: the dead
        // letter's body is the command alone (as the outbox row keeps it). Releases before the
        // copy moved into the body carried it in two headers.
        if let body = try? SagaCommandBody(jsonBytes: delivery.body), body.stateCopy != nil {
            message.body = body.command.jsonBytes
        }
        for legacy in ["x-saga-state", "x-saga-state-seal"] { message.headers[field: legacy] = nil }
        message.headers[SagaHeaders.deadLetterReason] = reason
        message.headers[SagaHeaders.deadLetterQueue] = delivery.queue
        message.headers[SagaHeaders.deadLetterExchange] = delivery.exchange
        message.headers[SagaHeaders.deadLetterRoutingKey] = delivery.routingKey
        message.headers[SagaHeaders.deadLetterService] = service
        message.headers[SagaHeaders.deadLetterTime] = ISO8601DateFormatter().string(from: now)
        if let expiration = message.expiration {
            message.headers[field: SagaHeaders.deadLetterOriginalExpiration] = .int64(milliseconds(expiration))
            message.expiration = nil
        }
        if let userId = message.userId {
            message.headers[SagaHeaders.deadLetterOriginalUserID] = userId
            message.userId = nil
        }
        return message
    }

    /// Whole milliseconds, as AMQP `expiration` says them.
    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }

    /// `true` when publishing a dead letter failed in a way that publishing it again cannot fix (the message is
    /// larger than the bus accepts): the delivery must then be rejected (`basic.reject`, no requeue) so that the
    /// broker dead-letters it, or it would be redelivered forever.
    static func rejectsInsteadOfDeadLettering(_ error: any Error) -> Bool {
        (error as? BusError)?.code == .messageTooLarge
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "missing key '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted: "not valid JSON"
        case let error as JSONSyntaxError: "not valid JSON: \(error)"
        case let error as JSONFieldError: error.description
        default: "\(error)"
        }
    }
}

extension SagaTracing {
    /// The trace context carried by a delivery's (string) headers.
    public static func context(from headers: MessageHeaders) -> InstrumentationContext {
        context(from: headers.strings)
    }
}

/// Reading dead letters: why they were dead-lettered, and the message as it was before (what `saga dlq list` and
/// `saga dlq requeue` show and do).
public enum DeadLetters {
    /// The headers a dead letter carries that the original message did not: SagaKit's reason headers and the
    /// broker's dead-lettering headers.
    public static let deadLetterHeaders: Set<String> = [
        SagaHeaders.deadLetterReason, SagaHeaders.deadLetterQueue, SagaHeaders.deadLetterExchange,
        SagaHeaders.deadLetterRoutingKey, SagaHeaders.deadLetterService, SagaHeaders.deadLetterTime, "x-death",
        "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "x-last-death-exchange",
        "x-last-death-queue", "x-last-death-reason",
    ]

    /// The broker's latest `x-death` entry: why (`rejected`, `expired`, `maxlen`, `delivery_limit`), from which
    /// queue, how often, and where the message had been published.
    public struct BrokerDeath: Sendable, Hashable {
        /// `rejected`, `expired`, `maxlen` or `delivery_limit`.
        public var reason: String
        /// The queue the message was dead-lettered from.
        public var queue: String
        /// How many times it was dead-lettered from that queue for that reason.
        public var count: Int64
        /// The exchange it had been published to.
        public var exchange: String?
        /// The routing keys it had been published with.
        public var routingKeys: [String]
    }

    /// The latest `x-death` entry of a message dead-lettered by the broker; `nil` when there is none.
    public static func brokerDeath(of headers: MessageHeaders) -> BrokerDeath? {
        guard case .array(let entries)? = headers[field: "x-death"], case .table(let latest)? = entries.first,
            let reason = latest["reason"], let queue = latest["queue"]
        else { return nil }
        var keys: [String] = []
        if case .array(let values)? = latest[field: "routing-keys"] { keys = values.compactMap(\.stringValue) }
        return BrokerDeath(
            reason: reason, queue: queue, count: latest[field: "count"]?.integerValue ?? 1,
            exchange: latest["exchange"], routingKeys: keys)
    }

    /// Why `delivery` is a dead letter, in words: the reason a participant recorded, or what the broker's
    /// `x-death` header says; `nil` when neither is there.
    public static func reason(of delivery: Delivery) -> String? {
        if let reason = delivery.headers[SagaHeaders.deadLetterReason] { return reason }
        guard let death = brokerDeath(of: delivery.headers) else { return nil }
        let times = death.count > 1 ? ", \(death.count) times" : ""
        switch death.reason {
        case "rejected":
            return "rejected by a consumer of queue '\(death.queue)' and dead-lettered by the broker (x-death: "
                + "rejected\(times)); a participant rejects a message it cannot dead-letter itself, such as one too "
                + "large to publish again (this one has \(delivery.body.count) bytes)"
        case "expired":
            return "expired in queue '\(death.queue)' (x-death: expired\(times))"
        case "maxlen":
            return "dropped from queue '\(death.queue)' by its length limit (x-death: maxlen\(times))"
        case "delivery_limit":
            return "delivered too many times from queue '\(death.queue)' (x-death: delivery_limit\(times))"
        default:
            return "dead-lettered by the broker from queue '\(death.queue)' (x-death: \(death.reason)\(times))"
        }
    }

    /// The message as it was before it was dead-lettered: the same body, properties and headers (with their
    /// types), without the dead-letter headers (SagaKit's `x-sagakit-*` and the broker's `x-death` ones),
    /// addressed to where it had been published. Dead letters written by a participant say where they came from;
    /// for those dead-lettered by the broker the `x-death` header does, and otherwise the AMQP type (the command
    /// name) routes them to the commands exchange. The `expiration` and `user-id` a dead letter keeps in headers
    /// (see ``SagaHeaders/deadLetterOriginalExpiration``) are properties again; so is the `original-expiration`
    /// the broker records in `x-death`. A `user-id` is accepted by the broker only from that user (or an
    /// `impersonator`).
    public static func original(of delivery: Delivery, topology: SagaTopology) -> OutgoingMessage {
        var headers = delivery.headers
        let death = brokerDeath(of: headers)
        let exchange = headers[SagaHeaders.deadLetterExchange] ?? death?.exchange ?? topology.commandsExchange
        let routingKey =
            headers[SagaHeaders.deadLetterRoutingKey] ?? death?.routingKeys.first ?? delivery.type
            ?? delivery.routingKey
        var message = OutgoingMessage(republishing: delivery, exchange: exchange, routingKey: routingKey)
        if let milliseconds = headers[field: SagaHeaders.deadLetterOriginalExpiration]?.integerValue {
            message.expiration = .milliseconds(milliseconds)
        } else if message.expiration == nil, case .array(let entries)? = headers[field: "x-death"],
            case .table(let latest)? = entries.first, let text = latest["original-expiration"],
            let milliseconds = Int64(text)
        {
            message.expiration = .milliseconds(milliseconds)
        }
        if let userId = headers[SagaHeaders.deadLetterOriginalUserID] { message.userId = userId }
        for key in deadLetterHeaders { headers.removeValue(forKey: key) }
        for key in headers.keys where key.hasPrefix("x-sagakit-") { headers.removeValue(forKey: key) }
        message.headers = headers
        return message
    }
}

/// A copy of a saga's state as a command's body carries it (`state` and `stateSeal`, see
/// `SagaCommand.jsonBytes(stateCopy:)`): its JSON text and the seal made for exactly that text.
struct SealedState: Sendable {
    let json: [UInt8]
    let seal: String
}
