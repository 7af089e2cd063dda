package import Foundation

/// How the SQL stores (modules `SagaSQLite` and `SagaPostgres`) turn saga values into column values and back.
///
/// Timestamps are Unix milliseconds: a date with millisecond precision reads back equal (`==`)
/// to the one written. JSON columns are written with sorted keys; timestamps inside the step
/// history are Unix milliseconds too.
package enum StoreCoding {
    /// The date as whole Unix milliseconds (rounded to the nearest).
    package static func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded())
    }

    /// The date of whole Unix milliseconds.
    package static func date(milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }

    /// Shared (encoders and decoders are `Sendable` and thread-safe): setting one up per column
    /// showed in profiles of the store's hot path.
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(milliseconds(date))
        }
        return encoder
    }()
    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            return date(milliseconds: try container.decode(Int64.self))
        }
        return decoder
    }()

    /// JSON text with sorted keys.
    package static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    /// Decodes JSON text written by ``json(_:)``.
    package static func decode<T: Decodable>(_ type: T.Type, json: String, column: String, sagaID: String) throws -> T {
        do {
            return try decoder.decode(type, from: Data(json.utf8))
        } catch {
            throw SagaError(
                .invalidPayload,
                "the stored \(column) of saga \(sagaID) is not valid JSON for \(T.self)",
                recoverySuggestion: "the row was changed outside SagaKit; repair or delete it",
                underlying: error
            )
        }
    }

    // The columns read and written on every step, without `Codable` (``JSONReader`` and
    // ``JSONWriter``): the same text as the generic functions write, and they read it back.

    /// A payload as JSON text with sorted keys.
    package static func json(_ object: JSONObject) throws -> String {
        var writer = JSONWriter(escapingSlashes: false)
        try writer.write(object)
        return writer.text
    }

    /// A context (or headers) as JSON text with sorted keys.
    package static func json(_ strings: [String: String]) throws -> String {
        var writer = JSONWriter(escapingSlashes: false)
        writer.write(strings)
        return writer.text
    }

    /// A step history as JSON text: its records' `Codable` form, times in Unix milliseconds.
    package static func json(_ history: [StepRecord]) throws -> String {
        var writer = JSONWriter(escapingSlashes: false, capacity: 40 + 200 * history.count)
        write(history, into: &writer)
        return writer.text
    }

    /// Writes a step history as ``json(_:)-([StepRecord])`` does.
    package static func write(_ history: [StepRecord], into writer: inout JSONWriter) {
        writer.beginArray()
        for (offset, record) in history.enumerated() {
            if offset > 0 { writer.nextElement() }
            writer.beginObject()
            if let actor = record.actor {
                writer.key("actor")
                writer.write(actor)
            }
            writer.key("attempt")
            writer.write(record.attempt)
            if let error = record.error {
                writer.key("error")
                writer.write(error)
            }
            writer.key("finishedAt")
            writer.write(milliseconds(record.finishedAt))
            if let instance = record.instance {
                writer.key("instance")
                writer.write(instance)
            }
            writer.key("outcome")
            writer.write(record.outcome.rawValue)
            writer.key("phase")
            writer.write(record.phase.rawValue)
            if let reason = record.reason {
                writer.key("reason")
                writer.write(reason)
            }
            writer.key("startedAt")
            writer.write(milliseconds(record.startedAt))
            writer.key("step")
            writer.write(record.step)
            writer.key("stepName")
            writer.write(record.stepName)
            if let timedOut = record.timedOut {
                writer.key("timedOut")
                writer.write(timedOut)
            }
            writer.endObject()
        }
        writer.endArray()
    }

    /// Reads a payload written by ``json(_:)-(JSONObject)``.
    package static func decode(_ type: JSONObject.Type, json: String, column: String, sagaID: String) throws -> JSONObject {
        try reading(type, column: column, sagaID: sagaID) {
            guard case .object(let object) = try JSONReader.value(from: json) else {
                throw JSONFieldError.wrongType(column, expected: "object")
            }
            return object
        }
    }

    /// Reads a context written by ``json(_:)-([String: String])``.
    package static func decode(_ type: [String: String].Type, json: String, column: String, sagaID: String) throws -> [String: String] {
        try reading(type, column: column, sagaID: sagaID) {
            let fields = try JSONFields(JSONReader.value(from: json), at: column)
            var strings: [String: String] = [:]
            strings.reserveCapacity(fields.object.count)
            for key in fields.object.keys { strings[key] = try fields.string(key) }
            return strings
        }
    }

    /// Reads a step history written by ``json(_:)-([StepRecord])``.
    package static func decode(_ type: [StepRecord].Type, json: String, column: String, sagaID: String) throws -> [StepRecord] {
        try reading(type, column: column, sagaID: sagaID) { try history(from: JSONReader.value(from: json), at: column) }
    }

    /// Reads a step history from its parsed JSON (see ``json(_:)-([StepRecord])``).
    package static func history(from value: JSONValue, at column: String) throws -> [StepRecord] {
        guard case .array(let records) = value else {
            throw JSONFieldError.wrongType(column, expected: "array")
        }
        return try records.enumerated().map { offset, value in
            let fields = try JSONFields(value, at: "\(column)[\(offset)]")
            return StepRecord(
                step: try fields.int("step"), stepName: try fields.string("stepName"),
                phase: try fields.value("phase", as: StepPhase.self), attempt: try fields.int("attempt"),
                startedAt: date(milliseconds: try fields.int64("startedAt")),
                finishedAt: date(milliseconds: try fields.int64("finishedAt")),
                outcome: try fields.value("outcome", as: StepOutcome.self), error: try fields.optionalString("error"),
                timedOut: try fields.optionalBool("timedOut"), actor: try fields.optionalString("actor"),
                reason: try fields.optionalString("reason"), instance: try fields.optionalString("instance"))
        }
    }

    private static func reading<T>(_ type: T.Type, column: String, sagaID: String, _ read: () throws -> T) throws -> T {
        do {
            return try read()
        } catch {
            throw SagaError(
                .invalidPayload,
                "the stored \(column) of saga \(sagaID) is not valid JSON for \(T.self): \(error)",
                recoverySuggestion: "the row was changed outside SagaKit; repair or delete it",
                underlying: error
            )
        }
    }

    /// Parses a stored status.
    package static func status(_ raw: String, sagaID: String) throws -> SagaStatus {
        guard let status = SagaStatus(rawValue: raw) else {
            throw SagaError(
                .invalidState,
                "saga \(sagaID) has the unknown status '\(raw)' in the store",
                recoverySuggestion: "the row was changed outside SagaKit, or by a newer SagaKit"
            )
        }
        return status
    }

    /// Whole Unix milliseconds from a `Duration` (rounded to the nearest).
    package static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + Int64((Double(attoseconds) / 1e15).rounded())
    }
}
