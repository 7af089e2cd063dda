import Foundation
import SagaCore
import Testing

@Suite("Saga conditions")
struct SagaConditionTests {
    private let data: JSONObject = [
        "amount": 1500,
        "price": 9.99,
        "country": "FR",
        "vip": true,
        "trial": false,
        "note": nil,
        "code": "1000",
        "customer": ["address": ["country": "DE", "zip": "10115"], "tier": 2],
        "items": [["sku": "A-1", "qty": 2], ["sku": "B-7", "qty": 1]],
    ]

    @Test func equalityComparesJSONValuesAndNumbersByValue() {
        #expect(SagaCondition.equals("country", "FR").evaluate(data))
        #expect(!SagaCondition.equals("country", "DE").evaluate(data))
        #expect(SagaCondition.equals("amount", 1500).evaluate(data))
        #expect(SagaCondition.equals("amount", 1500.0).evaluate(data))
        #expect(SagaCondition.equals("amount", .number(JSONNumber(Decimal(string: "1.5e3")!))).evaluate(data))
        #expect(SagaCondition.equals("customer.address", ["zip": "10115", "country": "DE"]).evaluate(data))
        #expect(SagaCondition.notEquals("country", "DE").evaluate(data))
        #expect(!SagaCondition.notEquals("country", "FR").evaluate(data))
    }

    @Test(arguments: [
        (SagaCondition.greaterThan("amount", 1000), true), (.greaterThan("amount", 1500), false),
        (.greaterThanOrEqual("amount", 1500), true), (.greaterThanOrEqual("amount", 1501), false),
        (.lessThan("price", 10), true), (.lessThan("price", 9.99), false),
        (.lessThanOrEqual("price", 9.99), true), (.lessThanOrEqual("price", 9.98), false),
        (.greaterThan("customer.tier", 1), true),
    ])
    func orderingsCompareNumbers(condition: SagaCondition, expected: Bool) {
        #expect(condition.evaluate(data) == expected, "\(condition)")
    }

    @Test func oneOfExistsMissingAndBooleans() {
        #expect(SagaCondition.oneOf("country", ["DE", "FR"]).evaluate(data))
        #expect(!SagaCondition.oneOf("country", ["DE", "IT"]).evaluate(data))
        #expect(SagaCondition.oneOf("amount", [1, 1500]).evaluate(data))
        #expect(SagaCondition.exists("vip").evaluate(data))
        #expect(SagaCondition.exists("trial").evaluate(data))  // false is a value
        #expect(!SagaCondition.exists("coupon").evaluate(data))
        #expect(SagaCondition.missing("coupon").evaluate(data))
        #expect(!SagaCondition.missing("amount").evaluate(data))
        #expect(SagaCondition.isTrue("vip").evaluate(data))
        #expect(!SagaCondition.isTrue("trial").evaluate(data))
        #expect(SagaCondition.isFalse("trial").evaluate(data))
        #expect(!SagaCondition.isFalse("vip").evaluate(data))
    }

    @Test func nullCountsAsMissing() {
        #expect(SagaCondition.missing("note").evaluate(data))
        #expect(!SagaCondition.exists("note").evaluate(data))
        #expect(!SagaCondition.notEquals("note", "x").evaluate(data))
    }

    @Test func nestedPathsReachObjectsAndArrayElements() {
        #expect(SagaCondition.equals("customer.address.country", "DE").evaluate(data))
        #expect(SagaCondition.equals("items.1.sku", "B-7").evaluate(data))
        #expect(SagaCondition.greaterThan("items.0.qty", 1).evaluate(data))
        #expect(SagaCondition.missing("items.2.sku").evaluate(data))  // out of range
        #expect(SagaCondition.missing("items.x").evaluate(data))  // not an index
        #expect(SagaCondition.missing("country.code").evaluate(data))  // through a string
        #expect(SagaCondition.missing("customer.address.city").evaluate(data))
        #expect(SagaCondition.resolve("customer.tier", in: data) == 2)
    }

