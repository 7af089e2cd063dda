public import Participant

extension SagaDefinition {
    /// A Mermaid flowchart of the saga: actions left to right, each compensation below its
    /// action, the pivot marked, and the compensation path in reverse order. A conditional step
    /// shows its condition (`when amount > 1000`) and a dotted `skipped` edge to what follows it
    /// when the condition is false.
    ///
    /// Paste it into any Markdown viewer that renders Mermaid (GitHub does).
    public var mermaidFlowchart: String {
        var lines = ["flowchart LR", "    start((start))"]
        let pivot = pivotIndex
        for (index, step) in steps.enumerated() {
            let marker = index == pivot ? " · PIVOT" : (isForwardOnly(index) ? " · forward only" : "")
            let when = step.condition.map { "<br/>when \(Self.mermaidText($0.description))" } ?? ""
            let shape =
                index == pivot
                ? "{{\"\(step.name)<br/>\(step.action)\(marker)\"}}" : "[\"\(step.name)<br/>\(step.action)\(marker)\(when)\"]"
            lines.append("    a\(index)\(shape)")
            if let compensation = step.compensation {
                let onlyIf = step.condition == nil ? "" : "<br/>if it ran"
                lines.append("    c\(index)[/\"undo \(step.name)<br/>\(compensation)\(onlyIf)\"/]")
            }
        }
        lines.append("    done((completed))")
        lines.append("    compensated((compensated))")
        lines.append("    start --> a0")
        for index in steps.indices {
            let next = index + 1 < steps.count ? "a\(index + 1)" : "done"
            lines.append("    a\(index) -->|ok| \(next)")
            if steps[index].condition != nil {
                lines.append("    a\(index) -.->|condition false: skipped| \(next)")
            }
            if index == pivot || isForwardOnly(index) {
                lines.append("    a\(index) -.->|fails: retry forward| a\(index)")
                continue
            }
            // A failure of step i compensates the steps before it, newest first.
            let target = stride(from: index - 1, through: 0, by: -1).first { steps[$0].compensation != nil }
            lines.append("    a\(index) -.->|fails| \(target.map { "c\($0)" } ?? "compensated")")
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
        return lines.joined(separator: "\n")
    }

    /// Text inside a quoted Mermaid label: quotes and angle brackets as entity codes.
    private static func mermaidText(_ text: String) -> String {
        text.replacingOccurrences(of: "\"", with: "#34;").replacingOccurrences(of: "<", with: "#60;")
            .replacingOccurrences(of: ">", with: "#62;")
    }
}
