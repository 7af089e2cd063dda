import Foundation
import SagaCore
import Testing

@Suite("SagaBuilder validation")
struct SagaBuilderTests {
    @Test func buildsAValidDefinition() throws {
        let definition = try SagaBuilder("order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .step("ship", action: "shipping.ship", options: .pivot)
            .build()
        #expect(definition.steps.map(\.name) == ["reserve", "charge", "ship"])
        #expect(definition.pivotIndex == 2)
        #expect(definition.isForwardOnly(2))
        #expect(!definition.isForwardOnly(1))
        #expect(definition.commands == ["inventory.reserve", "inventory.release", "payment.charge", "payment.refund", "shipping.ship"])
        #expect(definition.locate(command: "payment.refund")! == (1, .compensation))
        #expect(definition.locate(command: "nope") == nil)
    }

    @Test func rejectsAnEmptySaga() {
        expectInvalid(SagaBuilder("empty"), mentioning: "no steps")
    }

    @Test func rejectsDuplicateStepNames() {
        let builder = SagaBuilder("s").step("a", action: "x").step("a", action: "y")
        expectInvalid(builder, mentioning: "step 2 'a': the step name is used twice")
    }

    @Test func rejectsDuplicateCommandNames() {
        let builder = SagaBuilder("s").step("a", action: "x", compensation: "undo").step("b", action: "undo")
        expectInvalid(builder, mentioning: "command 'undo' is already used by step 'a'")
    }

    @Test func rejectsACompensationAfterThePivot() {
        let builder = SagaBuilder("s")
            .step("a", action: "a.do", compensation: "a.undo")
            .step("p", action: "p.do", options: .pivot)
            .step("c", action: "c.do", compensation: "c.undo")
        expectInvalid(builder, mentioning: "declares compensation 'c.undo' after the pivot 'p'")
    }

    @Test func rejectsACompensatedPivotAndTwoPivots() {
        expectInvalid(
            SagaBuilder("s").step("p", action: "p.do", compensation: "p.undo", options: .pivot),
            mentioning: "is the pivot but declares compensation")
        expectInvalid(
            SagaBuilder("s").step("p", action: "p.do", options: .pivot).step("q", action: "q.do", options: .pivot),
            mentioning: "second pivot")
    }

    @Test func rejectsZeroAttempts() {
        let builder = SagaBuilder("s").step("a", action: "a", options: StepOptions(retry: RetryPolicy(maxAttempts: 0)))
        expectInvalid(builder, mentioning: "maxAttempts must be at least 1")
    }

    @Test func registryFindsDefinitionsAndRejectsDuplicates() throws {
        let a = try SagaBuilder("a").step("s", action: "a.s").build()
        var registry = try SagaDefinitionRegistry([a])
        #expect(try registry.definition(named: "a") == a)
        #expect(throws: SagaError.self) { try registry.register(a) }
        let error = #expect(throws: SagaError.self) { try registry.definition(named: "b") }
        #expect(error?.code == .unknownDefinition)
        #expect(error?.message.contains("known: a") == true)
    }

    @Test func retryDelaysGrowAndAreCapped() {
        let policy = RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(5))
        #expect(policy.delay(afterAttempt: 1) == .seconds(1))
        #expect(policy.delay(afterAttempt: 2) == .seconds(2))
        #expect(policy.delay(afterAttempt: 3) == .seconds(4))
        #expect(policy.delay(afterAttempt: 4) == .seconds(5))
        #expect(policy.delay(afterAttempt: 60) == .seconds(5))
    }

    /// Definitions that cannot work: names the broker reads as routing-key syntax, timeouts and
    /// deadlines of zero, delays that run backwards.
    @Test func rejectsWhatCannotWorkOnTheBrokerOrTheClock() {
        let step = SagaBuilder("s").step("a", action: "a.do")
        expectInvalid(SagaBuilder("claim.v2").step("a", action: "a.do"), mentioning: "the saga name contains '.'")
        expectInvalid(SagaBuilder("claim.v2").step("a", action: "a.do"), mentioning: "(for example 'claim-v2')")
        expectInvalid(SagaBuilder("claims #2").step("a", action: "a.do"), mentioning: "the saga name contains '#'")
        expectInvalid(SagaBuilder("s").step("a", action: "pay ment.do"), mentioning: "command 'pay ment.do' contains a blank")
        expectInvalid(SagaBuilder("s").step("a", action: "payment.*"), mentioning: "command 'payment.*' contains '*'")
        expectInvalid(
            SagaBuilder("s").step("a", action: "a.do", options: StepOptions(timeout: .zero)), mentioning: "step 1 'a': the timeout")
        expectInvalid(step.deadline(.zero), mentioning: "the deadline 0.0 seconds is not positive")
        expectInvalid(
            SagaBuilder("s").step("a", action: "a.do", options: StepOptions(retry: RetryPolicy(initialDelay: .seconds(-5)))),
            mentioning: "step 1 'a': retry has a negative delay")
        expectInvalid(
            step.compensationRetry(RetryPolicy(multiplier: 0)), mentioning: "compensation retry multiplier 0.0 is not a positive number")
        // Dots separate the words of command names: allowed there.
        #expect((try? SagaBuilder("s").step("a", action: "payment.card.charge").build()) != nil)
    }

    /// A definition an earlier release stored keeps loading, so that its sagas in flight finish.
    @Test func aStoredDefinitionIsNotHeldToTheNewerRules() throws {
        var document = try SagaBuilder("claim").step("a", action: "a.do").build().document
        document.name = "claim.v2"
        #expect(try document.definition().name == "claim.v2")
    }

    private func expectInvalid(_ builder: SagaBuilder, mentioning text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let error = #expect(throws: SagaError.self, sourceLocation: sourceLocation) { try builder.build() }
        #expect(error?.code == .invalidDefinition, sourceLocation: sourceLocation)
        #expect(
            error?.description.contains(text) == true, "\(error?.description ?? "no error") should mention \(text)",
            sourceLocation: sourceLocation)
    }
}

@Suite("JSON payloads")
struct JSONPayloadTests {
    @Test func shallowMergeReplacesTopLevelKeysOnly() {
        let payload: JSONObject = ["a": 1, "nested": ["x": 1, "y": 2], "keep": "yes"]
        let merged = payload.merging(patch: ["a": 2, "nested": ["x": 9], "new": nil])
        #expect(merged == ["a": 2, "nested": ["x": 9], "keep": "yes", "new": nil])
    }

    @Test func codableRoundTripAndNonObjectPayloadsAreRejected() throws {
        struct Order: Codable, Equatable {
            var id: String
            var amount: Double
        }
        let object = try JSONCoding.object(from: Order(id: "o-1", amount: 12.5))
        #expect(object == ["id": "o-1", "amount": 12.5])
        #expect(try JSONCoding.value(Order.self, from: object) == Order(id: "o-1", amount: 12.5))
        let error = #expect(throws: SagaError.self) { try JSONCoding.object(from: [1, 2, 3]) }
        #expect(error?.code == .invalidPayload)
        #expect(throws: SagaError.self) { try JSONCoding.object(fromJSON: Data("[1]".utf8)) }
        #expect(throws: SagaError.self) { try JSONCoding.object(fromJSON: Data("{not json".utf8)) }
    }
}
