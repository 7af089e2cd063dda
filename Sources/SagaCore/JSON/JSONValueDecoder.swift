import Foundation

/// Decodes a `Decodable` value straight from a ``JSONValue``, without writing it as text for
/// `JSONDecoder` first (what ``JSONCoding/value(_:from:)`` did for every `payload(as:)`).
///
/// It decodes only what it decodes exactly as `JSONDecoder` does with SagaKit's settings:
/// objects, arrays, strings, booleans, `null`, whole numbers into integer types that hold them
/// and numbers into `Double`. Anything else (a `Date`, `Data`, `URL`, `Decimal` or `Float`, a
/// fraction for an integer, a type mismatch, a missing key: every error) throws
/// ``Unsupported``, and the caller decodes the value again with `JSONDecoder`, which then decodes
/// it or throws its own error. So the result, and every error a caller sees, is `JSONDecoder`'s.
package enum JSONValueDecoder {
    /// This decoder does not decode the value exactly as `JSONDecoder` would: ask it.
    package struct Unsupported: Error {}

    /// The value of type `type` in `value`.
    /// - Throws: ``Unsupported``, whatever went wrong.
    package static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try ValueDecoder(value: value, codingPath: []).decode(type)
    }
}

/// A decoder over one value.
private struct ValueDecoder: Decoder {
    let value: JSONValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let object) = value else { throw JSONValueDecoder.Unsupported() }
        return KeyedDecodingContainer(KeyedContainer<Key>(object: object, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let array) = value else { throw JSONValueDecoder.Unsupported() }
        return UnkeyedContainer(array: array, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    /// Decodes `T` from this value: the scalars and ``JSONValue`` directly, special Foundation
    /// types not at all, everything else through its own `init(from:)`.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == JSONValue.self { return value as! T }
        if T.self == String.self { return try decode(String.self) as! T }
        if T.self == Bool.self { return try decode(Bool.self) as! T }
        if T.self == Double.self { return try decode(Double.self) as! T }
        if T.self == Int.self { return try decode(Int.self) as! T }
        if T.self == Int64.self { return try decode(Int64.self) as! T }
        if T.self == Date.self || T.self == Data.self || T.self == URL.self || T.self == Decimal.self || T.self == Float.self {
            throw JSONValueDecoder.Unsupported()
        }
        return try T(from: self)
    }

    fileprivate func integer<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        guard case .number(let number) = value else { throw JSONValueDecoder.Unsupported() }
        if let int = number.int64Value, let value = I(exactly: int) { return value }
        if let uint = number.uint64Value, let value = I(exactly: uint) { return value }
        throw JSONValueDecoder.Unsupported()
    }
}

extension ValueDecoder: SingleValueDecodingContainer {
    func decodeNil() -> Bool { value == .null }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let bool) = value else { throw JSONValueDecoder.Unsupported() }
        return bool
    }

    func decode(_ type: String.Type) throws -> String {
        guard case .string(let string) = value else { throw JSONValueDecoder.Unsupported() }
        return string
    }

    func decode(_ type: Double.Type) throws -> Double {
        guard case .number(let number) = value else { throw JSONValueDecoder.Unsupported() }
        // Integers convert as their text parses (both round to nearest); a `Double` is the
        // `Double` its text reads back as. `Decimal`-only numbers are left to JSONDecoder.
        if let int = number.int64Value { return Double(int) }
        if let uint = number.uint64Value { return Double(uint) }
        guard let double = number.exactDouble else { throw JSONValueDecoder.Unsupported() }
        return double
    }

    func decode(_ type: Float.Type) throws -> Float { throw JSONValueDecoder.Unsupported() }
    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
}

/// The keys of an object.
private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: JSONObject
    let codingPath: [any CodingKey]

    var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

    private func decoder(for key: Key) throws -> ValueDecoder {
        guard let value = object[key.stringValue] else { throw JSONValueDecoder.Unsupported() }
        return ValueDecoder(value: value, codingPath: codingPath + [key])
    }

    func decodeNil(forKey key: Key) throws -> Bool { try decoder(for: key).decodeNil() }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decoder(for: key).decode(type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try decoder(for: key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try decoder(for: key).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder { throw JSONValueDecoder.Unsupported() }
    func superDecoder(forKey key: Key) throws -> any Decoder { throw JSONValueDecoder.Unsupported() }
}

/// The elements of an array, in order.
private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let array: [JSONValue]
    let codingPath: [any CodingKey]
    private(set) var currentIndex = 0

    init(array: [JSONValue], codingPath: [any CodingKey]) {
        self.array = array
        self.codingPath = codingPath
    }

    var count: Int? { array.count }
    var isAtEnd: Bool { currentIndex >= array.count }

    private mutating func next() throws -> ValueDecoder {
        guard !isAtEnd else { throw JSONValueDecoder.Unsupported() }
        defer { currentIndex += 1 }
        return ValueDecoder(value: array[currentIndex], codingPath: codingPath + [IndexKey(intValue: currentIndex)])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw JSONValueDecoder.Unsupported() }
        guard array[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decode(type) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }

    mutating func superDecoder() throws -> any Decoder { throw JSONValueDecoder.Unsupported() }
}

/// An array index in a coding path.
private struct IndexKey: CodingKey {
    let intValue: Int?
    var stringValue: String { "Index \(intValue ?? 0)" }
    init(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}
