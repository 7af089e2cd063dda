import Foundation
import Testing

@testable import Participant

/// What a handler whose report was discarded does with its run's effect
/// (`SagaContext.discardedOutcome`): undo it only when the saga is undoing and no run of the
/// step counted. A user's rolling restart logged "undo this run's effect" for completed orders
/// whose step had counted in another run: following it would have refunded paid orders.
@Suite("A discarded report's decision")
struct DiscardedOutcomeTests {
    private static func saga(_ status: SagaStatus, completedSteps: [Int]) -> SagaState {
        var state = SagaStateMachine(
            definition: try! SagaBuilder("order").step("reserve", action: "r", compensation: "r-")
                .step("charge", action: "c", compensation: "c-").build()
        ).begin(id: "s-1", payload: [:], now: Date()).state
        state.status = status
        state.history = completedSteps.map {
            StepRecord(step: $0, stepName: "s\($0)", phase: .action, attempt: 1, startedAt: Date(), finishedAt: Date(), outcome: .completed)
        }
        return state
    }

    @Test func anActionIsUndoneOnlyWhenTheSagaUndoesAndTheStepNeverCounted() {
        // An operator compensated the saga while the charge ran: undo it.
        #expect(
            DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.compensating, completedSteps: [0])).outcome == .undoThisRun)
        #expect(
            DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.compensated, completedSteps: [0])).outcome == .undoThisRun)
        // Another run of the charge counted (a duplicate, a redelivery): the saga owns the effect.
        #expect(
            DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.completed, completedSteps: [0, 1])).outcome
                == .leaveTheEffect)
        #expect(
            DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.compensating, completedSteps: [0, 1])).outcome
                == .leaveTheEffect)
        // Still running (a later attempt replays the effect by its key).
        #expect(
            DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.running, completedSteps: [0])).outcome == .leaveTheEffect)
        // A compensation's report: nothing to undo.
        #expect(
            DiscardedOutcome.decide(phase: .compensation, step: 1, latest: Self.saga(.compensated, completedSteps: [0])).outcome
                == .leaveTheEffect)
    }

    @Test func theAdviceSaysWhatTheDecisionIs() {
        let undo = DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.compensating, completedSteps: [0])).advice
        #expect(undo.contains("undo this run's effect"))
        let counted = DiscardedOutcome.decide(phase: .action, step: 1, latest: Self.saga(.completed, completedSteps: [0, 1])).advice
        #expect(counted.contains("counted in another run") && counted.contains("leave its effect") && !counted.contains("undo this run"))
        let compensation = DiscardedOutcome.decide(phase: .compensation, step: 1, latest: Self.saga(.compensated, completedSteps: [0]))
        #expect(compensation.advice.hasPrefix("nothing to undo"))
    }
}
