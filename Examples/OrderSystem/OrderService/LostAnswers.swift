import Participant

extension SagaManager {
    /// Whether the saga's history holds a compensation request signed by `actor`.
    ///
    /// A request whose answer was lost (the store applied it, then did not answer in time) leaves
    /// its mark there: callers ask after an error that is not a refusal, to tell "not applied,
    /// try again" from "applied". `false` when the store cannot be read either.
    func historyHoldsCompensationRequest(of id: String, by actor: String) async -> Bool {
        guard let state = try? await store.load(id) else { return false }
        return state.history.contains { $0.outcome == .compensationRequested && $0.actor == actor }
    }
}
