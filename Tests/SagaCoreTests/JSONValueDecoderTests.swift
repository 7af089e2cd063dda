import Foundation
import Testing

@testable import SagaCore

/// `JSONCoding.value(_:from:)` decodes straight from `JSONValue` where it can, and must give what
/// `JSONDecoder` gives for the object's text: the same values and the same errors.
@Suite struct JSONValueDecoderTests {
    enum Kind: String, Codable, Equatable { case standard, express }

    struct Line: Codable, Equatable {
        var sku: String
        var qty: Int32
    }

    struct Order: Codable, Equatable {
        var orderId: String
        var amount: Int
        var price: Double
        var big: UInt64
        var small: Int8
        var flag: Bool
        var kind: Kind
        var lines: [Line]
        var note: String?
        var missing: Int?
        var counts: [String: Int]
        var matrix: [[Double]]
        var meta: JSONValue
        var optionals: [Int?]
    }

    static let order: JSONObject = [
        "orderId": "o-1", "amount": 30, "price": 0.1, "big": .number(JSONNumber(UInt64.max)), "small": -128, "flag": true,
        "kind": "express", "lines": [["sku": "a", "qty": 2], ["sku": "b/é", "qty": 1]], "note": nil,
        "counts": ["x": 1, "y": -2], "matrix": [[1, 2.5], [], [1e-7, 123_456_789.125, .number(JSONNumber(Int64.max))]],
        "meta": ["anything": [1, "two", nil, ["deep": true]]], "optionals": [1, nil, 3], "ignored": "extra key",
    ]

    private func viaJSONDecoder<T: Decodable>(_ type: T.Type, _ object: JSONObject) throws -> T {
        var writer = JSONWriter()
        try writer.write(object)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(type, from: Data(writer.bytes))
    }

    @Test func commonPayloadsDecodeDirectlyToWhatJSONDecoderGives() throws {
        let direct = try JSONValueDecoder.decode(Order.self, from: .object(Self.order))
        #expect(direct == (try viaJSONDecoder(Order.self, Self.order)))
        #expect(try JSONCoding.value(Order.self, from: Self.order) == direct)
        #expect(direct.big == UInt64.max && direct.price == 0.1 && direct.matrix[2][2] == Double(Int64.max))
        #expect(try JSONValueDecoder.decode([String: JSONValue].self, from: .object(Self.order)) == Self.order)
    }

    struct Stamped: Codable, Equatable {
        var at: Date
        var total: Decimal
        var ratio: Float
        var link: URL
    }

    @Test func foundationTypesAreLeftToJSONDecoder() throws {
        let object: JSONObject = [
            "at": "2026-11-30T12:00:00Z", "total": .number(JSONNumber(Decimal(string: "3.14159265358979323846")!)), "ratio": 0.1,
            "link": "https://example.com/a",
        ]
        #expect(throws: JSONValueDecoder.Unsupported.self) { try JSONValueDecoder.decode(Stamped.self, from: .object(object)) }
        #expect(try JSONCoding.value(Stamped.self, from: object) == (try viaJSONDecoder(Stamped.self, object)))
        // A number only Decimal holds, read as a Double: JSONDecoder's rounding.
        struct Precise: Codable, Equatable { var value: Double }
        let precise: JSONObject = ["value": .number(JSONNumber(Decimal(string: "3.14159265358979323846")!))]
        #expect(try JSONCoding.value(Precise.self, from: precise) == (try viaJSONDecoder(Precise.self, precise)))
    }

    @Test(arguments: [
        ["orderId": 1] as JSONObject,  // a number for a string
        ["amount": 2.5],  // a fraction for an integer
        ["small": 300],  // out of range
        ["kind": "overnight"],  // no such case
        ["lines": [["sku": "a"]]],  // a missing key in an element
        ["counts": ["x": "one"]],
    ])
    func everyErrorIsJSONDecodersError(change: JSONObject) throws {
        let object = Self.order.merging(change) { $1 }
        var expected = ""
        do { _ = try viaJSONDecoder(Order.self, object) } catch { expected = String(describing: error) }
        var actual = ""
        do { _ = try JSONCoding.value(Order.self, from: object) } catch { actual = String(describing: error) }
        #expect(!expected.isEmpty && actual == expected)
        var missing = Self.order
        missing["orderId"] = nil
        #expect(throws: DecodingError.self) { try JSONCoding.value(Order.self, from: missing) }
    }
}
