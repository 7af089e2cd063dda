import Foundation
import Testing

@testable import SagaCore

@Suite("SagaDefinition documents")
struct SagaDefinitionDocumentTests {
    static func order(version: Int = 1, shipAction: String = "shipping.ship") throws -> SagaDefinition {
        try SagaBuilder("order")
            .version(version)
            .step(
                "reserve", action: "inventory.reserve", compensation: "inventory.release",
                options: StepOptions(retry: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(250)), timeout: .seconds(3))
            )
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .step("ship", action: shipAction, options: .pivot)
            .deadline(.seconds(90))
            .compensationRetry(RetryPolicy(maxAttempts: 4, initialDelay: .seconds(2), multiplier: 1.5, maxDelay: .seconds(30)))
            .build()
    }

    @Test func theVersionDefaultsToOneAndIsSetByTheBuilder() throws {
        #expect(try SagaBuilder("a").step("s", action: "x").build().version == 1)
        #expect(try Self.order(version: 2).version == 2)
        let error = #expect(throws: SagaError.self) { try SagaBuilder("a").version(0).step("s", action: "x").build() }
        #expect(error?.code == .invalidDefinition)
    }

    @Test func theCanonicalFormHasSortedKeysAndMilliseconds() throws {
        let text = String(decoding: try Self.order().canonicalJSON(), as: UTF8.self)
        #expect(
            text.hasPrefix(
                #"{"compensationRetry":{"initialDelayMilliseconds":2000,"maxAttempts":4,"maxDelayMilliseconds":30000,"multiplier":1.5},"deadlineMilliseconds":90000,"name":"order","steps":[{"action":"inventory.reserve","compensation":"inventory.release","name":"reserve","pivot":false,"retry":{"initialDelayMilliseconds":250,"#
            ))
        #expect(text.contains(#""timeoutMilliseconds":3000"#))
        #expect(text.hasSuffix(#""version":1}"#))
        #expect(!text.contains(" "))
    }

    @Test func aDocumentDecodesIntoAnEqualDefinition() throws {
        let definition = try Self.order(version: 3)
        let decoded = try SagaDefinition(canonicalJSON: definition.canonicalJSON())
        #expect(decoded == definition)
        #expect(decoded.contentHash == definition.contentHash)
        #expect(decoded.canonicalJSON() == definition.canonicalJSON())
    }

    @Test func decodingValidatesThroughTheBuilder() throws {
        var document = try Self.order().document
        document.steps[1].pivot = true  // two pivots, and a compensation on a pivot
        let error = #expect(throws: SagaError.self) { try document.definition() }
        #expect(error?.code == .invalidDefinition)
        let garbage = #expect(throws: SagaError.self) { try SagaDefinition(canonicalJSON: Array("{}".utf8)) }
        #expect(garbage?.code == .invalidDefinition)
    }

    @Test func theHashIsStableAndFollowsTheContent() throws {
        let hash = try Self.order().contentHash
        #expect(hash.count == 16)
        #expect(hash.allSatisfy { $0.isHexDigit && !$0.isUppercase })
        #expect(try Self.order().contentHash == hash)
        #expect(try Self.order(shipAction: "shipping.send").contentHash != hash)
        #expect(try Self.order(version: 2).contentHash != hash)
    }

    @Test func differencesAreListedInWords() throws {
        let one = try Self.order()
        #expect(one.differences(from: try Self.order()).isEmpty)
        #expect(
            one.differences(from: try Self.order(shipAction: "shipping.send")) == ["step 3 'ship': action shipping.ship vs shipping.send"])
        let longer = try SagaBuilder("order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .step("ship", action: "shipping.ship", options: .pivot)
            .step("notify", action: "mail.send")
            .compensationRetry(RetryPolicy(maxAttempts: 4, initialDelay: .seconds(2), multiplier: 1.5, maxDelay: .seconds(30)))
            .build()
        let differences = one.differences(from: longer)
        #expect(differences.contains("deadline 90000 ms vs none"))
        #expect(differences.contains("step 1 'reserve': timeout 3000 ms vs none"))
        #expect(differences.contains("step 1 'reserve': retry maxAttempts 5 vs 3"))
        #expect(differences.contains("step 4 'notify': absent vs present"))
    }

    /// A step inserted in the middle reads as that, not as every later step renamed (a user's
    /// unbumped release read "step 3 'ship': name ship vs verify-address"); a moved step says so.
    @Test func differencesMatchStepsByName() throws {
        let one = try Self.order()
        let inserted = try SagaBuilder("order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .step("verify-address", action: "shipping.verify")
            .step("ship", action: "shipping.send", options: .pivot)
            .step("notify", action: "mail.send")
            .build()
        let differences = one.differences(from: inserted)
        #expect(differences.contains("step 3 'verify-address': absent vs present"), "\(differences)")
        #expect(differences.contains("step 5 'notify': absent vs present"), "\(differences)")
        #expect(differences.contains("step 'ship' (3 vs 4): action shipping.ship vs shipping.send"), "\(differences)")
        #expect(!differences.contains { $0.contains("name ship vs") }, "\(differences)")
        #expect(!differences.contains { $0.contains(": name ") }, "no step reads as renamed: \(differences)")

        #expect(
            SagaDefinition.alignSteps(["a", "b", "c"], ["a", "c", "b"]) == [
                .matched(0, 0, moved: false), .matched(1, 2, moved: true), .matched(2, 1, moved: false),
            ])
        #expect(SagaDefinition.alignSteps(["a", "b"], ["a"]) == [.matched(0, 0, moved: false), .removed(1)])
        // Duplicate names: by position.
        #expect(
            SagaDefinition.alignSteps(["a", "a"], ["a", "b", "a"]) == [
                .matched(0, 0, moved: false), .matched(1, 1, moved: false), .added(2),
            ])
    }

    @Test func aRegistryHoldsSeveralVersionsAndReturnsTheLatest() throws {
        var registry = try SagaDefinitionRegistry([try Self.order(version: 1)])
        try registry.register(try Self.order(version: 2, shipAction: "shipping.send"))
        #expect(try registry.definition(named: "order").version == 2)
        #expect(registry.definition(named: "order", version: 1) == (try Self.order(version: 1)))
        #expect(registry.definition(named: "order", version: 3) == nil)
        #expect(registry.all.map(\.version) == [1, 2])
        #expect(throws: SagaError.self) { try registry.register(try Self.order(version: 2)) }
    }

    @Test func aSagaStateReadsItsPinnedVersion() {
        let now = Date()
        var state = SagaState(
            id: "s", name: "order", status: .running, currentStep: 0, attempt: 1, payload: [:], context: [:], history: [],
            createdAt: now, updatedAt: now, version: 1)
        #expect(state.definitionVersion == 1)
        state.definitionVersion = 4
        #expect(state.context[SagaState.definitionVersionKey] == "4")
        #expect(state.definitionVersion == 4)
    }
}
