import Foundation

/// A declarative condition over a saga's data, deciding whether a step runs.
///
/// A step with a condition runs only when the condition holds against the saga's data at the
/// moment the saga reaches it: the start payload merged with every patch of the steps completed
/// so far (``SagaState/payload``). Otherwise the step is **skipped**: recorded in the history as
/// ``StepOutcome/skipped`` with the condition's text, never run and never compensated.
///
/// ```swift
/// SagaBuilder("order")
///     .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
///     .step("fraud-review", action: "fraud.review", when: .greaterThan("amount", 1000))
///     .step("gift-wrap", action: "shop.wrap", when: .all([.isTrue("gift"), .oneOf("country", ["FR", "DE"])]))
/// ```
///
/// Conditions are data: they serialise with the definition (``SagaDefinitionDocument``), so
/// they change its ``SagaDefinition/contentHash``, and every process decides the same way.
///
/// **Paths** are dot paths into the JSON data: `amount`, `customer.address.country`; a segment
/// of digits indexes an array (`items.0.sku`). A key that contains a dot cannot be addressed.
///
/// **Evaluation is total and never throws**: a condition is either true or false.
/// - A path that does not resolve (a key absent, an index out of range, a value that is not an
///   object or array on the way) or that resolves to `null` is *missing*: ``missing(_:)`` is
///   true, ``exists(_:)`` false, and every other comparison on it is false.
/// - A value of another JSON type than the comparison needs is no match, never an error:
///   ``greaterThan(_:_:)`` and the other orderings are false unless the value is a number,
///   ``isTrue(_:)``/``isFalse(_:)`` are false unless it is a boolean (no truthiness), and
///   ``equals(_:_:)`` is false for `"1000"` against `1000`.
/// - ``notEquals(_:_:)`` is true when the value is present and differs (so a missing field is
///   neither equal nor not equal); ``not(_:)`` negates whatever its condition evaluates to, so
///   `.not(.equals("country", "FR"))` is true for a saga without a country.
/// - Numbers compare by value: `1000`, `1000.0` and `1e3` are equal.
public indirect enum SagaCondition: Sendable, Hashable {
    /// The value at `path` is present and equal to `value`.
    case equals(String, JSONValue)
    /// The value at `path` is present and not equal to `value`.
    case notEquals(String, JSONValue)
    /// The value at `path` is a number greater than `value`.
    case greaterThan(String, JSONNumber)
    /// The value at `path` is a number greater than or equal to `value`.
    case greaterThanOrEqual(String, JSONNumber)
    /// The value at `path` is a number less than `value`.
    case lessThan(String, JSONNumber)
    /// The value at `path` is a number less than or equal to `value`.
    case lessThanOrEqual(String, JSONNumber)
    /// The value at `path` is present and equal to one of `values`.
    case oneOf(String, [JSONValue])
    /// The path resolves to a value other than `null`.
    case exists(String)
    /// The path does not resolve, or resolves to `null`.
    case missing(String)
    /// The value at `path` is the boolean `true`.
    case isTrue(String)
    /// The value at `path` is the boolean `false`.
    case isFalse(String)
    /// Every condition holds (at least one is required).
    case all([SagaCondition])
    /// At least one condition holds (at least one is required).
    case any([SagaCondition])
    /// The condition does not hold.
    case not(SagaCondition)
}

// MARK: - Evaluation

