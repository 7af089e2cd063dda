import Foundation
import Testing

@testable import SagaCore

@Suite("The state copy commands carry")
struct SagaStateCopyTests {
    /// A date as the stores keep it (whole Unix milliseconds).
    private func stored(_ date: Date) -> Date { StoreCoding.date(milliseconds: StoreCoding.milliseconds(date)) }

    @Test("a copy reads back as the saga a store would load, every field included")
    func aCopyReadsBackAsTheStoredSaga() throws {
        let now = Date(timeIntervalSince1970: 1_764_500_000.123_456)
        let state = SagaState(
            id: "s-1", name: "order", status: .compensating, currentStep: 2, attempt: 3,
            payload: ["orderId": "o-\"1\"/é", "amount": 12.5, "lines": [["sku": "a", "qty": 2], nil, true], "note": nil],
            context: ["traceparent": "00-abc-def-01", "sagakit-topology": "shop"],
            history: [
                StepRecord(
                    step: 0, stepName: "reserve", phase: .action, attempt: 1, startedAt: now, finishedAt: now.addingTimeInterval(0.0004),
                    outcome: .completed),
                StepRecord(
                    step: 1, stepName: "charge", phase: .action, attempt: 2, startedAt: now, finishedAt: now, outcome: .failed,
                    error: "card declined", timedOut: true, actor: "ops", reason: "retry"),
            ],
            failureReason: "step 'charge' failed", deadline: now.addingTimeInterval(3600), reapAttempts: 1, createdAt: now,
            updatedAt: now.addingTimeInterval(1), version: 7)
        let copy = try SagaStateCopy.state(from: SagaStateCopy.json(state))
        var expected = state
        expected.createdAt = stored(state.createdAt)
        expected.updatedAt = stored(state.updatedAt)
        expected.deadline = state.deadline.map(stored)
        for index in expected.history.indices {
            expected.history[index].startedAt = stored(state.history[index].startedAt)
            expected.history[index].finishedAt = stored(state.history[index].finishedAt)
        }
        #expect(copy == expected)

        var minimal = expected
        minimal.failureReason = nil
        minimal.deadline = nil
        minimal.history = []
        minimal.context = [:]
        #expect(try SagaStateCopy.state(from: SagaStateCopy.json(minimal)) == minimal)
    }

    @Test(
        "what is not a copy is refused",
        arguments: [
            "", "[]", #"{"id":"s"}"#,
            #"{"attempt":1,"context":{},"createdAt":0,"currentStep":0,"history":[],"id":"s","name":"n","payload":[],"reapAttempts":0,"status":"running","updatedAt":0,"version":1}"#,
            #"{"attempt":1,"context":{"a":1},"createdAt":0,"currentStep":0,"history":[],"id":"s","name":"n","payload":{},"reapAttempts":0,"status":"running","updatedAt":0,"version":1}"#,
            #"{"attempt":1,"context":{},"createdAt":0,"currentStep":0,"history":[],"id":"s","name":"n","payload":{},"reapAttempts":0,"status":"sleeping","updatedAt":0,"version":1}"#,
        ])
    func whatIsNotACopyIsRefused(text: String) {
        #expect(throws: (any Error).self) { try SagaStateCopy.state(from: Array(text.utf8)) }
    }

    @Test("a well-formed minimal copy is read")
    func aMinimalCopyIsRead() throws {
        let text =
            #"{"attempt":1,"context":{},"createdAt":0,"currentStep":0,"history":[],"id":"s","name":"n","payload":{},"reapAttempts":0,"status":"running","updatedAt":0,"version":1}"#
        let state = try SagaStateCopy.state(from: Array(text.utf8))
        #expect(state.id == "s" && state.status == .running && state.version == 1 && state.payload.isEmpty)
    }
}
