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
