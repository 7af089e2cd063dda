import Foundation

/// Header names SagaKit writes on its messages.
public enum SagaHeaders {
    /// The saga id.
    public static let sagaID = "x-saga-id"
    /// The saga definition's name.
    public static let sagaName = "x-saga-name"
    /// The step name.
    public static let step = "x-saga-step"
    /// Action or compensation.
    public static let phase = "x-saga-phase"
    /// The attempt number.
    public static let attempt = "x-saga-attempt"
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
    /// The content type of saga commands.
    public static let contentType = "application/json"
}

/// Conversions between saga commands and broker messages.
enum SagaMessages {
    /// The outbox message that sends `scheduled` for `state`.
    static func outbox(_ scheduled: ScheduledCommand, state: SagaState, topology: SagaTopology, now: Date) throws -> OutboxMessage {
        let command = scheduled.command
        var headers = state.context
        headers[SagaHeaders.sagaID] = command.sagaID
        headers[SagaHeaders.sagaName] = command.sagaName
        headers[SagaHeaders.step] = command.stepName
        headers[SagaHeaders.phase] = command.phase.rawValue
        headers[SagaHeaders.attempt] = String(command.attempt)
        var exchange = topology.commandsExchange
        if let delay = scheduled.delay, delay > .zero {
            let level = topology.delayLevel(for: delay)
            exchange = topology.delayName(seconds: level)
            headers[SagaHeaders.delay] = String(level)
        }
        SagaTracing.inject(into: &headers)
        return OutboxMessage(
            id: "\(command.messageID):\(UUID().uuidString.prefix(8))",
            sagaID: command.sagaID,
            exchange: exchange,
            routingKey: command.command,
            body: Array(try JSONCoding.encode(command)),
            headers: headers,
            createdAt: now
        )
    }

    /// The broker message for an outbox message.
    static func outgoing(_ message: OutboxMessage) -> OutgoingMessage {
        OutgoingMessage(
            exchange: message.exchange,
            routingKey: message.routingKey,
            body: message.body,
            headers: message.headers,
            messageId: message.id,
            contentType: SagaHeaders.contentType,
            type: message.routingKey,
            correlationId: message.sagaID
        )
    }

    /// Decodes a delivery into a command, or says why it cannot be one.
    static func command(from delivery: Delivery, maxBodyBytes: Int) -> Result<SagaCommand, SagaError> {
        if delivery.body.count > maxBodyBytes {
            return .failure(SagaError(.invalidMessage, "body of \(delivery.body.count) bytes exceeds the limit of \(maxBodyBytes) bytes"))
        }
        if let contentType = delivery.contentType, !contentType.lowercased().hasPrefix(SagaHeaders.contentType) {
            return .failure(SagaError(.invalidMessage, "content type '\(contentType)' is not \(SagaHeaders.contentType)"))
        }
        let command: SagaCommand
        do {
            command = try JSONCoding.decode(SagaCommand.self, from: Data(delivery.body))
        } catch {
            return .failure(SagaError(.invalidMessage, "body is not a saga command (\(describe(error)))"))
        }
        if command.attempt < 1 || command.step < 0 {
            return .failure(SagaError(.invalidMessage, "step \(command.step) / attempt \(command.attempt) out of range"))
        }
        return .success(command)
    }

    /// The dead letter for a delivery that cannot be processed.
    static func deadLetter(_ delivery: Delivery, reason: String, service: String, topology: SagaTopology, now: Date) -> OutgoingMessage {
        var headers = delivery.headers
        headers[SagaHeaders.deadLetterReason] = reason
        headers[SagaHeaders.deadLetterQueue] = delivery.queue
        headers[SagaHeaders.deadLetterExchange] = delivery.exchange
        headers[SagaHeaders.deadLetterRoutingKey] = delivery.routingKey
        headers[SagaHeaders.deadLetterService] = service
        headers[SagaHeaders.deadLetterTime] = ISO8601DateFormatter().string(from: now)
        return OutgoingMessage(
            exchange: topology.deadLetterExchange,
            routingKey: delivery.queue,
            body: delivery.body,
            headers: headers,
            messageId: delivery.messageId,
            contentType: delivery.contentType,
            type: delivery.type,
            correlationId: delivery.correlationId
        )
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "missing key '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted: "not valid JSON"
        default: "\(error)"
        }
    }
}
