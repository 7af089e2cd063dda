public import Participant

extension SagaDefinition {
    /// A Mermaid flowchart of the saga: actions left to right, each compensation below its
    /// action, the pivot marked, and the compensation path in reverse order. A conditional step
    /// shows its condition (`when amount > 1000`) and a dotted `skipped` edge to what follows it
    /// when the condition is false.
    ///
    /// A parallel group (``SagaBuilder/parallel(_:_:)``) is drawn as a fork and a join: a
    /// `subgraph` named after the group holds its members side by side, the step before leads
    /// to every member, every member leads to the group's join node, and the join to the step
    /// after. A failing member leads to the compensation of the last other member (the group
    /// waits for its running members first), and the compensations chain as the state machine
    /// runs them: the group's members in reverse declaration order, then the steps before.
    /// Definitions without groups print as they always did.
    ///
    /// A wait step (``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``) is a stadium-shaped node
    /// (`waits for signal 'fraud.approved' · up to 24 h`) with an edge labelled with its signal to
    /// what follows, and a dotted timeout edge: to the compensation that runs first
    /// (`timeout: compensate`), or to what follows (`timeout: continue`). Definitions without
    /// waits print as they did before waits existed.
    ///
    /// A step with a fallback (``SagaFallback``) has the fallback as a node of its own: a dotted
    /// edge `fails for good` (and `or circuit open` with a circuit breaker) leads to it, its
    /// `ok` edge to what follows the step, and a refusal of the primary (`refused`) or a failure
    /// of the fallback compensates as for any step. Definitions without fallbacks print as before.
    ///
    /// Paste it into any Markdown viewer that renders Mermaid (GitHub does).
    public var mermaidFlowchart: String {
        var lines = ["flowchart LR", "    start((start))"]
        let pivot = pivotIndex
        func node(_ index: Int, indent: String) -> String {
            let step = steps[index]
            let marker = index == pivot ? " · PIVOT" : (isForwardOnly(index) ? " · forward only" : "")
            let when = step.condition.map { "<br/>when \(Self.mermaidText($0.description))" } ?? ""
            if let wait = step.wait {
                let waits = "waits for signal '\(Self.mermaidText(wait.signal))' · up to \(humanDuration(wait.timeout.seconds))"
                return "\(indent)a\(index)([\"\(step.name)<br/>\(waits)\(marker)\(when)\"])"
            }
            let shape =
                index == pivot
                ? "{{\"\(step.name)<br/>\(step.action)\(marker)\"}}" : "[\"\(step.name)<br/>\(step.action)\(marker)\(when)\"]"
            return "\(indent)a\(index)\(shape)"
        }
        func undoNode(_ index: Int) -> String? {
            guard let compensation = steps[index].compensation else { return nil }
            // A member that failed is not undone, unless it timed out (its effect may have committed).
            let onlyIf =
                steps[index].group != nil ? "<br/>if it completed or timed out" : (steps[index].condition == nil ? "" : "<br/>if it ran")
            return "    c\(index)[/\"undo \(steps[index].name)<br/>\(compensation)\(onlyIf)\"/]"
        }
        var index = 0
        while index < steps.count {
            if let group = groupRange(of: index) {
                let name = Self.mermaidText(steps[index].group ?? "")
                lines.append("    subgraph g\(group.lowerBound) [\"parallel group '\(name)'\"]")
                for member in group { lines.append(node(member, indent: "        ")) }
                lines.append("    end")
                lines += group.compactMap(undoNode)
                lines.append("    j\(group.lowerBound)((join))")
                index = group.upperBound + 1
            } else {
                lines.append(node(index, indent: "    "))
                if let fallback = steps[index].fallback {
                    let breaker = fallback.breaker.map {
                        "<br/>circuit opens after \($0.failureThreshold) failure(s) for \(humanDuration($0.openFor.seconds))"
                    }
                    lines.append("    f\(index)[\"fallback of \(steps[index].name)<br/>\(fallback.action)\(breaker ?? "")\"]")
                }
                if let undo = undoNode(index) { lines.append(undo) }
                index += 1
            }
        }
        lines.append("    done((completed))")
        lines.append("    compensated((compensated))")
        // What running step `index` means: its node, or every member of its group; `done` past the end.
        func entries(_ index: Int) -> [String] {
            guard index < steps.count else { return ["done"] }
            return (groupRange(of: index) ?? index...index).map { "a\($0)" }
        }
        // The compensation that runs first after step `index` failed for good (`nil`: none).
        func failureTarget(_ index: Int) -> String {
            let target: Int?
            if let group = groupRange(of: index) {
                // The group waits for its running members, then undoes the completed ones (newest
                // declared first) and the steps before; the failed member itself is not undone.
                target = stride(from: group.upperBound, through: 0, by: -1).first { $0 != index && steps[$0].compensation != nil }
            } else {
                target = stride(from: index - 1, through: 0, by: -1).first { steps[$0].compensation != nil }
            }
            return target.map { "c\($0)" } ?? "compensated"
        }
        for entry in entries(0) { lines.append("    start --> \(entry)") }
        index = 0
        while index < steps.count {
            let group = groupRange(of: index)
            for step in group ?? index...index {
                let nexts = group.map { ["j\($0.lowerBound)"] } ?? entries(step + 1)
                if let wait = steps[step].wait {
                    // A wait: its signal leads on; its timeout compensates or continues.
                    let signal = "signal '\(Self.mermaidText(wait.signal))'"
                    for next in nexts { lines.append("    a\(step) -->|\(signal)| \(next)") }
                    if steps[step].condition != nil {
                        for next in nexts { lines.append("    a\(step) -.->|condition false: skipped| \(next)") }
                    }
                    switch wait.onTimeout {
                    case .compensate: lines.append("    a\(step) -.->|timeout: compensate| \(failureTarget(step))")
                    case .continue: for next in nexts { lines.append("    a\(step) -.->|timeout: continue| \(next)") }
                    }
                    continue
                }
                for next in nexts { lines.append("    a\(step) -->|ok| \(next)") }
                if steps[step].condition != nil {
                    for next in nexts { lines.append("    a\(step) -.->|condition false: skipped| \(next)") }
                }
                if step == pivot || isForwardOnly(step) {
                    lines.append("    a\(step) -.->|fails: retry forward| a\(step)")
                    continue
                }
                if let fallback = steps[step].fallback {
                    // The fallback replaces a primary that failed for good (or whose circuit is
                    // open); a refusal, or the fallback failing too, compensates.
                    let why = fallback.breaker == nil ? "fails for good" : "fails for good, or circuit open"
                    lines.append("    a\(step) -.->|\(why)| f\(step)")
                    lines.append("    a\(step) -.->|refused| \(failureTarget(step))")
                    for next in nexts { lines.append("    f\(step) -->|ok| \(next)") }
                    lines.append("    f\(step) -.->|fails| \(failureTarget(step))")
                    continue
                }
                // A failure of step i compensates the steps before it, newest first; a member's
                // failure waits for the other members, then compensates the completed ones too.
                lines.append("    a\(step) -.->|\(group == nil ? "fails" : "fails: once the others finish")| \(failureTarget(step))")
            }
            if let group {
                for next in entries(group.upperBound + 1) { lines.append("    j\(group.lowerBound) -->|all ok or skipped| \(next)") }
                index = group.upperBound + 1
            } else {
                index += 1
            }
        }
        for index in steps.indices where steps[index].compensation != nil {
            let target = stride(from: index - 1, through: 0, by: -1).first { steps[$0].compensation != nil }
            lines.append("    c\(index) --> \(target.map { "c\($0)" } ?? "compensated")")
        }
        if let pivot {
            lines.append("    classDef pivot fill:#fde68a,stroke:#b45309")
            lines.append("    class a\(pivot) pivot")
        }
        lines.append("    classDef undo fill:#fee2e2,stroke:#b91c1c")
        let undo = steps.indices.filter { steps[$0].compensation != nil }.map { "c\($0)" }
        if !undo.isEmpty { lines.append("    class \(undo.joined(separator: ",")) undo") }
        let fallbacks = steps.indices.filter { steps[$0].fallback != nil }
        if !fallbacks.isEmpty {
            lines.append("    classDef fallback fill:#ecfdf5,stroke:#047857")
            lines.append("    class \(fallbacks.map { "f\($0)" }.joined(separator: ",")) fallback")
        }
        let waits = steps.indices.filter { steps[$0].wait != nil }
        if !waits.isEmpty {
            lines.append("    classDef wait fill:#fef9c3,stroke:#a16207,stroke-dasharray:6 3")
            lines.append("    class \(waits.map { "a\($0)" }.joined(separator: ",")) wait")
        }
        let groups = groups
        if !groups.isEmpty {
            lines.append("    classDef parallel fill:#eff6ff,stroke:#2563eb,stroke-dasharray:4 3")
            lines.append("    class \(groups.map { "g\($0.steps.lowerBound)" }.joined(separator: ",")) parallel")
        }
        return lines.joined(separator: "\n")
    }

    /// Text inside a quoted Mermaid label: quotes and angle brackets as entity codes.
    private static func mermaidText(_ text: String) -> String {
        text.replacingOccurrences(of: "\"", with: "#34;").replacingOccurrences(of: "<", with: "#60;")
            .replacingOccurrences(of: ">", with: "#62;")
    }
}