extension SagaCondition {
    /// Whether the condition holds for `data` (a saga's ``SagaState/payload``). Never throws:
    /// missing fields and values of another type make a comparison false (see the type's
    /// documentation).
    public func evaluate(_ data: JSONObject) -> Bool {
        switch self {
        case .equals(let path, let value):
            guard let found = Self.resolve(path, in: data) else { return false }
            return Self.same(found, value)
        case .notEquals(let path, let value):
            guard let found = Self.resolve(path, in: data) else { return false }
            return !Self.same(found, value)
        case .greaterThan(let path, let bound):
            return Self.number(at: path, in: data).map { $0 > bound.decimalValue } ?? false
        case .greaterThanOrEqual(let path, let bound):
            return Self.number(at: path, in: data).map { $0 >= bound.decimalValue } ?? false
        case .lessThan(let path, let bound):
            return Self.number(at: path, in: data).map { $0 < bound.decimalValue } ?? false
        case .lessThanOrEqual(let path, let bound):
            return Self.number(at: path, in: data).map { $0 <= bound.decimalValue } ?? false
        case .oneOf(let path, let values):
            guard let found = Self.resolve(path, in: data) else { return false }
            return values.contains { Self.same(found, $0) }
        case .exists(let path):
            return Self.resolve(path, in: data) != nil
        case .missing(let path):
            return Self.resolve(path, in: data) == nil
        case .isTrue(let path):
            return Self.resolve(path, in: data)?.boolValue == true
        case .isFalse(let path):
            return Self.resolve(path, in: data)?.boolValue == false
        case .all(let conditions):
            return conditions.allSatisfy { $0.evaluate(data) }
        case .any(let conditions):
            return conditions.contains { $0.evaluate(data) }
        case .not(let condition):
            return !condition.evaluate(data)
        }
    }

    /// The value at a dot path, or `nil` when the path does not resolve or the value is `null`.
    public static func resolve(_ path: String, in data: JSONObject) -> JSONValue? {
        var current = JSONValue.object(data)
        for segment in path.split(separator: ".", omittingEmptySubsequences: false) {
            switch current {
            case .object(let object):
                guard let next = object[String(segment)] else { return nil }
                current = next
            case .array(let array):
                guard let index = Int(segment), array.indices.contains(index) else { return nil }
                current = array[index]
            case .null, .bool, .number, .string:
                return nil
            }
        }
        if case .null = current { return nil }
        return current
    }

    private static func number(at path: String, in data: JSONObject) -> Decimal? {
        resolve(path, in: data)?.numberValue?.decimalValue
    }

    /// JSON equality, with numbers compared by value and objects and arrays member by member.
    private static func same(_ lhs: JSONValue, _ rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.number(let a), .number(let b)): return a == b || a.decimalValue == b.decimalValue
        case (.array(let a), .array(let b)): return a.count == b.count && zip(a, b).allSatisfy { same($0, $1) }
        case (.object(let a), .object(let b)):
            return a.count == b.count && a.allSatisfy { key, value in b[key].map { same(value, $0) } ?? false }
        default: return lhs == rhs
        }
    }
}

// MARK: - Validation

extension SagaCondition {
    /// The paths the condition reads, in order of appearance.
    public var paths: [String] {
        switch self {
        case .equals(let path, _), .notEquals(let path, _), .greaterThan(let path, _), .greaterThanOrEqual(let path, _),
            .lessThan(let path, _), .lessThanOrEqual(let path, _), .oneOf(let path, _), .exists(let path), .missing(let path),
            .isTrue(let path), .isFalse(let path):
            return [path]
        case .all(let conditions), .any(let conditions): return conditions.flatMap(\.paths)
        case .not(let condition): return condition.paths
        }
    }

