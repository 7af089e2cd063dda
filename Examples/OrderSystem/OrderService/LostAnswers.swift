import OrderSystemSupport
import Participant

extension SagaManager {
    /// Whether the saga's history holds a record that `matches`.
    ///
    /// A request whose answer was lost (the store applied it, then did not answer in time) leaves
    /// its mark there: callers ask after an error that is not a refusal, to tell "not applied,
    /// try again" from "applied". `false` when the store cannot be read either.
    func historyHolds(_ id: String, _ matches: (StepRecord) -> Bool) async -> Bool {
        guard let state = try? await store.load(id) else { return false }
        return state.history.contains(where: matches)
    }

    /// Whether the saga's history holds a compensation request signed by `actor`.
    func historyHoldsCompensationRequest(of id: String, by actor: String) async -> Bool {
        await historyHolds(id) { $0.outcome == .compensationRequested && $0.actor == actor }
    }

    /// Whether the saga's history holds its fraud review completed by `actor`'s approving signal.
    func historyHoldsApproval(of id: String, by actor: String) async -> Bool {
        await historyHolds(id) {
            $0.stepName == OrderSaga.fraudReviewStep && $0.phase == .action && $0.outcome == .completed && $0.actor == actor
        }
    }
}
