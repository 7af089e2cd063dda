public import Tracing

/// Distributed tracing across the services of a saga (swift-distributed-tracing).
///
/// With a tracer bootstrapped (`InstrumentationSystem.bootstrap(…)`, for example swift-otel's),
/// SagaKit records:
/// - a `saga.start <name>` span (kind producer) around ``SagaManager/start(_:payload:id:context:)``;
/// - a span per delivery a participant handles, named after the command (kind consumer), a child
///   of the span that sent the command, so one saga is one trace across every service;
/// - attributes `saga.id`, `saga.name`, `saga.step`, `saga.phase`, `saga.attempt`,
///   `messaging.system` and `messaging.destination.name`; a failed handler or infrastructure
///   error is recorded on the span.
///
/// The trace context travels in the headers of every command (`traceparent` with the W3C
/// propagator of swift-otel). Commands stored in the outbox keep the headers of the span that
/// committed them, so a command the relay or the reaper sends again continues the same trace.
/// Without a bootstrapped tracer all of this is a no-op.
public enum SagaTracing {
    /// The trace context carried by message headers (none when the headers carry none).
    public static func context(from headers: [String: String]) -> InstrumentationContext {
        var context = InstrumentationContext.topLevel
        InstrumentationSystem.instrument.extract(headers, into: &context, using: HeadersExtractor())
        return context
    }

    /// Writes the current trace context (of the running span) into message headers.
    public static func inject(into headers: inout [String: String]) {
        guard let context = InstrumentationContext.current else { return }
        InstrumentationSystem.instrument.inject(context, into: &headers, using: HeadersInjector())
    }

    /// Sets the attributes that name a command on a span.
    static func describe(_ span: any Span, command: SagaCommand, queue: String) {
        // Without a tracer, spans record nothing: skip building the attributes.
        guard span.isRecording else { return }
        span.updateAttributes { attributes in
            attributes["saga.id"] = command.sagaID
            attributes["saga.name"] = command.sagaName
            attributes["saga.step"] = command.stepName
            attributes["saga.phase"] = command.phase.rawValue
            attributes["saga.attempt"] = command.attempt
            attributes["messaging.system"] = "rabbitmq"
            attributes["messaging.destination.name"] = queue
        }
    }
}

/// Reads trace headers from a message's application headers.
struct HeadersExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

/// Writes trace headers into a message's application headers.
struct HeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