    /// What is wrong with the condition, one message per problem (empty when it is valid): a
    /// malformed path, an empty `all`/`any`/`oneOf`, a comparison with `null`, a number that JSON
    /// cannot write.
    public var problems: [String] {
        var problems: [String] = []
        func checkPath(_ path: String) {
            if path.isEmpty {
                problems.append("a field path is empty")
            } else if path.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) {
                problems.append("field path '\(path)' has an empty segment (write dot paths such as 'customer.address.country')")
            } else if path.contains(where: \.isWhitespace) {
                problems.append("field path '\(path)' contains whitespace")
            }
        }
        func checkNumber(_ number: JSONNumber, _ path: String) {
            if !number.doubleValue.isFinite {
                problems.append("'\(path)' is compared with a number JSON cannot write (\(number))")
            }
        }
        func checkValue(_ value: JSONValue, _ path: String, _ text: String) {
            if value == .null {
                problems.append("\(text) compares '\(path)' with null: a null field counts as missing, use .missing or .exists")
            }
            if case .number(let number) = value { checkNumber(number, path) }
        }
        func visit(_ condition: SagaCondition) {
            switch condition {
            case .equals(let path, let value):
                checkPath(path)
                checkValue(value, path, "equals")
            case .notEquals(let path, let value):
                checkPath(path)
                checkValue(value, path, "notEquals")
            case .greaterThan(let path, let bound), .greaterThanOrEqual(let path, let bound), .lessThan(let path, let bound),
                .lessThanOrEqual(let path, let bound):
                checkPath(path)
                checkNumber(bound, path)
            case .oneOf(let path, let values):
                checkPath(path)
                if values.isEmpty { problems.append("oneOf on '\(path)' has an empty list (it could never hold)") }
                for value in values { checkValue(value, path, "oneOf") }
            case .exists(let path), .missing(let path), .isTrue(let path), .isFalse(let path):
                checkPath(path)
            case .all(let conditions):
                if conditions.isEmpty { problems.append("an all has no conditions (give it at least one)") }
                conditions.forEach(visit)
            case .any(let conditions):
                if conditions.isEmpty { problems.append("an any has no conditions (give it at least one)") }
                conditions.forEach(visit)
            case .not(let condition):
                visit(condition)
            }
        }
        visit(self)
        return problems
    }
}

// MARK: - Text

extension SagaCondition: CustomStringConvertible {
    /// The condition as text, for the CLI, the console, the history and errors:
    /// `amount > 1000 and (vip is true or country in ["FR", "DE"])`.
    public var description: String {
        switch self {
        case .equals(let path, let value): "\(path) == \(Self.text(value))"
        case .notEquals(let path, let value): "\(path) != \(Self.text(value))"
        case .greaterThan(let path, let bound): "\(path) > \(bound)"
        case .greaterThanOrEqual(let path, let bound): "\(path) >= \(bound)"
        case .lessThan(let path, let bound): "\(path) < \(bound)"
        case .lessThanOrEqual(let path, let bound): "\(path) <= \(bound)"
        case .oneOf(let path, let values): "\(path) in [\(values.map(Self.text).joined(separator: ", "))]"
        case .exists(let path): "\(path) exists"
        case .missing(let path): "\(path) is missing"
        case .isTrue(let path): "\(path) is true"
        case .isFalse(let path): "\(path) is false"
        case .all(let conditions): conditions.isEmpty ? "all()" : conditions.map(\.operand).joined(separator: " and ")
        case .any(let conditions): conditions.isEmpty ? "any()" : conditions.map(\.operand).joined(separator: " or ")
        case .not(let condition): "not (\(condition.description))"
        }
    }

    /// The text of a condition inside `and` or `or`: an `and` or `or` of several in parentheses.
    private var operand: String {
        switch self {
        case .all(let conditions) where conditions.count > 1: "(\(description))"
        case .any(let conditions) where conditions.count > 1: "(\(description))"
        default: description
        }
    }

    /// A JSON value as compact JSON with sorted keys (`"FR"`, `1000`, `true`).
    private static func text(_ value: JSONValue) -> String {
        guard let data = try? JSONCoding.encode(value) else { return "\(value)" }
        return String(decoding: data, as: UTF8.self)
    }
}

// MARK: - Coding

extension SagaCondition: Codable {
    private enum CodingKeys: String, CodingKey {
        case op, path, value, values, conditions, condition
    }

    /// The operator names of the JSON form (`{"op": "greaterThan", "path": "amount", "value": 1000}`).
    private enum Operator: String, Codable {
        case equals, notEquals, greaterThan, greaterThanOrEqual, lessThan, lessThanOrEqual, oneOf, exists, missing, isTrue, isFalse
        case all, any, not
    }

