import Foundation
import SagaCore
import Testing

/// `JSONReader` and `JSONWriter` against Foundation's `JSONEncoder` and `JSONDecoder`: the
/// same text, the same values, the same refusals.
@Suite struct JSONTextTests {
    static let controlCharacters = String(String.UnicodeScalarView((0..<0x20).map { Unicode.Scalar(UInt8($0)) }))

    /// Values whose text must be byte for byte what JSONEncoder writes.
    static let values: [JSONValue] = [
        .null, true, false, 0, -1, 42, .number(Int64.max), .number(Int64.min), .number(JSONNumber(UInt64.max)),
        0.1, -2.5, 1e-7, 1e20, 123_456_789.125, .number(Decimal(string: "3.14159265358979323846")!),
        "", "plain", "a/b", "quote \" backslash \\", .string(controlCharacters), "\"quoted at both ends\"",
        "runs\"between\\escapes/and\ntext\u{1}\u{1F}é\"", "/", "\\", "\u{7F} é 漢字 😀 \u{2028}",
        [], [1, "two", [3], ["four": 4]], [:],
        [
            "b": 1, "B": 2, "a10": 3, "a9": 4, "é": 5, "e": 6, "_x": 7, "Z": 8, "a": 9, "aa": 10, "😀": 11, "\u{2028}": 12,
            "nested": ["z": [true, false, .null], "a": ["k": "v/w"]],
        ],
    ]

