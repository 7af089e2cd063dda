/// Writes JSON text without going through `Codable`: ``JSONValue``s, and the fields of SagaKit's
/// own types (commands, step records) written one by one.
///
/// The text is the text `JSONEncoder` writes with `.sortedKeys` (and, with `escapingSlashes`
/// false, `.withoutEscapingSlashes`): object keys in Unicode code-point order, no whitespace,
/// `"`, `\` and control characters escaped, other characters as UTF-8, numbers in their shortest
/// exact form. So a value reads back equal whichever of the two wrote it. Writers of fields must
/// give the keys of an object in that order themselves (``key(_:)``).
package struct JSONWriter {
    /// The text written so far, as UTF-8.
    package private(set) var bytes: [UInt8] = []
    private let escapesSlashes: Bool
    /// Whether the object being written has no field yet.
    private var atFirstField = true

    /// A writer; `escapingSlashes` writes `/` as `\/`, as `JSONEncoder` does by default.
    package init(escapingSlashes: Bool = true, capacity: Int = 256) {
        escapesSlashes = escapingSlashes
        bytes.reserveCapacity(capacity)
    }

    /// The text written so far.
    package var text: String { String(decoding: bytes, as: UTF8.self) }

    /// Writes a value.
    /// - Throws: ``SagaError`` `invalidPayload` for a number JSON cannot hold (infinity, NaN).
    package mutating func write(_ value: JSONValue) throws {
        switch value {
        case .null: raw("null")
        case .bool(let bool): raw(bool ? "true" : "false")
        case .number(let number): try write(number)
        case .string(let string): write(string)
        case .array(let array):
            bytes.append(UInt8(ascii: "["))
            for (offset, element) in array.enumerated() {
                if offset > 0 { bytes.append(UInt8(ascii: ",")) }
                try write(element)
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let object):
            try write(object)
        }
    }

    /// Writes an object, its keys sorted.
    package mutating func write(_ object: JSONObject) throws {
        bytes.append(UInt8(ascii: "{"))
        var first = true
        for key in Self.sortedKeys(object) {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            write(key)
            bytes.append(UInt8(ascii: ":"))
            try write(object[key]!)
        }
        bytes.append(UInt8(ascii: "}"))
        atFirstField = false
    }

    /// Writes an object of strings, its keys sorted.
    package mutating func write(_ object: [String: String]) {
        bytes.append(UInt8(ascii: "{"))
        var first = true
        for key in Self.sortedKeys(object) {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            write(key)
            bytes.append(UInt8(ascii: ":"))
            write(object[key]!)
        }
        bytes.append(UInt8(ascii: "}"))
        atFirstField = false
    }

    /// Writes a number.
    /// - Throws: ``SagaError`` `invalidPayload` for infinity or NaN.
    package mutating func write(_ number: JSONNumber) throws {
        guard number.isFinite else {
            throw SagaError(.invalidPayload, "JSON has no number \(number)", recoverySuggestion: "send a finite number, or a string")
        }
        bytes.append(contentsOf: number.description.utf8)
    }

    /// Writes an integer.
    package mutating func write(_ integer: Int) {
        write(Int64(integer))
    }

    /// Writes an integer: its digits straight into the bytes (no string in between; a command
    /// and its state copy hold a dozen integers: times, steps, attempts, versions).
    package mutating func write(_ integer: Int64) {
        if integer < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = integer.magnitude
        let start = bytes.count
        repeat {
            bytes.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10))
            magnitude /= 10
        } while magnitude > 0
        bytes[start...].reverse()
    }

    /// Writes `true` or `false`.
    package mutating func write(_ bool: Bool) { raw(bool ? "true" : "false") }

    /// Writes a string, quoted and escaped. Runs of bytes that need no escape are copied at once
    /// (a command's state copy is a kilobyte of JSON inside a header).
    package mutating func write(_ string: String) {
        bytes.append(UInt8(ascii: "\""))
        let utf8 = string.utf8
        var run = utf8.startIndex
        var index = run
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte >= 0x20, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\"), byte != UInt8(ascii: "/") || !escapesSlashes {
                utf8.formIndex(after: &index)
                continue
            }
            if run != index { bytes.append(contentsOf: utf8[run..<index]) }
            writeEscaped(byte)
            utf8.formIndex(after: &index)
            run = index
        }
        if run != utf8.endIndex { bytes.append(contentsOf: utf8[run...]) }
        bytes.append(UInt8(ascii: "\""))
    }

    /// Writes the escape of one byte that needs one.
    private mutating func writeEscaped(_ byte: UInt8) {
        switch byte {
        case UInt8(ascii: "\""): raw("\\\"")
        case UInt8(ascii: "\\"): raw("\\\\")
        case UInt8(ascii: "/"): raw("\\/")
        case 0x08: raw("\\b")
        case 0x0C: raw("\\f")
        case 0x0A: raw("\\n")
        case 0x0D: raw("\\r")
        case 0x09: raw("\\t")
        default:
            raw("\\u00")
            bytes.append(Self.hexDigits[Int(byte >> 4)])
            bytes.append(Self.hexDigits[Int(byte & 0x0F)])
        }
    }

    // MARK: Objects written field by field

    /// Starts an object whose fields follow as ``key(_:)`` and a value each.
    package mutating func beginObject() {
        bytes.append(UInt8(ascii: "{"))
        atFirstField = true
    }

    /// Writes the key of the next field (with the comma before it, if needed). Keys must come in
    /// the order ``write(_:)-(JSONObject)`` sorts them: by Unicode code point.
    package mutating func key(_ name: StaticString) {
        if !atFirstField { bytes.append(UInt8(ascii: ",")) }
        atFirstField = false
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        raw("\":")
    }

    /// Writes the text of one complete JSON value as it is (for a value written and sealed
    /// before, whose bytes must not change). The caller vouches that it is JSON.
    package mutating func write(json value: some Collection<UInt8>) {
        bytes.append(contentsOf: value)
    }

    /// Ends the object started by ``beginObject()``.
    package mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        atFirstField = false
    }

    /// Starts an array; separate its elements with ``nextElement()``.
    package mutating func beginArray() { bytes.append(UInt8(ascii: "[")) }

    /// Writes the comma between two array elements.
    package mutating func nextElement() { bytes.append(UInt8(ascii: ",")) }

    /// Ends an array.
    package mutating func endArray() { bytes.append(UInt8(ascii: "]")) }

    // MARK: Helpers

    private mutating func raw(_ text: StaticString) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Keys in Unicode code-point order (the order of their UTF-8 bytes), as `JSONEncoder`'s
    /// `.sortedKeys` writes them.
    private static func sortedKeys<Value>(_ object: [String: Value]) -> [String] {
        object.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }
}

extension JSONValue {
    /// Parses JSON text (any value, not only an object).
    /// - Throws: ``JSONSyntaxError`` saying what is wrong and at which byte.
    package init(parsing bytes: some Collection<UInt8>) throws {
        self = try JSONReader.value(from: bytes)
    }

    /// The value as JSON text (UTF-8), keys sorted.
    /// - Throws: ``SagaError`` `invalidPayload` for a number JSON cannot hold (infinity, NaN).
    package func jsonBytes(escapingSlashes: Bool = true) throws -> [UInt8] {
        var writer = JSONWriter(escapingSlashes: escapingSlashes)
        try writer.write(self)
        return writer.bytes
    }
}
