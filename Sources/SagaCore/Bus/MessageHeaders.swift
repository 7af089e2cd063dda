/// One value of an AMQP 0-9-1 field table: a message header, or an element of a table or array nested in one.
///
/// Every AMQP field type has a case of its own, so that a message consumed and published again (dead-lettered,
/// requeued from a dead-letter queue) carries the same headers, with the same types, as the one that arrived.
/// The AMQP type tag of each case (as RabbitMQ and librabbitmq write it) is given in its documentation.
///
/// String, integer, boolean and floating-point literals make values: `"text"` is ``string(_:)``, `3` is
/// ``int64(_:)``, `true` is ``bool(_:)``, `1.5` is ``double(_:)``.
public enum HeaderValue: Sendable, Hashable {
    /// A long string, UTF-8 (`S`).
    case string(String)
    /// A byte array (`x`).
    case bytes([UInt8])
    /// A boolean (`t`).
    case bool(Bool)
    /// A signed 8-bit integer (`b`).
    case int8(Int8)
    /// An unsigned 8-bit integer (`B`).
    case uint8(UInt8)
    /// A signed 16-bit integer (`s`).
    case int16(Int16)
    /// An unsigned 16-bit integer (`u`).
    case uint16(UInt16)
    /// A signed 32-bit integer (`I`).
    case int32(Int32)
    /// An unsigned 32-bit integer (`i`).
    case uint32(UInt32)
    /// A signed 64-bit integer (`l`).
    case int64(Int64)
    /// An unsigned 64-bit integer (`L`; RabbitMQ's table parser has no clause for this type: avoid it with RabbitMQ).
    case uint64(UInt64)
    /// A 32-bit floating-point number (`f`).
    case float(Float)
    /// A 64-bit floating-point number (`d`).
    case double(Double)
    /// A decimal: `value` × 10^-`scale` (`D`).
    case decimal(scale: UInt8, value: UInt32)
    /// A timestamp, in seconds since the Unix epoch (`T`).
    case timestamp(UInt64)
    /// No value (`V`).
    case void
    /// An array of values (`A`).
    case array([HeaderValue])
    /// A nested field table (`F`).
    case table(MessageHeaders)

    /// The text of a ``string(_:)`` value; `nil` for every other case.
    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The value of an integer case (any width, signed or not) when it fits in an `Int64`; `nil` otherwise.
    public var integerValue: Int64? {
        switch self {
        case .int8(let v): Int64(v)
        case .uint8(let v): Int64(v)
        case .int16(let v): Int64(v)
        case .uint16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .uint32(let v): Int64(v)
        case .int64(let v): v
        case .uint64(let v): Int64(exactly: v)
        default: nil
        }
    }
}

extension HeaderValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral
{
    /// A ``string(_:)`` value.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An ``int64(_:)`` value.
    public init(integerLiteral value: Int64) { self = .int64(value) }
    /// A ``bool(_:)`` value.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// A ``double(_:)`` value.
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension HeaderValue: CustomStringConvertible {
    /// The value in a compact, readable form (for logs and the operator tools), with its type where a bare
    /// value would be ambiguous.
    public var description: String {
        switch self {
        case .string(let v): v
        case .bytes(let v): "bytes(\(v.count))"
        case .bool(let v): "\(v)"
        case .int8(let v): "\(v)"
        case .uint8(let v): "\(v)"
        case .int16(let v): "\(v)"
        case .uint16(let v): "\(v)"
        case .int32(let v): "\(v)"
        case .uint32(let v): "\(v)"
        case .int64(let v): "\(v)"
        case .uint64(let v): "\(v)"
        case .float(let v): "\(v)"
        case .double(let v): "\(v)"
        case .decimal(let scale, let value): "decimal(\(value)e-\(scale))"
        case .timestamp(let v): "timestamp(\(v))"
        case .void: "void"
        case .array(let v): "[" + v.map(\.description).joined(separator: ", ") + "]"
        case .table(let v): v.description
        }
    }
}

/// The application headers of a message: an AMQP field table, every value with its AMQP type (``HeaderValue``).
///
/// Plain string headers — what SagaKit itself writes — read and write as strings:
///
/// ```swift
/// var headers: MessageHeaders = ["tenant": "acme"]
/// headers["traceparent"] = "00-…-01"            // a string header
/// let tenant: String? = headers["tenant"]      // nil unless the header is a string
/// headers[field: "x-priority"] = .int32(5)      // any AMQP type
/// ```
///
/// A message consumed and published again with the same `MessageHeaders` carries the same table: nested tables,
/// arrays, decimals, typed integers, booleans, floating-point numbers, timestamps, void and byte arrays included.
public struct MessageHeaders: Sendable, Hashable, ExpressibleByDictionaryLiteral, Sequence, CustomStringConvertible {
    /// Every header with its typed value.
    public var fields: [String: HeaderValue]

    /// No headers.
    public init() { fields = [:] }

    /// Typed headers.
    public init(fields: [String: HeaderValue]) { self.fields = fields }

    /// String headers.
    public init(_ strings: [String: String]) { fields = strings.mapValues(HeaderValue.string) }

    /// Headers from a literal: `["tenant": "acme", "count": 3, "flag": true]`.
    public init(dictionaryLiteral elements: (String, HeaderValue)...) {
        fields = Dictionary(elements, uniquingKeysWith: { _, last in last })
    }

    /// The header `key` when it is a string; setting a string stores a ``HeaderValue/string(_:)``, setting
    /// `nil` removes the header (whatever its type).
    public subscript(key: String) -> String? {
        get { fields[key]?.stringValue }
        set { fields[key] = newValue.map(HeaderValue.string) }
    }

    /// The header `key` with its type.
    public subscript(field key: String) -> HeaderValue? {
        get { fields[key] }
        set { fields[key] = newValue }
    }

    /// The headers whose values are strings (others are left out).
    public var strings: [String: String] { fields.compactMapValues(\.stringValue) }

    /// The header names.
    public var keys: Dictionary<String, HeaderValue>.Keys { fields.keys }

    /// The number of headers.
    public var count: Int { fields.count }

    /// `true` when there are no headers.
    public var isEmpty: Bool { fields.isEmpty }

    /// Removes a header and returns its value.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> HeaderValue? { fields.removeValue(forKey: key) }

    /// Iterates over `(key, value)` pairs, in no particular order.
    public func makeIterator() -> Dictionary<String, HeaderValue>.Iterator { fields.makeIterator() }

    /// `{key: value, …}`, sorted by key.
    public var description: String {
        "{" + fields.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
    }
}