    @Test func everyComparisonOnAMissingFieldIsFalse() {
        let conditions: [SagaCondition] = [
            .equals("coupon", "x"), .notEquals("coupon", "x"), .greaterThan("coupon", 1), .greaterThanOrEqual("coupon", 1),
            .lessThan("coupon", 1), .lessThanOrEqual("coupon", 1), .oneOf("coupon", ["x"]), .isTrue("coupon"), .isFalse("coupon"),
            .exists("coupon"),
        ]
        for condition in conditions { #expect(!condition.evaluate(data), "\(condition)") }
        // `not` negates the result: a saga without a coupon is "not equal to x".
        #expect(SagaCondition.not(.equals("coupon", "x")).evaluate(data))
    }

    @Test func aValueOfAnotherTypeIsNoMatchNeverAnError() {
        #expect(!SagaCondition.greaterThan("code", 1).evaluate(data))  // "1000" is a string
        #expect(!SagaCondition.lessThan("country", 1).evaluate(data))
        #expect(!SagaCondition.equals("code", 1000).evaluate(data))
        #expect(SagaCondition.notEquals("code", 1000).evaluate(data))  // present and different
        #expect(!SagaCondition.isTrue("amount").evaluate(data))  // no truthiness
        #expect(!SagaCondition.isFalse("country").evaluate(data))
        #expect(!SagaCondition.greaterThan("customer", 0).evaluate(data))
    }

    @Test func combinators() {
        let big = SagaCondition.greaterThan("amount", 1000)
        let german = SagaCondition.equals("country", "DE")
        #expect(SagaCondition.all([big, .isTrue("vip")]).evaluate(data))
        #expect(!SagaCondition.all([big, german]).evaluate(data))
        #expect(SagaCondition.any([german, big]).evaluate(data))
        #expect(!SagaCondition.any([german, .isFalse("vip")]).evaluate(data))
        #expect(SagaCondition.not(german).evaluate(data))
        #expect(!SagaCondition.not(big).evaluate(data))
        #expect(SagaCondition.all([.any([german, .not(.missing("amount"))]), .not(.all([big, german]))]).evaluate(data))
    }

    @Test func descriptionsAreReadable() {
        #expect(SagaCondition.greaterThan("amount", 1000).description == "amount > 1000")
        #expect(SagaCondition.lessThanOrEqual("price", 9.5).description == "price <= 9.5")
        #expect(SagaCondition.equals("country", "FR").description == #"country == "FR""#)
        #expect(SagaCondition.notEquals("vip", true).description == "vip != true")
        #expect(SagaCondition.oneOf("country", ["FR", "DE"]).description == #"country in ["FR", "DE"]"#)
        #expect(SagaCondition.exists("coupon").description == "coupon exists")
        #expect(SagaCondition.missing("coupon").description == "coupon is missing")
        #expect(SagaCondition.isTrue("vip").description == "vip is true")
        #expect(SagaCondition.isFalse("vip").description == "vip is false")
        #expect(
            SagaCondition.all([.greaterThan("amount", 1000), .any([.isTrue("vip"), .equals("country", "FR")]), .not(.exists("coupon"))])
                .description == #"amount > 1000 and (vip is true or country == "FR") and not (coupon exists)"#)
        #expect(SagaCondition.not(.greaterThan("amount", 1)).description == "not (amount > 1)")
    }

    @Test func conditionsRoundTripThroughJSON() throws {
        let condition = SagaCondition.all([
            .equals("a", "x"), .notEquals("b", ["k": 1]), .greaterThan("c", 1), .greaterThanOrEqual("d", 2.5), .lessThan("e", -3),
            .lessThanOrEqual("f", 4), .oneOf("g", ["x", 1, true]), .exists("h"), .missing("i"), .isTrue("j"), .isFalse("k"),
            .any([.not(.exists("l"))]),
        ])
        let data = try JSONCoding.encode(condition)
        #expect(try JSONCoding.decode(SagaCondition.self, from: data) == condition)
        let text = String(decoding: try JSONCoding.encode(SagaCondition.greaterThan("amount", 1000)), as: UTF8.self)
        #expect(text == #"{"op":"greaterThan","path":"amount","value":1000}"#)
        #expect(throws: DecodingError.self) {
            try JSONCoding.decode(SagaCondition.self, from: Data(#"{"op":"between","path":"a"}"#.utf8))
        }
        #expect(throws: DecodingError.self) {
            try JSONCoding.decode(SagaCondition.self, from: Data(#"{"op":"greaterThan","path":"a","value":"x"}"#.utf8))
        }
    }

    @Test(arguments: [
        (SagaCondition.equals("", 1), "a field path is empty"),
        (.exists("customer..country"), "field path 'customer..country' has an empty segment"),
        (.exists(".amount"), "field path '.amount' has an empty segment"),
        (.isTrue("a b"), "field path 'a b' contains whitespace"),
        (.all([]), "an all has no conditions"),
        (.not(.any([])), "an any has no conditions"),
        (.oneOf("country", []), "oneOf on 'country' has an empty list"),
        (.equals("coupon", nil), "compares 'coupon' with null"),
        (.greaterThan("amount", JSONNumber(Double.infinity)), "a number JSON cannot write"),
    ])
    func malformedConditionsAreRejectedAtBuildTime(condition: SagaCondition, problem: String) {
        let error = #expect(throws: SagaError.self) {
            try SagaBuilder("order")
                .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
                .step("review", action: "fraud.review", when: condition)
                .build()
        }
        #expect(error?.code == .invalidDefinition)
        #expect(error?.message.contains("saga 'order': step 2 'review': condition '") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "") lacks \(problem)")
    }

    @Test func thePivotCannotHaveACondition() {
        let error = #expect(throws: SagaError.self) {
            try SagaBuilder("order")
                .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
                .step("ship", action: "shipping.ship", options: .pivot, when: .isTrue("express"))
                .build()
        }
        #expect(error?.message.contains("step 2 'ship' is the pivot but has a condition (express is true)") == true)
        #expect(error?.recoverySuggestion?.contains("put the condition on the steps before or after it") == true)
        // Before and after the pivot, conditions are fine.
        #expect(
            (try? SagaBuilder("order")
                .step("reserve", action: "inventory.reserve", compensation: "inventory.release", when: .exists("sku"))
                .step("ship", action: "shipping.ship", options: .pivot)
                .step("notify", action: "mail.send", when: .isTrue("subscribed"))
                .build()) != nil)
    }
}
