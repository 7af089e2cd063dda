import SagaCore

/// Turns the broker's reply codes and texts into ``BusError``s that say what happened and what to do.
///
/// RabbitMQ's reply texts look like `PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in
/// vhost '/': received ...`; the names are read from them so the error can name the queue and the argument.
enum BrokerErrorText {
    /// A `connection.close` received while logging in or opening the virtual host.
    static func connectionRefusal(code: UInt16, text: String, user: String, vhost: String, place: String)
        -> BusError
    {
        if code == 403 || text.hasPrefix("ACCESS_REFUSED") {
            return BusError(
                .authenticationFailed,
                "The broker at \(place) refused the login of user '\(user)' to vhost '\(vhost)' "
                    + "(wrong user name or password)",
                recoverySuggestion: "check the credentials in the AMQP URL (amqp://user:password@host:port/vhost)"
            )
        }
        if text.contains("not found"), text.contains("vhost") {
            return BusError(
                .vhostNotFound,
                "The virtual host '\(vhost)' does not exist on the broker at \(place)",
                recoverySuggestion: "create it (rabbitmqctl add_vhost \(vhost)) or fix the URL's path "
                    + "(the default vhost '/' is written %2F)"
            )
        }
        if text.contains("access to vhost") {
            return BusError(
                .accessRefused,
                "User '\(user)' may not access the virtual host '\(vhost)' on \(place)",
                recoverySuggestion: "grant permissions: rabbitmqctl set_permissions -p \(vhost) \(user) '.*' '.*' '.*'"
            )
        }
        return BusError(
            .protocolError, "The broker at \(place) refused the connection: \(text)", isRetryable: true)
    }

    /// A `channel.close` received in reply to `operation` (for example "declaring queue 'q'").
    static func channelError(code: UInt16, text: String, operation: String) -> BusError {
        let detail = stripCode(text)
        switch code {
        case 406:
            if let argument = quoted(in: text, after: "inequivalent arg '") {
                if let queue = quoted(in: text, after: "for queue '") {
                    return BusError(
                        .preconditionFailed,
                        "Queue '\(queue)' already exists with a different '\(argument)' (broker: \(detail))",
                        recoverySuggestion: "declare it with the same arguments, or delete the queue "
                            + "(rabbitmqctl delete_queue \(queue)) so it can be declared anew"
                    )
                }
                if let exchange = quoted(in: text, after: "for exchange '") {
                    return BusError(
                        .preconditionFailed,
                        "Exchange '\(exchange)' already exists with a different '\(argument)' (broker: \(detail))",
                        recoverySuggestion: "declare it with the same type and durability, or delete the exchange"
                    )
                }
            }
            return BusError(
                .preconditionFailed, "The broker refused \(operation): \(detail)",
                recoverySuggestion: "the declaration conflicts with what exists on the broker")
        case 404:
            if let exchange = quoted(in: text, after: "no exchange '") {
                return BusError(
                    .notFound, "Exchange '\(exchange)' does not exist (\(operation))",
                    recoverySuggestion: "declare the exchange first (MessageBus.declare)")
            }
            if let queue = quoted(in: text, after: "no queue '") {
                return BusError(
                    .notFound, "Queue '\(queue)' does not exist (\(operation))",
                    recoverySuggestion: "declare the queue first (MessageBus.declare)")
            }
            return BusError(.notFound, "Not found while \(operation): \(detail)")
        case 403:
            return BusError(
                .accessRefused, "Access refused while \(operation): \(detail)",
                recoverySuggestion: "check the user's permissions on the virtual host")
        default:
            return BusError(.protocolError, "The broker closed the channel while \(operation): \(detail)")
        }
    }

    /// The text without its leading `CODE_NAME - `.
    static func stripCode(_ text: String) -> String {
        guard let range = text.range(of: " - ") else { return text }
        return String(text[range.upperBound...])
    }

    /// The text between `prefix` and the next `'`.
    static func quoted(in text: String, after prefix: String) -> String? {
        guard let start = text.range(of: prefix) else { return nil }
        let rest = text[start.upperBound...]
        guard let end = rest.firstIndex(of: "'") else { return nil }
        return String(rest[..<end])
    }
}
