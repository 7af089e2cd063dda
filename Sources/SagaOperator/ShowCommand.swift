import ArgumentParser
import Foundation
import Participant

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show a saga: state, payload, its history as a timeline, and what happens next."
    )

    @OptionGroup var connection: OperatorOptions

    @Argument(help: "The saga id.")
    var id: String

    @Flag(help: "Print JSON (the stored state plus the next step).")
    var json = false

    struct Output: Encodable {
        var saga: SagaState
        var next: String
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let id = id
        let configuration = environment.configuration
        let json = json
        // Inside the store's scope: its definitions say what happens next.
        try await environment.withStore { store in
            let state = try await store.load(id)
            let next = Self.next(state, configuration: configuration)
            if json {
                try printJSON(Output(saga: state, next: next))
                return
            }
            print(Self.render(state, next: next))
        }
    }

    static func render(_ state: SagaState, next: String) -> String {
        var lines: [String] = []
        lines.append("saga \(state.id)")
        lines.append("  definition  \(state.name) version \(state.definitionVersion)")
        lines.append("  status      \(state.status.cliName.uppercased())\(state.status.isTerminal ? "" : " at \(position(state))")")
        lines.append("  started     \(isoFormatter.string(from: state.createdAt)) (\(age(state.createdAt)))")
        let elapsed = state.updatedAt.timeIntervalSince(state.createdAt)
        lines.append(
            "  updated     \(isoFormatter.string(from: state.updatedAt)) (+\(formatSeconds(elapsed)) after the start, \(age(state.updatedAt)))"
        )
        lines.append(
            "  version     \(state.version)\(state.reapAttempts > 0 ? " · re-sent by the reaper \(state.reapAttempts) time(s)" : "")")
        if let deadline = state.deadline { lines.append("  deadline    \(isoFormatter.string(from: deadline))") }
        if let reason = state.failureReason { lines.append("  reason      \(reason)") }
        lines.append("  payload     \((try? JSONCoding.encode(state.payload)).map { String(decoding: $0, as: UTF8.self) } ?? "?")")
        if !state.context.isEmpty {
            lines.append("  context     \(state.context.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        }
        lines.append("")
        lines.append("timeline (time after the start · step · phase and attempt · outcome · handler time)")
        lines.append("  \(pad("+0 ms", 10))  saga started")
        for record in state.history {
            let at = "+" + formatSeconds(record.finishedAt.timeIntervalSince(state.createdAt))
            let took = record.outcome == .resent ? "" : formatSeconds(record.finishedAt.timeIntervalSince(record.startedAt))
            var line =
                "  \(pad(at, 10))  \(pad(record.stepName, 16))  \(pad("\(record.phase.rawValue) #\(record.attempt)", 16))  \(pad(describe(record.outcome), 13))  \(pad(took, 8))"
            if let error = record.error { line += "  \(error)" }
            lines.append(line.trimmingTrailingSpaces())
        }
        if state.status.isTerminal {
            let end = "+" + formatSeconds(elapsed)
            lines.append("  \(pad(end, 10))  saga \(state.status.cliName)")
        }
        lines.append("")
        lines.append("next")
        lines.append("  " + next)
        return lines.joined(separator: "\n")
    }

    /// What will happen to the saga next, in words.
    static func next(_ state: SagaState, configuration: OperatorConfiguration) -> String {
        guard let definition = pinnedDefinition(of: state), definition.steps.indices.contains(state.currentStep) else {
            return
                "unknown: neither this tool nor the store knows the definition '\(state.name)' version \(state.definitionVersion) (start a participant or manager that runs it: they register their definitions in the store)"
        }
        let step = definition.steps[state.currentStep]
        let reaper = configuration.reaper
        switch state.status {
        case .completed:
            return "nothing: every step completed."
        case .compensated:
            return "nothing: the completed steps were compensated."
        case .needsAttention:
            let stuckInCompensation = state.history.last(where: { $0.step == state.currentStep })?.phase == .compensation
            let command = stuckInCompensation ? (step.compensation ?? step.action) : step.action
            var text = "nothing until an operator acts: \(state.failureReason ?? "the saga stopped").\n"
            text += "  `saga retry \(state.id)` sends '\(command)' again as attempt \(state.attempt + 1)"
            if !stuckInCompensation && !definition.isForwardOnly(state.currentStep) {
                text += ";\n  `saga compensate \(state.id)` undoes the completed steps instead"
            }
            return text + "."
        case .running, .compensating:
            let command = SagaStateMachine(definition: definition).command(for: state).command
            var text =
                "waiting for '\(command.command)' (step \(state.currentStep + 1) '\(step.name)', \(command.phase.rawValue), attempt \(command.attempt))"
            text += " on exchange \(configuration.topology.commandsExchange)"
            if let last = state.history.last, last.outcome == .retrying, last.step == state.currentStep {
                let policy = command.phase == .action ? step.options.retry : definition.compensationRetry
                let delay = policy.delay(afterAttempt: last.attempt)
                let level = configuration.topology.delayLevel(for: delay)
                text +=
                    ",\n  sent after a delay of \(level) s through \(configuration.topology.delayName(seconds: level)) (retry of a failed attempt)"
            }
            if definition.isForwardOnly(state.currentStep) && state.status == .running {
                text += ";\n  past the pivot: failures are retried forward, never compensated"
            } else if state.status == .running {
                let left = max(0, step.options.retry.maxAttempts - state.attempt)
                text += ";\n  a business failure (failAndCompensate) compensates at once; a thrown error is retried"
                text += " (\(left) retry(ies) left), then the saga compensates"
            }
            let stalledAt = state.updatedAt.addingTimeInterval(reaper.stalledThreshold.seconds)
            text += ".\n  If nothing happens by \(isoFormatter.string(from: stalledAt)), the reaper re-sends it"
            text += " (\(reaper.maxReapAttempts - state.reapAttempts) re-send(s) left before the saga needs attention)."
            return text
        }
    }

    static func describe(_ outcome: StepOutcome) -> String {
        switch outcome {
        case .completed: "completed"
        case .retrying: "failed, retry"
        case .failed: "FAILED"
        case .resent: "re-sent"
        }
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text.padding(toLength: width, withPad: " ", startingAt: 0)
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var copy = self
        while copy.last == " " { copy.removeLast() }
        return copy
    }
}
