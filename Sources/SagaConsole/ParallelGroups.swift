import Participant

/// The parallel group a saga is in, with each member's progress (read from the saga's history
/// with ``SagaStateMachine/progress(of:in:)``). A saga is in a group while it runs the group
/// (its current step is the group's first) and when it stopped there for an operator before
/// compensating anything.
struct ConsoleGroup {
    /// The group's name.
    var name: String
    /// The members' step indices.
    var steps: ClosedRange<Int>
    /// Each member's name and progress, in declaration order.
    var members: [(step: Int, name: String, progress: ParallelMemberProgress)]

    /// `nil` when the saga is not in a parallel group.
    init?(_ state: SagaState, definition: SagaDefinition) {
        let machine = SagaStateMachine(definition: definition)
        guard let range = machine.parallelGroup(of: state) else { return nil }
        name = definition.steps[range.lowerBound].group ?? ""
        steps = range
        members = range.map { ($0, definition.steps[$0].name, machine.progress(of: $0, in: state)) }
    }

    /// `parallel group 'prepare': reserve-stock completed, authorize-payment running (attempt 2)`.
    var text: String {
        "parallel group '\(name)': " + members.map { "\($0.name) \(Self.describe($0.progress))" }.joined(separator: ", ")
    }

    /// `completed`, `running (attempt 2)`, `failed`, `failed (timed out)`, `skipped`.
    static func describe(_ progress: ParallelMemberProgress) -> String { progress.description }
}
