public import Foundation

/// A JSON number, kept exactly as it was written where Swift can hold it.
///
/// Integers are integers: every value of `Int64` and `UInt64` round-trips unchanged (a 64-bit id
/// such as `1234567890123456789` stays that number, it does not pass through `Double`). A number
/// with a fraction or an exponent is kept as a `Double` when the `Double` reads back as the same
/// decimal number (`0.1`, `30.5`, `1e-7`), and as a `Decimal` (38 significant digits) otherwise
/// (`3.14159265358979323846`). Only numbers beyond both are rounded: more than 38 significant
/// digits with a fraction, or magnitudes beyond `Decimal`'s range.
///
/// Values are normalised when they are made, so equal numbers are equal however they were
/// written: `JSONNumber(30)`, `JSONNumber(30.0)` and a decoded `30.0` are the same value.
///
/// ```swift
/// let id: JSONNumber = 1234567890123456789
/// id.int64Value      // 1234567890123456789
/// let price: JSONNumber = 9.99
/// price.doubleValue  // 9.99
/// ```
public struct JSONNumber: Sendable, Hashable, CustomStringConvertible {
    private enum Storage: Sendable, Hashable {
        /// A whole number in `Int64`'s range.
        case int(Int64)
        /// A whole number above `Int64.max` (never one that fits `Int64`).
        case uint(UInt64)
        /// A number a `Double` holds exactly as written (never a whole number that fits the
        /// integer cases).
        case double(Double)
        /// A number only `Decimal` holds as written.
        case decimal(Decimal)
    }

    private let storage: Storage

    /// A whole number.
    public init(_ value: Int64) { storage = .int(value) }

    /// A whole number.
    public init(_ value: Int) { storage = .int(Int64(value)) }

    /// A whole number (above `Int64.max` it is kept as unsigned).
    public init(_ value: UInt64) {
        if let int = Int64(exactly: value) {
            storage = .int(int)
        } else {
            storage = .uint(value)
        }
    }

    /// A floating-point number; a whole number in the 64-bit integer range is kept as an integer.
    ///
    /// JSON has no infinities and no NaN: encoding such a number throws.
    public init(_ value: Double) {
        if let int = Int64(exactly: value) {
            storage = .int(int)
        } else if let uint = UInt64(exactly: value) {
            storage = .uint(uint)
        } else {
            storage = .double(value)
        }
    }

    /// A decimal number, kept exactly (as an integer or a `Double` when those hold it exactly).
    public init(_ value: Decimal) {
        let text = value.description
        if let int = Int64(text) {
            storage = .int(int)
        } else if let uint = UInt64(text) {
            storage = .uint(uint)
        } else if let double = Double(text), double.isFinite, Decimal(string: double.description) == value {
            storage = .double(double)
        } else {
            storage = .decimal(value)
        }
    }

    /// The number as an `Int64`, if it is a whole number in its range.
    public var int64Value: Int64? {
        switch storage {
        case .int(let value): value
        case .uint, .double, .decimal: nil
        }
    }

    /// The number as an `Int`, if it is a whole number in its range.
    public var intValue: Int? { int64Value.flatMap { Int(exactly: $0) } }

    /// The number as a `UInt64`, if it is a whole number in its range.
    public var uint64Value: UInt64? {
        switch storage {
        case .int(let value): UInt64(exactly: value)
        case .uint(let value): value
        case .double, .decimal: nil
        }
    }

    /// The number as the nearest `Double` (integers beyond 2^53 and long decimals are rounded).
    public var doubleValue: Double {
        switch storage {
        case .int(let value): Double(value)
        case .uint(let value): Double(value)
        case .double(let value): value
        case .decimal(let value): Double(value.description) ?? (value as NSDecimalNumber).doubleValue
        }
    }

    /// The number when it is a `Double` that reads back as the number written (not a whole
    /// number, not one only `Decimal` holds).
    package var exactDouble: Double? {
        if case .double(let value) = storage { return value }
        return nil
    }

    /// The number as a `Decimal` (exact for integers and for numbers that came as decimals).
    public var decimalValue: Decimal {
        switch storage {
        case .int(let value): Decimal(value)
        case .uint(let value): Decimal(value)
        case .double(let value): Decimal(string: value.description) ?? Decimal(value)
        case .decimal(let value): value
        }
    }

    /// Whether the number is a whole number (it has no fraction).
    public var isInteger: Bool {
        switch storage {
        case .int, .uint: true
        case .double(let value): value.rounded(.towardZero) == value
        case .decimal(let value): !value.description.contains(".")
        }
    }

    /// Whether JSON can write the number (not an infinity, not NaN).
    var isFinite: Bool {
        switch storage {
        case .int, .uint: true
        case .double(let value): value.isFinite
        case .decimal(let value): value.isFinite
        }
    }

    /// The number as JSON writes it (`Double`s in their shortest form that reads back the same).
    public var description: String {
        switch storage {
        case .int(let value): value.description
        case .uint(let value): value.description
        case .double(let value): value.description
        case .decimal(let value): value.description
        }
    }
}

extension JSONNumber: Codable {
    /// Decodes a number exactly: as an integer when it is one, as a decimal otherwise.
    ///
    /// With `JSONDecoder` no digit is lost for integers in the 64-bit ranges and for decimals up
    /// to 38 significant digits.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        // The common case first: every failed attempt throws, which costs.
        if let int = try? container.decode(Int64.self) {
            self.init(int)
        } else if let decimal = try? container.decode(Decimal.self) {
            self.init(decimal)
        } else {
            // Decoders that do not read decimals from number text.
            self.init(try container.decode(Double.self))
        }
    }

    /// Encodes the number with all its digits.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch storage {
        case .int(let value): try container.encode(value)
        case .uint(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .decimal(let value): try container.encode(value)
        }
    }
}

extension JSONNumber: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral {
    /// An integer literal.
    public init(integerLiteral value: Int64) { self.init(value) }
    /// A floating-point literal (as a `Double`: write more than 17 significant digits with
    /// `JSONNumber(Decimal(string: "…")!)`).
    public init(floatLiteral value: Double) { self.init(value) }
}
