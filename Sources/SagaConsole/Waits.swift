import Foundation
import Participant

/// Where a waiting saga waits: the wait step it stopped at, the signal it waits for, and until
/// when (its last update is when it began to wait: nothing else changes a waiting saga).
struct ConsoleWait {
    /// The wait step's index.
    var step: Int
    /// The wait step's name.
    var stepName: String
    /// The wait.
    var wait: SagaWait
    /// When the wait times out (the reaper ends it at its first pass after that).
    var until: Date

    /// `nil` when the saga is not waiting at a wait step of `definition`.
    init?(_ state: SagaState, definition: SagaDefinition) {
        guard let (step, wait, until) = SagaStateMachine(definition: definition).waiting(state) else { return nil }
        self.step = step
        stepName = definition.steps[step].name
        self.wait = wait
        self.until = until
    }

    /// `in 23 h 59 min`, or `overdue by 2 min` once the timeout passed.
    func remaining(now: Date) -> String {
        let left = until.timeIntervalSince(now)
        return left >= 0 ? "in \(HTML.duration(left))" : "overdue by \(HTML.duration(-left))"
    }

    /// `step 2 'fraud-review' for signal 'fraud.approved' until 2026-11-30T12:00:00Z (in 23 h 59 min)`,
    /// as `saga show` says it.
    func text(now: Date) -> String {
        "step \(step + 1) '\(stepName)' for signal '\(wait.signal)' until \(until.formatted(.iso8601)) (\(remaining(now: now)))"
    }

    /// The command that approves: `saga signal <id> fraud.approved --data '{…}' --by <you>`.
    func signalCommand(_ id: SagaID) -> String { "saga signal \(id) \(wait.signal) --data '{…}' --by <you>" }
}

extension HTML {
    /// A duration in its two largest units: `45 s`, `1 min 30 s`, `24 h`, `23 h 59 min`, `3 d 4 h`
    /// (days from 2 days on); below a second, `less than 1 s`. The CLI writes them the same way.
    static func duration(_ seconds: Double) -> String {
        guard seconds >= 1 else { return "less than 1 s" }
        let total = Int(seconds.rounded(.down))
        let days = total >= 172_800 ? total / 86_400 : 0
        let rest = total - days * 86_400
        let parts = [(days, "d"), (rest / 3600, "h"), (rest % 3600 / 60, "min"), (rest % 60, "s")]
        let first = parts.firstIndex { $0.0 > 0 } ?? 3
        return parts[first...].prefix(2).filter { $0.0 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: " ")
    }
}
