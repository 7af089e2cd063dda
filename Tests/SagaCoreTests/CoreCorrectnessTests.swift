import Foundation
import SagaCore
import Testing

/// Issue 15: the defects of the saga core, each shown on the pure state machine or on JSON
/// coding (the runtime halves are in `Tests/ParticipantTests/CoreCorrectnessRuntimeTests.swift`).
@Suite("Core correctness (issue 15)")
struct CoreCorrectnessTests {
    // MARK: - Defect 2: numbers round-trip exactly

    /// Number texts that must read back digit for digit.
    static let exactNumbers = [
        "9007199254740993", "1234567890123456789", "-9223372036854775808", "9223372036854775807", "18446744073709551615", "0", "-1",
        "30", "0.1", "-2.5", "1e-07", "3.14159265358979323846264338327950288", "12345678901234567890.123456789",
    ]

    @Test(arguments: exactNumbers)
    func numbersRoundTripExactlyThroughJSONCoding(_ text: String) throws {
        let json = "{\"n\":\(text)}"
        let object = try JSONCoding.object(fromJSON: Data(json.utf8))
        #expect(String(decoding: try JSONCoding.encode(object), as: UTF8.self) == json)
        // And through plain Foundation coders of a Codable type holding a payload.
        struct Holder: Codable, Equatable { var payload: JSONObject }
        let decoded = try JSONDecoder().decode(Holder.self, from: Data("{\"payload\":\(json)}".utf8))
        let again = try JSONDecoder().decode(Holder.self, from: try JSONEncoder().encode(decoded))
        #expect(again == decoded)
        #expect(String(decoding: try JSONEncoder().encode(decoded.payload), as: UTF8.self) == json)
    }

    @Test(arguments: exactNumbers)
    func numbersRoundTripExactlyThroughTheStoresCoding(_ text: String) throws {
        let object = try JSONCoding.object(fromJSON: Data("{\"n\":\(text)}".utf8))
        let column = try StoreCoding.json(object)
        #expect(column == "{\"n\":\(text)}")
        let back = try StoreCoding.decode(JSONObject.self, json: column, column: "payload", sagaID: "s")
        #expect(back == object)
    }

