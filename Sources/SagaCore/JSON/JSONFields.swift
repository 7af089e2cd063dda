/// Why a JSON object is not the value it should be: a key is missing or holds the wrong type.
package enum JSONFieldError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A required key is absent (or `null`).
    case missing(String)
    /// The key holds a value of another type, or one out of range.
    case wrongType(String, expected: String)

    package var description: String {
        switch self {
        case .missing(let key): "missing key '\(key)'"
        case .wrongType(let key, let expected): "wrong type at '\(key)' (\(expected) expected)"
        }
    }
}

/// Reads the fields of a JSON object the way a synthesized `Decodable` conformance reads them
/// from `JSONDecoder`: a missing or `null` key is an error for a required field and `nil` for
/// an optional one; keys nobody asks for are ignored.
package struct JSONFields {
    /// The object.
    package let object: JSONObject

    /// The fields of `value`, which must be an object.
    /// - Throws: ``JSONFieldError`` when it is not.
    package init(_ value: JSONValue, at path: String = "(top level)") throws(JSONFieldError) {
        guard case .object(let object) = value else { throw .wrongType(path, expected: "object") }
        self.object = object
    }

    /// The fields of an object.
    package init(_ object: JSONObject) { self.object = object }

    /// A required string.
    package func string(_ key: String) throws(JSONFieldError) -> String {
        guard let value = try optionalString(key) else { throw .missing(key) }
        return value
    }

    /// An optional string.
    package func optionalString(_ key: String) throws(JSONFieldError) -> String? {
        switch object[key] {
        case nil, .null?: nil
        case .string(let value)?: value
        default: throw .wrongType(key, expected: "string")
        }
    }

    /// A required integer.
    package func int(_ key: String) throws(JSONFieldError) -> Int {
        guard let value = try optionalInt(key) else { throw .missing(key) }
        return value
    }

    /// An optional integer.
    package func optionalInt(_ key: String) throws(JSONFieldError) -> Int? {
        guard let value = try optionalInt64(key) else { return nil }
        guard let int = Int(exactly: value) else { throw .wrongType(key, expected: "integer") }
        return int
    }

    /// A required 64-bit integer.
    package func int64(_ key: String) throws(JSONFieldError) -> Int64 {
        guard let value = try optionalInt64(key) else { throw .missing(key) }
        return value
    }

    /// An optional 64-bit integer.
    package func optionalInt64(_ key: String) throws(JSONFieldError) -> Int64? {
        switch object[key] {
        case nil, .null?: return nil
        case .number(let number)?:
            guard let value = number.int64Value else { throw .wrongType(key, expected: "integer") }
            return value
        default: throw .wrongType(key, expected: "integer")
        }
    }

    /// An optional Boolean.
    package func optionalBool(_ key: String) throws(JSONFieldError) -> Bool? {
        switch object[key] {
        case nil, .null?: nil
        case .bool(let value)?: value
        default: throw .wrongType(key, expected: "true or false")
        }
    }

    /// A required value of a string enumeration.
    package func value<T: RawRepresentable>(_ key: String, as type: T.Type) throws(JSONFieldError) -> T where T.RawValue == String {
        guard let value = try optionalValue(key, as: type) else { throw .missing(key) }
        return value
    }

    /// An optional value of a string enumeration.
    package func optionalValue<T: RawRepresentable>(_ key: String, as type: T.Type) throws(JSONFieldError) -> T?
    where T.RawValue == String {
        guard let raw = try optionalString(key) else { return nil }
        guard let value = T(rawValue: raw) else { throw .wrongType(key, expected: "one of \(T.self)'s values") }
        return value
    }
}
