import Foundation
import Participant

/// Inline SVG drawings: a saga's timeline as a Gantt chart, a definition as a graph, and
/// per-minute bars. Colours come from classes in the console's style sheet.
enum SVG {
    // MARK: - Gantt

    /// A saga's history drawn on a time axis: one row per step and phase, a bar per attempt
    /// (how long its handler ran), a thin line for the time its command waited (queue, retry
    /// delay), diamonds for operator actions and re-sends, and the start and end.
    static func gantt(_ state: SagaState, now: Date) -> String {
        let start = state.createdAt
        let records = state.history
        let end = state.status.isTerminal ? state.updatedAt : max(now, state.updatedAt)
        let total = max(end.timeIntervalSince(start), 0.001)

        // Rows in order of first appearance: (step, phase), then one row for operators and the reaper.
        struct Row: Hashable {
            var step: Int
            var phase: StepPhase
        }
        var rows: [Row] = []
        var names: [Row: String] = [:]
        for record in records where !record.outcome.isOperatorAction && record.outcome != .resent {
            let row = Row(step: record.step, phase: record.phase)
            if !rows.contains(row) {
                rows.append(row)
                names[row] = record.stepName
            }
        }
        let hasMarkers = records.contains { $0.outcome.isOperatorAction || $0.outcome == .resent }
        let labelWidth = 190.0
        let width = 960.0
        let plot = width - labelWidth - 70
        let rowHeight = 30.0
        let top = 34.0
        let rowCount = rows.count + (hasMarkers ? 1 : 0) + 1
        let height = top + Double(rowCount) * rowHeight + 14
        func x(_ date: Date) -> Double { labelWidth + plot * min(max(date.timeIntervalSince(start) / total, 0), 1) }
        func y(_ index: Int) -> Double { top + Double(index) * rowHeight }

        var svg = """
            <svg class="gantt" role="img" aria-label="timeline of saga \(HTML.escape(state.id))" viewBox="0 0 \(Int(width)) \(Int(height))" \
            width="100%" xmlns="http://www.w3.org/2000/svg">
            """
        // Time axis with five ticks.
        for tick in 0...5 {
            let seconds = total * Double(tick) / 5
            let tx = labelWidth + plot * Double(tick) / 5
            svg += "<line class=\"grid\" x1=\"\(f(tx))\" y1=\"\(f(top - 6))\" x2=\"\(f(tx))\" y2=\"\(f(height - 12))\"/>"
            svg +=
                "<text class=\"axis\" x=\"\(f(tx))\" y=\"\(f(top - 12))\" text-anchor=\"middle\">\(tick == 0 ? "0" : "+" + HTML.escape(HTML.seconds(seconds)))</text>"
        }
        // The saga row: from start to end.
        svg += "<text class=\"label\" x=\"8\" y=\"\(f(y(0) + 19))\">saga \(HTML.escape(state.status.consoleName))</text>"
        svg +=
            "<rect class=\"span st-\(state.status.consoleName)\" x=\"\(f(labelWidth))\" y=\"\(f(y(0) + 11))\" width=\"\(f(max(x(end) - labelWidth, 2)))\" height=\"8\" rx=\"3\"><title>saga \(HTML.escape(state.status.consoleName)), \(HTML.escape(HTML.seconds(total)))\(state.failureReason.map { ": " + HTML.escape($0) } ?? "")</title></rect>"
        // Step rows.
        for (index, row) in rows.enumerated() {
            let rowY = y(index + 1)
            let phaseMark = row.phase == .compensation ? "↩ " : ""
            svg += "<text class=\"label\" x=\"8\" y=\"\(f(rowY + 19))\">\(phaseMark)\(HTML.escape(names[row] ?? "step \(row.step)"))</text>"
            var previousEnd: Date?
            for (recordIndex, record) in records.enumerated() where record.step == row.step && record.phase == row.phase {
                if record.outcome.isOperatorAction || record.outcome == .resent { continue }
                // When its command was sent: the record before it in the history (or the start).
                let sent = recordIndex > 0 ? records[recordIndex - 1].finishedAt : start
                let waitFrom = max(sent, previousEnd ?? sent)
                if record.startedAt > waitFrom {
                    let delay = record.startedAt.timeIntervalSince(waitFrom)
                    let retry = previousEnd != nil
                    svg +=
                        "<line class=\"wait\(retry ? " retry" : "")\" x1=\"\(f(x(waitFrom)))\" y1=\"\(f(rowY + 15))\" x2=\"\(f(x(record.startedAt)))\" y2=\"\(f(rowY + 15))\"><title>\(retry ? "retry delay and queue" : "queued"): \(HTML.escape(HTML.seconds(delay)))</title></line>"
                    if retry && x(record.startedAt) - x(waitFrom) > 44 {
                        svg +=
                            "<text class=\"note\" x=\"\(f((x(waitFrom) + x(record.startedAt)) / 2))\" y=\"\(f(rowY + 10))\" text-anchor=\"middle\">retry +\(HTML.escape(HTML.seconds(delay)))</text>"
                    }
                }
                let barX = x(record.startedAt)
                let barWidth = max(x(record.finishedAt) - barX, 3)
                let took = record.finishedAt.timeIntervalSince(record.startedAt)
                var title =
                    "\(record.stepName) \(record.phase.rawValue) #\(record.attempt): \(record.outcome.rawValue), \(HTML.seconds(took))"
                if record.timedOut == true { title += " (timed out)" }
                if let error = record.error { title += " — \(error)" }
                svg +=
                    "<rect class=\"bar \(outcomeClass(record))\" x=\"\(f(barX))\" y=\"\(f(rowY + 6))\" width=\"\(f(barWidth))\" height=\"18\" rx=\"2\"><title>\(HTML.escape(title))</title></rect>"
                if record.outcome != .completed {
                    svg += "<text class=\"err\" x=\"\(f(barX + barWidth + 4))\" y=\"\(f(rowY + 19))\">✕ #\(record.attempt)</text>"
                }
                previousEnd = record.finishedAt
            }
        }
        // Operators and the reaper.
        if hasMarkers {
            let rowY = y(rows.count + 1)
            svg += "<text class=\"label\" x=\"8\" y=\"\(f(rowY + 19))\">operators · reaper</text>"
            for record in records where record.outcome.isOperatorAction || record.outcome == .resent {
                let mx = x(record.finishedAt)
                let cls = record.outcome == .resent ? "reaper" : "operator"
                let what: String
                switch record.outcome {
                case .retryRequested: what = "retry requested by \(record.actor ?? "?")"
                case .compensationRequested: what = "compensation requested by \(record.actor ?? "?")"
                default: what = "re-sent by the reaper"
                }
                let why = record.reason.map { ": \($0)" } ?? ""
                svg +=
                    "<path class=\"marker \(cls)\" d=\"M \(f(mx)) \(f(rowY + 5)) l 8 10 l -8 10 l -8 -10 z\"><title>\(HTML.escape(what + why)) at \(HTML.escape(HTML.time(record.finishedAt)))</title></path>"
                svg +=
                    "<text class=\"note\" x=\"\(f(mx + 11))\" y=\"\(f(rowY + 19))\">\(HTML.escape(record.actor ?? (cls == "reaper" ? "reaper" : "")))</text>"
            }
        }
        if !state.status.isTerminal {
            svg +=
                "<line class=\"now\" x1=\"\(f(x(end)))\" y1=\"\(f(top - 6))\" x2=\"\(f(x(end)))\" y2=\"\(f(height - 12))\"><title>now</title></line>"
        }
        return svg + "</svg>"
    }