    @Test(arguments: [true, false])
    func theWriterWritesWhatJSONEncoderWrites(escapingSlashes: Bool) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = escapingSlashes ? [.sortedKeys] : [.sortedKeys, .withoutEscapingSlashes]
        for value in Self.values {
            let expected = String(decoding: try encoder.encode(value), as: UTF8.self)
            let written = String(decoding: try value.jsonBytes(escapingSlashes: escapingSlashes), as: UTF8.self)
            #expect(written == expected, "\(value)")
        }
    }

    @Test func theReaderReadsWhatJSONDecoderReads() throws {
        let encoder = JSONEncoder()
        let decoder = JSONDecoder()
        for value in Self.values {
            let text = try encoder.encode(value)
            #expect(try JSONValue(parsing: text) == value)
            #expect(try JSONValue(parsing: text) == decoder.decode(JSONValue.self, from: text))
        }
        let written: [String] = [
            " { \"a\" : [ 1 , 2 ] ,\n\t\"b\" : null }\r\n", #""\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\""#, "1E3", "1e+3", "-0", "-0.0", "2.50",
            "12345678901234567890", "-9223372036854775808", "-9223372036854775809", "0.30000000000000004",
            #"{"a":1,"a":2}"#, "1e400",
        ]
        for text in written {
            let ours = Result { try JSONValue(parsing: Array(text.utf8)) }
            let foundations = Result { try decoder.decode(JSONValue.self, from: Data(text.utf8)) }
            switch (ours, foundations) {
            case (.success(let ours), .success(let foundations)): #expect(ours == foundations, "\(text)")
            case (.failure, .failure): break
            default: Issue.record("\(text): ours \(ours), JSONDecoder's \(foundations)")
            }
        }
    }

    @Test(arguments: [
        ("", "unexpected end of the text, a value was expected at byte 0"),
        ("{", "unexpected end of the text, an object key was expected at byte 1"),
        ("[1,]", "unexpected ']', a value was expected at byte 3"),
        (#"{"a":1,}"#, "unexpected '}', an object key was expected at byte 7"),
        ("01", "a number has a leading zero at byte 1"),
        ("1.", "a digit was expected after the decimal point at byte 2"),
        (".5", "unexpected '.', a value was expected at byte 0"),
        ("-", "a digit was expected in a number at byte 1"),
        ("+1", "unexpected '+', a value was expected at byte 0"),
        ("1e", "a digit was expected in the exponent at byte 2"),
        ("tru", "unexpected 't', a value was expected at byte 0"),
        ("nul", "unexpected 'n', a value was expected at byte 0"),
        (#""abc"#, "unterminated string at byte 0"),
        (#""\x""#, "invalid escape sequence '\\x' at byte 1"),
        (#""\u12""#, "a \\u escape needs four hexadecimal digits at byte 3"),
        (#""\ud800""#, "a \\u escape of a high surrogate is not followed by its low surrogate at byte 7"),
        (#""\udc00""#, "a \\u escape of a low surrogate without its high surrogate at byte 7"),
        ("\"a\u{01}\"", "unescaped control character 0x01 in a string at byte 2"),
        ("1 2", "unexpected '2' after the JSON value at byte 2"),
        ("{1:2}", "unexpected '1', an object key was expected at byte 1"),
        (#"{"a" 1}"#, "unexpected '1', ':' was expected at byte 5"),
        ("[1 2]", "unexpected '2', ',' or ']' was expected at byte 3"),
        ("NaN", "unexpected 'N', a value was expected at byte 0"),
        ("// no comments", "unexpected '/', a value was expected at byte 0"),
    ])
    func malformedTextIsRefusedSayingWhatAndWhere(text: String, problem: String) throws {
        #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: Array(text.utf8)) }
        do {
            _ = try JSONValue(parsing: Array(text.utf8))
        } catch {
            #expect("\(error)" == problem)
        }
        // JSONDecoder refuses it too, except a trailing comma, which RFC 8259 does not allow and
        // JSONDecoder lets pass.
        if !text.hasSuffix(",}") && !text.hasSuffix(",]") {
            #expect(throws: (any Error).self) { try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) }
        }
    }

    @Test func invalidUTF8AndDeepNestingAreRefused() throws {
        #expect(throws: JSONSyntaxError(problem: "a string is not valid UTF-8", offset: 1)) {
            try JSONValue(parsing: [0x22, 0xFF, 0x22])
        }
        // A lone continuation byte, a truncated sequence, an overlong "/", a surrogate encoded
        // directly; each also after an escape (the reader's second path).
        for invalid: [UInt8] in [[0x80], [0xC3], [0xE2, 0x82], [0xC0, 0xAF], [0xED, 0xA0, 0x80]] {
            #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: [0x22, 0x61] + invalid + [0x22]) }
            #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: [0x22, 0x5C, 0x6E] + invalid + [0x22]) }
        }
        // Valid non-ASCII text, including U+FFFD itself, reads back as written.
        for text in ["é", "naïve café", "\u{1F600} ok", "\u{FFFD}", "日本語"] {
            #expect(try JSONValue(parsing: Array("\"\(text)\"".utf8)) == .string(text))
            #expect(try JSONValue(parsing: Array("\"\\n\(text)\"".utf8)) == .string("\n" + text))
        }
        let deep = String(repeating: "[", count: JSONReader.maximumDepth + 1) + String(repeating: "]", count: JSONReader.maximumDepth + 1)
        #expect(throws: JSONSyntaxError.self) { try JSONValue(parsing: Array(deep.utf8)) }
        let allowed = String(repeating: "[", count: JSONReader.maximumDepth) + String(repeating: "]", count: JSONReader.maximumDepth)
        #expect(try JSONValue(parsing: Array(allowed.utf8)) != .null)
    }

    @Test func integersAreWrittenAsTheirDecimalDigits() {
        let values: [Int64] = [0, 7, -1, 9, 10, -10, 99, 100, 1_796_000_000_123, -1_796_000_000_123, Int64.max, Int64.min, Int64.min + 1]
        for value in values {
            var writer = JSONWriter()
            writer.write(value)
            #expect(writer.text == String(value), "\(value)")
            var small = JSONWriter()
            small.write(Int(value))
            #expect(small.text == String(value))
        }
    }

    @Test func numbersJSONCannotHoldAreRefusedByTheWriter() {
        for number in [Double.infinity, -Double.infinity, Double.nan] {
            #expect(throws: SagaError.self) { try JSONValue.number(number).jsonBytes() }
        }
    }

    @Test func aCommandBodyCarriesItsStateCopyAsSealedText() throws {
        let command = SagaCommand(
            sagaID: "s-1", sagaName: "order", command: "payment.charge", step: 1, stepName: "charge", phase: .action, attempt: 1)
        let state = SagaState(
            id: "s-1", name: "order", status: .running, currentStep: 1, attempt: 1, payload: ["note": "a \"quoted\" é"],
            context: ["trace": "t"], history: [], createdAt: Date(timeIntervalSince1970: 1_796_000_000),
            updatedAt: Date(timeIntervalSince1970: 1_796_000_001), version: 3)
        let copy = try SagaStateCopy.json(state)
        let bytes = command.jsonBytes(stateCopy: (copy, "00ff"))
        // Keys in the sorted order of every other body, so JSONDecoder-written text and this agree.
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix(#"{"attempt":1,"command":"payment.charge","phase":"action","sagaID":"s-1","sagaName":"order","state":{"#))
        #expect(text.hasSuffix(#"},"stateSeal":"00ff","step":1,"stepName":"charge"}"#))
        // Older releases read the command and ignore the copy.
        #expect(try SagaCommand(jsonBytes: bytes) == command)

        let body = try SagaCommandBody(jsonBytes: bytes)
        #expect(body.command == command)
        let carried = try #require(body.stateCopy)
        #expect(carried.json == copy, "the copy's text must be the exact bytes that were sealed")
        #expect(carried.seal == "00ff")
        let read = try SagaStateCopy.state(from: carried.value)
        #expect(read == state)

        // Without a copy the body is the command's usual text; a copy without a seal, or one that
        // is not an object, is no copy (the receiver loads the saga) but the command still reads.
        #expect(command.jsonBytes(stateCopy: nil) == command.jsonBytes)
        #expect(try SagaCommandBody(jsonBytes: command.jsonBytes).stateCopy == nil)
        let unsealed = Array(
            #"{"attempt":1,"command":"c","phase":"action","sagaID":"s","sagaName":"o","state":{},"step":0,"stepName":"a"}"#.utf8)
        #expect(try SagaCommandBody(jsonBytes: unsealed).stateCopy == nil)
        let notAnObject = Array(
            #"{"attempt":1,"command":"c","phase":"action","sagaID":"s","sagaName":"o","state":"{}","stateSeal":"00","step":0,"stepName":"a"}"#
                .utf8)
        #expect(try SagaCommandBody(jsonBytes: notAnObject).stateCopy == nil)
        // A body that is not JSON is refused whole, copy or not.
        #expect(throws: JSONSyntaxError.self) { try SagaCommandBody(jsonBytes: Array(bytes.dropLast())) }
    }

    @Test func theReaderLocatesATopLevelMemberOnly() throws {
        let text = Array(#" {"a":{"state":1},"state" : [1, {"x":"}"}] ,"b":2,"state":3} "#.utf8)
        let (value, member) = try text.withUnsafeBytes { try JSONReader.value(from: $0, locatingMember: "state") }
        let range = try #require(member)
        // The first top-level occurrence (as the parsed object keeps it), not the nested one.
        #expect(String(decoding: text[range], as: UTF8.self) == #"[1, {"x":"}"}]"#)
        guard case .object(let object) = value else {
            Issue.record("not an object")
            return
        }
        #expect(object["b"] == .number(JSONNumber(2)))
        let (_, none) = try Array("[1]".utf8).withUnsafeBytes { try JSONReader.value(from: $0, locatingMember: "state") }
        #expect(none == nil)
    }

    @Test func commandsAndEventsWriteAndReadTheirCodableForm() throws {
        let command = SagaCommand(
            sagaID: "s/1", sagaName: "order", command: "inventory.reserve", step: 2, stepName: "reserve \"stock\"", phase: .compensation,
            attempt: 3)
        #expect(command.jsonBytes == Array(try JSONCoding.encode(command)))
        #expect(try SagaCommand(jsonBytes: JSONCoding.encode(command)) == command)
        #expect(throws: JSONFieldError.missing("sagaName")) { try SagaCommand(jsonBytes: Array(#"{"sagaID":"x"}"#.utf8)) }
        #expect(throws: JSONFieldError.wrongType("step", expected: "integer")) {
            try SagaCommand(
                jsonBytes: Array(
                    #"{"sagaID":"x","sagaName":"o","command":"c","step":"1","stepName":"s","phase":"action","attempt":1}"#.utf8))
        }

        let at = Date(timeIntervalSince1970: 1_796_000_123.456)
        let events = [
            SagaLifecycleEvent(
                kind: .started, sagaID: "s1", sagaName: "order", definitionVersion: 1, status: .running, sagaVersion: 1, at: at),
            SagaLifecycleEvent(
                kind: .operatorAction, sagaID: "s1", sagaName: "order", definitionVersion: 2, status: .compensating, sagaVersion: 7,
                step: 1,
                stepName: "pay", phase: .compensation, attempt: 2, error: "db/down", willRetry: true, action: "retry", actor: "ops",
                reason: "why not", at: at),
        ]
        for event in events {
            #expect(event.jsonBytes == Array(try JSONCoding.encode(event)))
            #expect(try SagaLifecycleEvent(jsonBytes: event.jsonBytes) == event)
            #expect(try JSONCoding.decode(SagaLifecycleEvent.self, from: Data(event.jsonBytes)) == event)
        }
    }

    @Test func eventTimesAreFormattedAndParsedAsTheISO8601StyleDoes() {
        var generator = SystemRandomNumberGenerator()
        let fixed: [Int64] = [0, -1, 999, 1000, -86_400_000, 951_782_400_000, 4_102_444_799_999, -2_208_988_800_000, 253_402_300_799_999]
        let random = (0..<2000).map { _ in Int64.random(in: -2_208_988_800_000...4_102_444_800_000, using: &generator) }
        for milliseconds in fixed + random {
            let date = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
            let text = SagaLifecycleEvent.fastFormat(date)
            #expect(text == SagaLifecycleEvent.format(date), "\(milliseconds)")
            #expect(SagaLifecycleEvent.fastParse(text).map(StoreCoding.milliseconds) == milliseconds, "\(text)")
        }
        #expect(SagaLifecycleEvent.fastParse("2026-11-29T10:41:07Z") == nil)
        #expect(SagaLifecycleEvent.fastParse("2026-13-29T10:41:07.000Z") == nil)
    }

    @Test func storedColumnsAreTheTextOfTheirCodableFormAndReadBack() throws {
        let history = [
            StepRecord(
                step: 0, stepName: "reserve", phase: .action, attempt: 1, startedAt: Date(timeIntervalSince1970: 1_796_000_000.123),
                finishedAt: Date(timeIntervalSince1970: 1_796_000_000.2), outcome: .completed),
            StepRecord(
                step: 1, stepName: "pay/charge", phase: .compensation, attempt: 2, startedAt: Date(timeIntervalSince1970: 1_796_000_001),
                finishedAt: Date(timeIntervalSince1970: 1_796_000_002.5), outcome: .failed, error: "db \"down\"", timedOut: true,
                actor: "ops", reason: "retry"),
        ]
        let payload: JSONObject = ["orderId": "o/1", "amount": 12.5, "items": [1, 2], "nested": ["k": .null]]
        let context = ["traceparent": "00-abc", "sagakit-topology": "t/1"]
        #expect(try StoreCoding.json(history) == generic(history))
        #expect(try StoreCoding.json(payload) == generic(payload))
        #expect(try StoreCoding.json(context) == generic(context))
        #expect(try StoreCoding.decode([StepRecord].self, json: generic(history), column: "history", sagaID: "s") == history)
        #expect(try StoreCoding.decode(JSONObject.self, json: generic(payload), column: "payload", sagaID: "s") == payload)
        #expect(try StoreCoding.decode([String: String].self, json: generic(context), column: "context", sagaID: "s") == context)

        let error = #expect(throws: SagaError.self) {
            try StoreCoding.decode([StepRecord].self, json: #"[{"step":0}]"#, column: "history", sagaID: "s")
        }
        #expect(error?.message == "the stored history of saga s is not valid JSON for Array<StepRecord>: missing key 'stepName'")
    }

    /// The generic `Codable` path (JSONEncoder), which the specific overloads replace.
    private func generic<T: Encodable>(_ value: T) throws -> String { try StoreCoding.json(value) }
}
