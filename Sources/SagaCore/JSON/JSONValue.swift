public import Foundation

/// A JSON value. Saga payloads are JSON objects (``JSONObject``) so that services that do not
/// share Swift types can still read and extend them.
public enum JSONValue: Sendable, Hashable, Codable {
    /// `null`
    case null
    /// `true` / `false`
    case bool(Bool)
    /// A number, kept exactly (see ``JSONNumber``): integers as integers, decimals as written.
    case number(JSONNumber)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object.
    case object(JSONObject)

    /// Decodes any JSON value.
    public init(from decoder: any Decoder) throws {
        // Objects, strings and numbers first: every failed attempt throws a DecodingError, which
        // is expensive, so the common shapes of payloads are tried before the rare ones.
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            var result: JSONObject = [:]
            result.reserveCapacity(object.allKeys.count)
            for key in object.allKeys {
                result[key.stringValue] = try object.decode(JSONValue.self, forKey: key)
            }
            self = .object(result)
            return
        }
        if var array = try? decoder.unkeyedContainer() {
            var result: [JSONValue] = []
            while !array.isAtEnd { result.append(try array.decode(JSONValue.self)) }
            self = .array(result)
            return
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let string = try? container.decode(String.self) {
            self = .string(string)
        } else if let number = try? container.decode(JSONNumber.self) {
            self = .number(number)
        } else {
            self = .bool(try container.decode(Bool.self))
        }
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Encodes the value.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// A number from a `Double` (a whole number is kept as an integer).
    @_disfavoredOverload
    public static func number(_ value: Double) -> JSONValue { .number(JSONNumber(value)) }

    /// A number from an `Int`.
    @_disfavoredOverload
    public static func number(_ value: Int) -> JSONValue { .number(JSONNumber(value)) }

    /// A number from an `Int64`.
    @_disfavoredOverload
    public static func number(_ value: Int64) -> JSONValue { .number(JSONNumber(value)) }

    /// A number from a `Decimal`, kept exactly.
    @_disfavoredOverload
    public static func number(_ value: Decimal) -> JSONValue { .number(JSONNumber(value)) }

    /// The number, if this is a number.
    public var numberValue: JSONNumber? {
        if case .number(let value) = self { return value }
        return nil
    }

    /// The number as the nearest `Double`, if this is a number (large integers and long decimals
    /// are rounded: use ``int64Value`` or ``decimalValue`` for those).
    public var doubleValue: Double? { numberValue?.doubleValue }

    /// The number as an `Int`, if this is a whole number in its range.
    public var intValue: Int? { numberValue?.intValue }

    /// The number as an `Int64`, if this is a whole number in its range.
    public var int64Value: Int64? { numberValue?.int64Value }

    /// The number as a `Decimal`, if this is a number.
    public var decimalValue: Decimal? { numberValue?.decimalValue }

    /// The boolean, if this is a boolean.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The object, if this is an object.
    public var objectValue: JSONObject? {
        if case .object(let value) = self { return value }
        return nil
    }
}

/// A JSON object: the shape of every saga payload.
public typealias JSONObject = [String: JSONValue]

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    /// A string literal.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An integer literal.
    public init(integerLiteral value: Int) { self = .number(JSONNumber(value)) }
    /// A floating-point literal.
    public init(floatLiteral value: Double) { self = .number(JSONNumber(value)) }
    /// A boolean literal.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// An array literal.
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    /// A dictionary literal.
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    /// `nil`
    public init(nilLiteral: ()) { self = .null }
}

/// Conversions between JSON objects, bytes and `Codable` types.
public enum JSONCoding {
    /// Encoders and decoders are `Sendable` and thread-safe: one shared instance of each saves
    /// setting one up for every message.
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()
    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    /// Encodes a value as JSON bytes with sorted keys (stable output).
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        try encoder.encode(value)
    }

    /// Decodes a value from JSON bytes.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decoder.decode(type, from: data)
    }

    /// Converts an `Encodable` value into a JSON object.
    ///
    /// - Throws: ``SagaError`` `invalidPayload` when the value does not encode to a JSON object.
    public static func object<T: Encodable>(from value: T) throws -> JSONObject {
        let data = try encode(value)
        let parsed = try JSONReader.value(from: data)
        guard case .object(let object) = parsed else {
            throw SagaError(
                .invalidPayload,
                "\(T.self) encodes to a JSON \(String(describing: parsed).prefix(20))…, not to a JSON object",
                recoverySuggestion: "Saga payloads are JSON objects: use a struct or a dictionary."
            )
        }
        return object
    }

    /// Decodes a `Decodable` value from a JSON object (missing keys are errors as usual), as
    /// `JSONDecoder` decodes the object's text.
    public static func value<T: Decodable>(_ type: T.Type, from object: JSONObject) throws -> T {
        // Straight from the values where that is exactly what JSONDecoder does (see
        // JSONValueDecoder); otherwise, and for every error, JSONDecoder on the object's text.
        if let decoded = try? JSONValueDecoder.decode(type, from: .object(object)) { return decoded }
        var writer = JSONWriter()
        try writer.write(object)
        return try decoder.decode(type, from: Data(writer.bytes))
    }

    /// Parses bytes that must hold a JSON object.
    public static func object(fromJSON data: Data) throws -> JSONObject {
        let value: JSONValue
        do {
            value = try JSONReader.value(from: data)
        } catch {
            throw SagaError(.invalidPayload, "payload is not valid JSON: \(error)")
        }
        guard case .object(let object) = value else {
            throw SagaError(
                .invalidPayload, "payload is JSON but not a JSON object",
                recoverySuggestion: "Send a JSON object such as {\"orderId\": \"42\"}.")
        }
        return object
    }
}

extension Dictionary where Key == String, Value == JSONValue {
    /// Shallow merge: every top-level key of `patch` replaces the same key here; keys absent from
    /// the patch are kept; nested objects are replaced, not merged; a `null` value is stored as
    /// `null` (it does not delete the key).
    public func merging(patch: JSONObject) -> JSONObject {
        merging(patch, uniquingKeysWith: { _, new in new })
    }
}
