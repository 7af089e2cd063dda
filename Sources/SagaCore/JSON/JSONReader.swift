import Foundation

/// Why bytes are not JSON text: what was wrong, and at which byte.
package struct JSONSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What was wrong.
    package var problem: String
    /// The byte offset where it was found (0-based).
    package var offset: Int

    /// An error.
    package init(problem: String, offset: Int) {
        self.problem = problem
        self.offset = offset
    }

    package var description: String { "\(problem) at byte \(offset)" }
}

/// Parses JSON text (RFC 8259) straight into ``JSONValue``.
///
/// Saga states, payloads and commands are read on every step; going through `Codable` and
/// `JSONDecoder` for them took about a fifth of a participant's CPU in profiles. This reader
/// builds the values directly. It accepts exactly what RFC 8259 allows: no comments, no leading
/// zeros, UTF-8 only, and no trailing commas (which `JSONDecoder` lets pass). It reads numbers as
/// ``JSONNumber`` reads them from `JSONDecoder` (integers exactly, decimals as written), keeps
/// the first of repeated keys (as `JSONDecoder` does), and stops at a nesting depth of
/// ``maximumDepth`` instead of exhausting the stack.
package struct JSONReader {
    /// Arrays and objects nested deeper than this are refused.
    package static let maximumDepth = 512

    private let bytes: UnsafeRawBufferPointer
    private var index = 0
    private var depth = 0
    /// Reused between strings with escapes.
    private var scratch: [UInt8] = []
    /// The key of the top-level object's member whose text ``locatedMember`` records.
    private var memberToLocate: String?
    /// Where the value of ``memberToLocate`` lies in the input (its first occurrence).
    private var locatedMember: Range<Int>?

    private init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Parses one JSON value that fills `bytes` (whitespace around it allowed).
    package static func value(from bytes: UnsafeRawBufferPointer) throws -> JSONValue {
        try parse(bytes, locatingMember: nil).value
    }

    /// Parses one JSON value that fills `bytes`, and says where the value of the top-level object's
    /// member `key` lies in `bytes` (offsets from the first byte; `nil` when the value is not an
    /// object or has no such member). For a member whose exact text matters, such as a sealed copy.
    package static func value(
        from bytes: UnsafeRawBufferPointer, locatingMember key: String
    ) throws -> (value: JSONValue, member: Range<Int>?) {
        try parse(bytes, locatingMember: key)
    }

    private static func parse(
        _ bytes: UnsafeRawBufferPointer, locatingMember key: String?
    ) throws -> (value: JSONValue, member: Range<Int>?) {
        var reader = JSONReader(bytes)
        reader.memberToLocate = key
        reader.skipWhitespace()
        let value = try reader.readValue()
        reader.skipWhitespace()
        if reader.index < bytes.count { throw reader.error("unexpected \(reader.describeCurrent()) after the JSON value") }
        return (value, reader.locatedMember)
    }

    /// Parses one JSON value from bytes.
    package static func value(from bytes: some Collection<UInt8>) throws -> JSONValue {
        if let result = bytes.withContiguousStorageIfAvailable({ buffer in Result { try value(from: UnsafeRawBufferPointer(buffer)) } }) {
            return try result.get()
        }
        return try Array(bytes).withUnsafeBytes { buffer in try value(from: buffer) }
    }

    /// Parses one JSON value from text.
    package static func value(from text: String) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { buffer in try value(from: UnsafeRawBufferPointer(buffer)) }
    }

    // MARK: Values

    private mutating func readValue() throws -> JSONValue {
        guard index < bytes.count else { throw error("unexpected end of the text, a value was expected") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return .object(try readObject())
        case UInt8(ascii: "["): return .array(try readArray())
        case UInt8(ascii: "\""): return .string(try readString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try readNumber())
        default:
            throw error("unexpected \(describeCurrent()), a value was expected")
        }
    }

    private mutating func readObject() throws -> JSONObject {
        try enterContainer()
        index += 1  // {
        var object: JSONObject = [:]
        skipWhitespace()
        if peek == UInt8(ascii: "}") {
            index += 1
            depth -= 1
            return object
        }
        while true {
            skipWhitespace()
            guard peek == UInt8(ascii: "\"") else { throw error("unexpected \(describeCurrent()), an object key was expected") }
            let key = try readString()
            skipWhitespace()
            guard peek == UInt8(ascii: ":") else { throw error("unexpected \(describeCurrent()), ':' was expected") }
            index += 1
            skipWhitespace()
            // A repeated key keeps its first value, as JSONDecoder does.
            let start = index
            let value = try readValue()
            if object[key] == nil {
                object[key] = value
                if depth == 1, let memberToLocate, key == memberToLocate { locatedMember = start..<index }
            }
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","):
                index += 1
            case UInt8(ascii: "}"):
                index += 1
                depth -= 1
                return object
            default:
                throw error("unexpected \(describeCurrent()), ',' or '}' was expected")
            }
        }
    }

    private mutating func readArray() throws -> [JSONValue] {
        try enterContainer()
        index += 1  // [
        var array: [JSONValue] = []
        skipWhitespace()
        if peek == UInt8(ascii: "]") {
            index += 1
            depth -= 1
            return array
        }
        while true {
            skipWhitespace()
            array.append(try readValue())
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","):
                index += 1
            case UInt8(ascii: "]"):
                index += 1
                depth -= 1
                return array
            default:
                throw error("unexpected \(describeCurrent()), ',' or ']' was expected")
            }
        }
    }

    private mutating func enterContainer() throws {
        depth += 1
        if depth > Self.maximumDepth { throw error("arrays and objects are nested deeper than \(Self.maximumDepth) levels") }
    }

    // MARK: Strings

    private mutating func readString() throws -> String {
        let start = index
        index += 1  // "
        // The common case: no escape, so the string is a slice of the input.
        var end = index
        while end < bytes.count {
            let byte = bytes[end]
            if byte == UInt8(ascii: "\"") {
                let text = try makeString(bytes[index..<end], startingAt: index)
                index = end + 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 {
                index = end
                throw error("unescaped control character \(hex(byte)) in a string")
            }
            end += 1
        }
        guard end < bytes.count else {
            index = start
            throw error("unterminated string")
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: bytes[index..<end])
        index = end
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return try scratch.withUnsafeBytes { buffer in
                    try makeString(buffer[...], startingAt: start + 1)
                }
            case UInt8(ascii: "\\"):
                try readEscape()
            case ..<0x20:
                throw error("unescaped control character \(hex(byte)) in a string")
            default:
                scratch.append(byte)
                index += 1
            }
        }
        index = start
        throw error("unterminated string")
    }

    private func makeString(_ utf8: Slice<UnsafeRawBufferPointer>, startingAt offset: Int) throws -> String {
        // `String(decoding:as:)` is inlined and specialised for this slice type; `String(validating:)`
        // was not, and looked up generic metadata on every call (a quarter of a participant's JSON
        // reading). Decoding repairs invalid UTF-8 with U+FFFD, so the result has the input's
        // bytes exactly when the input was valid (and ASCII always is).
        let text = String(decoding: utf8, as: UTF8.self)
        guard utf8.allSatisfy({ $0 < 0x80 }) || text.utf8.elementsEqual(utf8) else {
            throw JSONSyntaxError(problem: "a string is not valid UTF-8", offset: offset)
        }
        return text
    }

    private mutating func readEscape() throws {
        guard index + 1 < bytes.count else { throw error("unterminated escape sequence") }
        let escaped = bytes[index + 1]
        index += 2
        switch escaped {
        case UInt8(ascii: "\""): scratch.append(UInt8(ascii: "\""))
        case UInt8(ascii: "\\"): scratch.append(UInt8(ascii: "\\"))
        case UInt8(ascii: "/"): scratch.append(UInt8(ascii: "/"))
        case UInt8(ascii: "b"): scratch.append(0x08)
        case UInt8(ascii: "f"): scratch.append(0x0C)
        case UInt8(ascii: "n"): scratch.append(0x0A)
        case UInt8(ascii: "r"): scratch.append(0x0D)
        case UInt8(ascii: "t"): scratch.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = UInt32(try readHex4())
            if (0xD800..<0xDC00).contains(scalar) {
                // A high surrogate must be followed by an escaped low one.
                guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                    throw error("a \\u escape of a high surrogate is not followed by its low surrogate")
                }
                index += 2
                let low = UInt32(try readHex4())
                guard (0xDC00..<0xE000).contains(low) else {
                    throw error("a \\u escape of a high surrogate is not followed by its low surrogate")
                }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if (0xDC00..<0xE000).contains(scalar) {
                throw error("a \\u escape of a low surrogate without its high surrogate")
            }
            // Every value left is a Unicode scalar.
            let unicode = Unicode.Scalar(scalar) ?? "\u{FFFD}"
            scratch.append(contentsOf: UTF8.encode(unicode)!)
        default:
            index -= 2
            throw error("invalid escape sequence '\\\(String(decoding: [escaped], as: UTF8.self))'")
        }
    }

    private mutating func readHex4() throws -> UInt16 {
        guard index + 4 <= bytes.count else { throw error("a \\u escape needs four hexadecimal digits") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw error("a \\u escape needs four hexadecimal digits")
            }
            value = value << 4 | UInt16(digit)
            index += 1
        }
        return value
    }

    // MARK: Numbers

    private mutating func readNumber() throws -> JSONNumber {
        let start = index
        let negative = peek == UInt8(ascii: "-")
        if negative { index += 1 }
        guard let first = peek, isDigit(first) else { throw error("a digit was expected in a number") }
        if first == UInt8(ascii: "0") {
            index += 1
            if let next = peek, isDigit(next) { throw error("a number has a leading zero") }
        } else {
            skipDigits()
        }
        var isInteger = true
        if peek == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let next = peek, isDigit(next) else { throw error("a digit was expected after the decimal point") }
            skipDigits()
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { index += 1 }
            guard let next = peek, isDigit(next) else { throw error("a digit was expected in the exponent") }
            skipDigits()
        }
        let text = bytes[start..<index]
        if isInteger, let integer = Self.integer(text, negative: negative) { return integer }
        let string = String(decoding: text, as: UTF8.self)
        // Beyond the 64-bit integers, or with a fraction or an exponent: as JSONNumber reads such
        // a number from JSONDecoder (a Decimal, kept as a Double when that is exact).
        if let decimal = Decimal(string: string), decimal.isFinite {
            return JSONNumber(decimal)
        }
        if let double = Double(string), double.isFinite { return JSONNumber(double) }
        index = start
        throw error("the number \(string) is out of range")
    }

    /// An integer's digits as `Int64` (or `UInt64` above its range), or nil beyond both.
    private static func integer(_ text: Slice<UnsafeRawBufferPointer>, negative: Bool) -> JSONNumber? {
        var magnitude: UInt64 = 0
        for byte in text where byte != UInt8(ascii: "-") {
            let (times10, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            magnitude = sum
        }
        if negative {
            if magnitude <= UInt64(Int64.max) { return JSONNumber(-Int64(magnitude)) }
            if magnitude == UInt64(Int64.max) + 1 { return JSONNumber(Int64.min) }
            return nil
        }
        return JSONNumber(magnitude)
    }

    private mutating func skipDigits() {
        while let byte = peek, isDigit(byte) { index += 1 }
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    // MARK: Helpers

    private var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("unexpected \(describeCurrent()), a value was expected") }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] {
            throw error("unexpected \(describeCurrent()), a value was expected")
        }
        index += count
    }

    private func describeCurrent() -> String {
        guard let byte = peek else { return "end of the text" }
        if byte >= 0x20 && byte < 0x7F { return "'\(String(decoding: [byte], as: UTF8.self))'" }
        return "byte \(hex(byte))"
    }

    private func hex(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16, uppercase: true)
        return "0x" + (digits.count == 1 ? "0" + digits : digits)
    }

    private func error(_ problem: String) -> JSONSyntaxError { JSONSyntaxError(problem: problem, offset: index) }
}