    static func outcomeClass(_ record: StepRecord) -> String {
        switch record.outcome {
        case .completed: record.phase == .compensation ? "ok-comp" : "ok"
        case .retrying: "retrying"
        case .failed: "failed"
        default: "other"
        }
    }

    // MARK: - Definition graph

    /// A definition as a graph: the actions top to bottom, each compensation to the right of its
    /// step with the way back drawn dashed, the pivot marked and the steps after it forward-only.
    static func graph(_ definition: SagaDefinition) -> String {
        let boxWidth = 250.0
        let boxHeight = 48.0
        let gap = 30.0
        let left = 20.0
        let compLeft = left + boxWidth + 120
        let top = 50.0
        let count = definition.steps.count
        let height = top + Double(count) * (boxHeight + gap) + 30
        let width = compLeft + boxWidth + 20
        func y(_ index: Int) -> Double { top + Double(index) * (boxHeight + gap) }
        var svg = """
            <svg class="graph" role="img" aria-label="graph of saga definition \(HTML.escape(definition.name)) version \(definition.version)" \
            viewBox="0 0 \(Int(width)) \(Int(height))" width="\(Int(width))" xmlns="http://www.w3.org/2000/svg">
            <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">\
            <path class="arrowhead" d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>
            """
        svg += "<text class=\"axis\" x=\"\(f(left))\" y=\"22\">actions (forward)</text>"
        svg += "<text class=\"axis\" x=\"\(f(compLeft))\" y=\"22\">compensations (backward, newest first)</text>"
        svg += "<circle class=\"endpoint\" cx=\"\(f(left + boxWidth / 2))\" cy=\"\(f(top - 14))\" r=\"6\"><title>start</title></circle>"
        let pivot = definition.pivotIndex
        for (index, step) in definition.steps.enumerated() {
            let by = y(index)
            let forwardOnly = definition.isForwardOnly(index)
            let isPivot = step.options.isPivot
            let cls = isPivot ? "step pivot" : (forwardOnly ? "step forward" : "step")
            svg +=
                "<line class=\"flow\" x1=\"\(f(left + boxWidth / 2))\" y1=\"\(f(by - gap + (index == 0 ? 22 : 0)))\" x2=\"\(f(left + boxWidth / 2))\" y2=\"\(f(by))\" marker-end=\"url(#arrow)\"/>"
            svg +=
                "<rect class=\"\(cls)\" x=\"\(f(left))\" y=\"\(f(by))\" width=\"\(f(boxWidth))\" height=\"\(f(boxHeight))\" rx=\"6\"><title>\(HTML.escape(stepTitle(step, forwardOnly: forwardOnly)))</title></rect>"
            svg +=
                "<text class=\"step-name\" x=\"\(f(left + 10))\" y=\"\(f(by + 20))\">\(index + 1). \(HTML.escape(step.name))\(isPivot ? " ◆ pivot" : "")</text>"
            let detail =
                "\(step.action) · \(step.options.retry.maxAttempts)×\(step.options.timeout.map { " · \(HTML.seconds($0.consoleSeconds)) timeout" } ?? "")"
            svg += "<text class=\"step-detail\" x=\"\(f(left + 10))\" y=\"\(f(by + 38))\">\(HTML.escape(detail))</text>"
            if let compensation = step.compensation {
                svg +=
                    "<rect class=\"comp\" x=\"\(f(compLeft))\" y=\"\(f(by))\" width=\"\(f(boxWidth))\" height=\"\(f(boxHeight))\" rx=\"6\"><title>compensation of \(HTML.escape(step.name))</title></rect>"
                svg += "<text class=\"step-name\" x=\"\(f(compLeft + 10))\" y=\"\(f(by + 20))\">↩ undo \(HTML.escape(step.name))</text>"
                svg +=
                    "<text class=\"step-detail\" x=\"\(f(compLeft + 10))\" y=\"\(f(by + 38))\">\(HTML.escape(compensation)) · \(definition.compensationRetry.maxAttempts)×</text>"
                svg +=
                    "<line class=\"fail\" x1=\"\(f(left + boxWidth))\" y1=\"\(f(by + boxHeight / 2))\" x2=\"\(f(compLeft))\" y2=\"\(f(by + boxHeight / 2))\" marker-end=\"url(#arrow)\"><title>a later step fails: undo this one</title></line>"
                if index > 0, definition.steps[index - 1].compensation != nil || index > 0 {
                    // Compensation runs backward: to the previous step's compensation.
                    if let previous = definition.steps[..<index].lastIndex(where: { $0.compensation != nil }) {
                        svg +=
                            "<line class=\"back\" x1=\"\(f(compLeft + boxWidth / 2))\" y1=\"\(f(by))\" x2=\"\(f(compLeft + boxWidth / 2))\" y2=\"\(f(y(previous) + boxHeight))\" marker-end=\"url(#arrow)\"/>"
                    }
                }
            } else if !forwardOnly {
                svg += "<text class=\"note\" x=\"\(f(compLeft))\" y=\"\(f(by + 28))\">(nothing to undo)</text>"
            }
            if let pivot, index > pivot, index == pivot + 1 {
                svg +=
                    "<text class=\"note\" x=\"\(f(compLeft))\" y=\"\(f(by + 28))\">forward-only: retried until it succeeds</text>"
            }
        }
        let endY = y(count) - gap + 14
        svg +=
            "<line class=\"flow\" x1=\"\(f(left + boxWidth / 2))\" y1=\"\(f(endY - 14))\" x2=\"\(f(left + boxWidth / 2))\" y2=\"\(f(endY + 2))\" marker-end=\"url(#arrow)\"/>"
        svg +=
            "<circle class=\"endpoint done\" cx=\"\(f(left + boxWidth / 2))\" cy=\"\(f(endY + 10))\" r=\"7\"><title>completed</title></circle>"
        svg += "<text class=\"note\" x=\"\(f(left + boxWidth / 2 + 14))\" y=\"\(f(endY + 14))\">completed</text>"
        return svg + "</svg>"
    }