    /// Decodes a condition from its JSON form: an object with `op` and the operator's fields
    /// (`path`; `value` for comparisons; `values` for `oneOf`; `conditions` for `all`/`any`;
    /// `condition` for `not`).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let op = try container.decode(Operator.self, forKey: .op)
        func path() throws -> String { try container.decode(String.self, forKey: .path) }
        func number() throws -> JSONNumber { try container.decode(JSONNumber.self, forKey: .value) }
        switch op {
        case .equals: self = .equals(try path(), try container.decode(JSONValue.self, forKey: .value))
        case .notEquals: self = .notEquals(try path(), try container.decode(JSONValue.self, forKey: .value))
        case .greaterThan: self = .greaterThan(try path(), try number())
        case .greaterThanOrEqual: self = .greaterThanOrEqual(try path(), try number())
        case .lessThan: self = .lessThan(try path(), try number())
        case .lessThanOrEqual: self = .lessThanOrEqual(try path(), try number())
        case .oneOf: self = .oneOf(try path(), try container.decode([JSONValue].self, forKey: .values))
        case .exists: self = .exists(try path())
        case .missing: self = .missing(try path())
        case .isTrue: self = .isTrue(try path())
        case .isFalse: self = .isFalse(try path())
        case .all: self = .all(try container.decode([SagaCondition].self, forKey: .conditions))
        case .any: self = .any(try container.decode([SagaCondition].self, forKey: .conditions))
        case .not: self = .not(try container.decode(SagaCondition.self, forKey: .condition))
        }
    }

    /// Encodes the condition as an object with `op` and the operator's fields.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .equals(let path, let value):
            try container.encode(Operator.equals, forKey: .op)
            try container.encode(path, forKey: .path)
            try container.encode(value, forKey: .value)
        case .notEquals(let path, let value):
            try container.encode(Operator.notEquals, forKey: .op)
            try container.encode(path, forKey: .path)
            try container.encode(value, forKey: .value)
        case .greaterThan(let path, let bound):
            try encodeComparison(.greaterThan, path, bound, &container)
        case .greaterThanOrEqual(let path, let bound):
            try encodeComparison(.greaterThanOrEqual, path, bound, &container)
        case .lessThan(let path, let bound):
            try encodeComparison(.lessThan, path, bound, &container)
        case .lessThanOrEqual(let path, let bound):
            try encodeComparison(.lessThanOrEqual, path, bound, &container)
        case .oneOf(let path, let values):
            try container.encode(Operator.oneOf, forKey: .op)
            try container.encode(path, forKey: .path)
            try container.encode(values, forKey: .values)
        case .exists(let path):
            try container.encode(Operator.exists, forKey: .op)
            try container.encode(path, forKey: .path)
        case .missing(let path):
            try container.encode(Operator.missing, forKey: .op)
            try container.encode(path, forKey: .path)
        case .isTrue(let path):
            try container.encode(Operator.isTrue, forKey: .op)
            try container.encode(path, forKey: .path)
        case .isFalse(let path):
            try container.encode(Operator.isFalse, forKey: .op)
            try container.encode(path, forKey: .path)
        case .all(let conditions):
            try container.encode(Operator.all, forKey: .op)
            try container.encode(conditions, forKey: .conditions)
        case .any(let conditions):
            try container.encode(Operator.any, forKey: .op)
            try container.encode(conditions, forKey: .conditions)
        case .not(let condition):
            try container.encode(Operator.not, forKey: .op)
            try container.encode(condition, forKey: .condition)
        }
    }

    private func encodeComparison(
        _ op: Operator, _ path: String, _ bound: JSONNumber, _ container: inout KeyedEncodingContainer<CodingKeys>
    ) throws {
        try container.encode(op, forKey: .op)
        try container.encode(path, forKey: .path)
        try container.encode(bound, forKey: .value)
    }
}