    @Test func largeIntegersKeepTheirValueAndLiteralsStillWork() throws {
        let object = try JSONCoding.object(
            fromJSON: Data(#"{"a":9007199254740993,"b":1234567890123456789,"min":-9223372036854775808,"max":9223372036854775807}"#.utf8))
        #expect(object["a"]?.int64Value == 9_007_199_254_740_993)
        #expect(object["b"]?.int64Value == 1_234_567_890_123_456_789)
        #expect(object["min"]?.int64Value == Int64.min)
        #expect(object["max"]?.int64Value == Int64.max)
        #expect(object["b"] == .number(JSONNumber(Int64(1_234_567_890_123_456_789))))
        // Literals and the familiar spellings.
        let payload: JSONObject = ["id": 1_234_567_890_123_456_789, "price": 9.99, "count": 3, "whole": 30.0]
        #expect(payload["id"]?.intValue == 1_234_567_890_123_456_789)
        #expect(payload["price"]?.doubleValue == 9.99)
        #expect(payload["whole"] == 30)  // 30.0 and 30 are the same number
        #expect(JSONValue.number(Double(3)) == 3)
        #expect(JSONValue.number(3) == .number(JSONNumber(3.0)))
        let decimal = Decimal(string: "3.14159265358979323846264338327950288")!
        #expect(JSONValue.number(decimal).decimalValue == decimal)
        // A Codable type with Int64 and Decimal fields reads the exact numbers.
        struct Order: Codable { var id: Int64; var amount: Decimal }
        let order = try JSONCoding.value(Order.self, from: ["id": 9_007_199_254_740_993, "amount": .number(Decimal(string: "0.1")!)])
        #expect(order.id == 9_007_199_254_740_993 && order.amount == Decimal(string: "0.1"))
        #expect(try JSONCoding.object(from: order) == ["id": 9_007_199_254_740_993, "amount": 0.1])
    }

    // MARK: - Defect 1: a timed-out step is compensated too

    @Test func aTimedOutStepOutOfAttemptsIsCompensatedFromItselfInclusive() throws {
        var state = at(step: 2)  // c: two attempts
        state = try #require(machine.apply(.stepTimedOut(step: 2, attempt: 1, after: .seconds(1), startedAt: t0), to: state, now: t0).state)
        #expect(state.status == .running && state.attempt == 2)
        #expect(state.history.last?.timedOut == true && state.history.last?.outcome == .retrying)
        let decision = machine.apply(.stepTimedOut(step: 2, attempt: 2, after: .seconds(1), startedAt: t0), to: state, now: t0)
        #expect(decision.state?.status == .compensating)
        #expect(decision.commands.map(\.command.command) == ["c.undo"])
        #expect(decision.state?.failureReason == "step 'c' failed 2 time(s): timed out after 1.0 seconds")
    }

    @Test func anEarlierTimeoutMakesAFinalFailureCompensateTheStepToo() throws {
        var state = at(step: 2)
        state = try #require(machine.apply(.stepTimedOut(step: 2, attempt: 1, after: .seconds(1), startedAt: t0), to: state, now: t0).state)
        // The second attempt refuses; the first may have committed.
        let refused = machine.apply(.stepFailed(step: 2, attempt: 2, error: "no", retryable: false, startedAt: t0), to: state, now: t0)
        #expect(refused.commands.map(\.command.command) == ["c.undo"])
        // Without a timeout the failed step is not compensated.
        let plain = machine.apply(.stepFailed(step: 2, attempt: 1, error: "no", retryable: false, startedAt: t0), to: at(step: 2), now: t0)
        #expect(plain.commands.map(\.command.command) == ["a.undo"])
    }

    @Test func aTimeoutAfterThePivotIsRetriedForever() throws {
        let decision = machine.apply(
            .stepTimedOut(step: 4, attempt: 7, after: .seconds(1), startedAt: t0),
            to: {
                var state = at(step: 4)
                state.attempt = 7
                return state
            }(), now: t0)
        #expect(decision.state?.status == .running && decision.state?.attempt == 8)
    }

    // MARK: - Defect 6: re-deciding after a version conflict

    @Test func eventsAimedAtAnEarlierStateAreNotRedecided() throws {
        let aimed = at(step: 1)
        var moved = machine.apply(.stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), to: aimed, now: t0).state!
        moved.version = aimed.version + 1
        #expect(SagaStateMachine.staleness(of: .foundStalled(maxReapAttempts: 3), aimedAt: aimed, reloaded: moved) != nil)
        #expect(SagaStateMachine.staleness(of: .retryRequested(by: "test", reason: nil), aimedAt: aimed, reloaded: moved) != nil)
        #expect(SagaStateMachine.staleness(of: .compensationRequested(by: "test", reason: "x"), aimedAt: aimed, reloaded: moved) != nil)
        // Handler outcomes carry their position; a deadline holds for any state.
        #expect(SagaStateMachine.staleness(of: .deadlinePassed, aimedAt: aimed, reloaded: moved) == nil)
        #expect(
            SagaStateMachine.staleness(of: .stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), aimedAt: aimed, reloaded: moved)
                == nil)
        // Changed but at the same position (the reaper re-sent): a retry still applies; a stalled
        // finding does not (the change is progress).
        var resent = machine.apply(.foundStalled(maxReapAttempts: 3), to: aimed, now: t0).state!
        resent.version = aimed.version + 1
        #expect(SagaStateMachine.staleness(of: .retryRequested(by: "test", reason: nil), aimedAt: aimed, reloaded: resent) == nil)
        #expect(SagaStateMachine.staleness(of: .foundStalled(maxReapAttempts: 3), aimedAt: aimed, reloaded: resent) != nil)
    }

    /// An operator's `saga retry` on a saga that retries its step by itself (past the pivot, every
    /// second) must not be refused because the saga took its next attempt between the tool's load
    /// and its commit: it is where the operator saw it. (A CI run's CLI test was refused so.)
    @Test func anOperatorsRetryStillAppliesAfterTheSagaRetriedByItself() throws {
        var aimed = at(step: 4)
        aimed.attempt = 6
        let retried = try #require(
            machine.apply(.stepFailed(step: 4, attempt: 6, error: "down", retryable: true, startedAt: t0), to: aimed, now: t0).state)
        #expect(retried.status == .running && retried.currentStep == 4 && retried.attempt == 7)
        #expect(SagaStateMachine.staleness(of: .retryRequested(by: "bob", reason: nil), aimedAt: aimed, reloaded: retried) == nil)
        #expect(
            SagaStateMachine.staleness(of: .compensationRequested(by: "bob", reason: "x"), aimedAt: aimed, reloaded: retried) == nil)
        // Moved on to another step: the request no longer means what the operator saw.
        let completed = try #require(
            machine.apply(.stepCompleted(step: 4, attempt: 7, patch: [:], startedAt: t0), to: retried, now: t0).state)
        #expect(SagaStateMachine.staleness(of: .retryRequested(by: "bob", reason: nil), aimedAt: aimed, reloaded: completed) != nil)
    }

    // MARK: - Defect 4: retry resumes a compensation

    @Test func retryAfterTheReaperGaveUpOnACompensationResumesTheCompensation() throws {
        // The deadline passed at c: compensating from c inclusive; its compensation command is
        // lost and the reaper gives up at once (as a reaper configured with no re-sends did).
        var state = at(step: 2)
        state = try #require(machine.apply(.deadlinePassed, to: state, now: t0).state)
        #expect(state.status == .compensating && state.currentStep == 2)
        state = try #require(machine.apply(.foundStalled(maxReapAttempts: 0), to: state, now: t0).state)
        #expect(state.status == .needsAttention)
        let retry = machine.apply(.retryRequested(by: "test", reason: nil), to: state, now: t0)
        #expect(retry.state?.status == .compensating)
        #expect(retry.commands.map(\.command.command) == ["c.undo"])
        #expect(retry.commands.first?.command.phase == .compensation)
    }

    @Test func retryAfterTheReaperGaveUpOnAnOperatorsCompensationResumesIt() throws {
        // An operator compensated at c; the compensation of a (after c's) is lost; the reaper
        // gives up on it.
        var state = at(step: 2)
        state = try #require(machine.apply(.compensationRequested(by: "test", reason: "operator"), to: state, now: t0).state)
        state = try #require(machine.apply(.compensationCompleted(step: 2, attempt: 1, startedAt: t0), to: state, now: t0).state)
        #expect(state.currentStep == 0 && state.status == .compensating)
        state = try #require(machine.apply(.foundStalled(maxReapAttempts: 0), to: state, now: t0).state)
        #expect(state.status == .needsAttention)
        let retry = machine.apply(.retryRequested(by: "test", reason: nil), to: state, now: t0)
        #expect(retry.commands.map(\.command.command) == ["a.undo"])
        #expect(retry.state?.status == .compensating)
        // And an operator's compensate is refused there: the saga is stuck in a compensation.
        guard case .rejected = machine.apply(.compensationRequested(by: "test", reason: "again"), to: state, now: t0) else {
            Issue.record("a saga stuck in a compensation must not be compensated again")
            return
        }
    }

    // MARK: - Smaller: history of a step retried forever

    @Test func aStepRetriedForeverPastItsPivotKeepsABoundedHistory() throws {
        var state = at(step: 4)  // f, after the pivot: retried forever
        for attempt in 1...1_000 {
            state = try #require(
                machine.apply(
                    .stepFailed(step: 4, attempt: attempt, error: "down #\(attempt)", retryable: true, startedAt: t0), to: state, now: t0
                )
                .state)
        }
        #expect(state.attempt == 1_001)
        let records = state.history.filter { $0.step == 4 }
        #expect(records.count <= SagaStateMachine.retainedRecordsPerStep + 1)
        // The first attempt and the latest ones are kept.
        #expect(records.first?.attempt == 1)
        #expect(records.last?.attempt == 1_000)
        #expect(records.last?.error == "down #1000")
        // Earlier steps' records are untouched.
        #expect(state.history.filter { $0.step < 4 }.count == 4)
    }
}

/// A five-step saga: a (compensated), b (nothing to undo), c (compensated), pivot p, then f.
private let definition = try! SagaBuilder("trip")
    .step("a", action: "a.do", compensation: "a.undo")
    .step("b", action: "b.do")
    .step("c", action: "c.do", compensation: "c.undo", options: StepOptions(retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(3))))
    .step("p", action: "p.do", options: .pivot)
    .step("f", action: "f.do")
    .compensationRetry(RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(10)))
    .deadline(.seconds(60))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_000_000)

/// The saga at the action of `step`, every earlier step completed once.
private func at(step: Int) -> SagaState {
    var (state, _) = machine.start(id: "s1", payload: ["order": "o-1"], now: t0)
    for index in 0..<step {
        state = machine.apply(.stepCompleted(step: index, attempt: 1, patch: [:], startedAt: t0), to: state, now: t0).state!
    }
    return state
}