    static func stepTitle(_ step: SagaStep, forwardOnly: Bool) -> String {
        var parts = ["\(step.name): \(step.action)"]
        if let compensation = step.compensation { parts.append("undone by \(compensation)") }
        if step.options.isPivot { parts.append("pivot: once it succeeds the saga only goes forward") }
        if forwardOnly && !step.options.isPivot { parts.append("forward-only") }
        parts.append("up to \(step.options.retry.maxAttempts) attempts")
        return parts.joined(separator: "; ")
    }

    // MARK: - Per-minute bars

    /// Started and finished sagas per minute: two bars per minute, oldest left.
    static func perMinute(started: [Int], finished: [Int]) -> String {
        let width = 720.0
        let height = 140.0
        let bottom = height - 22
        let maximum = max(started.max() ?? 0, finished.max() ?? 0, 1)
        let slot = (width - 40) / Double(max(started.count, 1))
        var svg = """
            <svg class="chart" role="img" aria-label="sagas started and finished per minute, last hour" viewBox="0 0 \(Int(width)) \(Int(height))" \
            width="100%" xmlns="http://www.w3.org/2000/svg">
            """
        svg += "<text class=\"axis\" x=\"4\" y=\"12\">\(maximum)/min</text>"
        svg += "<line class=\"grid\" x1=\"36\" y1=\"\(f(bottom))\" x2=\"\(f(width))\" y2=\"\(f(bottom))\"/>"
        for index in started.indices {
            let bx = 40 + Double(index) * slot
            let h1 = (bottom - 18) * Double(started[index]) / Double(maximum)
            let h2 = (bottom - 18) * Double(finished[index]) / Double(maximum)
            let ago = started.count - index
            if started[index] > 0 {
                svg +=
                    "<rect class=\"started\" x=\"\(f(bx))\" y=\"\(f(bottom - h1))\" width=\"\(f(slot * 0.42))\" height=\"\(f(h1))\"><title>\(started[index]) started, \(ago) min ago</title></rect>"
            }
            if finished[index] > 0 {
                svg +=
                    "<rect class=\"finished\" x=\"\(f(bx + slot * 0.45))\" y=\"\(f(bottom - h2))\" width=\"\(f(slot * 0.42))\" height=\"\(f(h2))\"><title>\(finished[index]) finished, \(ago) min ago</title></rect>"
            }
        }
        svg += "<text class=\"axis\" x=\"40\" y=\"\(f(height - 4))\">−60 min</text>"
        svg += "<text class=\"axis\" x=\"\(f(width - 4))\" y=\"\(f(height - 4))\" text-anchor=\"end\">now</text>"
        return svg + "</svg>"
    }

    /// A number with at most one decimal for SVG attributes.
    static func f(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
    }
}

extension Duration {
    /// The duration in seconds.
    var consoleSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
