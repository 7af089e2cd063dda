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
            svg +=
                "<text class=\"label\" x=\"8\" y=\"\(f(rowY + 19))\">\(phaseMark)\(HTML.escape(names[row] ?? "step \(row.step + 1)"))</text>"
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
                if record.outcome != .completed && record.outcome != .skipped {
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
    /// A conditional step shows its condition (`when …`). The members of a parallel group stand
    /// side by side in a dashed box, between a fork bar (they start at once) and a join bar (the
    /// saga moves on when every member completed or was skipped); their compensations stand side
    /// by side too, chained right to left (newest declared first) and then to the steps before.
    ///
    /// A wait step is a pill (`◷`, `waits for signal 'x' · up to 24 h`) with its signal's name
    /// beside the arrow to what follows, and its timeout (compensate or continue) in the
    /// compensation column.
    ///
    /// With `state`, each step also shows where that saga is: completed, running (attempt),
    /// waiting for its signal, signalled (by whom), failed, skipped or compensated (the saga page
    /// draws its definition so).
    static func graph(_ definition: SagaDefinition, state: SagaState? = nil) -> String {
        let boxWidth = 250.0
        let memberWidth = 210.0
        let memberGap = 14.0
        let groupPad = 12.0
        let hasConditions = definition.steps.contains { $0.condition != nil }
        let boxHeight = hasConditions ? 62.0 : 48.0
        let gap = 30.0
        let left = 20.0
        let top = 50.0
        // The rows: a step on its own, or a parallel group's members side by side.
        let levels: [ClosedRange<Int>] = {
            var levels: [ClosedRange<Int>] = []
            var index = 0
            while index < definition.steps.count {
                let range = definition.groupRange(of: index) ?? index...index
                levels.append(range)
                index = range.upperBound + 1
            }
            return levels
        }()
        let groupHeader = 48.0  // the group's label and its fork bar, above the members
        let groupFooter = 16.0  // the join bar, below the members
        func isGroup(_ level: ClosedRange<Int>) -> Bool { definition.steps[level.lowerBound].group != nil }
        func levelWidth(_ level: ClosedRange<Int>) -> Double {
            isGroup(level) ? Double(level.count) * memberWidth + Double(level.count - 1) * memberGap + 2 * groupPad : boxWidth
        }
        func levelHeight(_ level: ClosedRange<Int>) -> Double { isGroup(level) ? groupHeader + boxHeight + groupFooter : boxHeight }
        let actionsWidth = levels.map(levelWidth).max() ?? boxWidth
        let center = left + actionsWidth / 2
        let compLeft = left + actionsWidth + 120
        var levelTops: [Double] = []
        var nextTop = top
        for level in levels {
            levelTops.append(nextTop)
            nextTop += levelHeight(level) + gap
        }
        let height = nextTop + 30
        // The compensation column: a step's compensation, or a group's compensations side by
        // side (only the members that have one).
        func compRowWidth(_ level: ClosedRange<Int>) -> Double {
            guard isGroup(level) else { return boxWidth }
            let count = Double(level.filter { definition.steps[$0].compensation != nil }.count)
            return max(0, count * memberWidth + (count - 1) * memberGap)
        }
        let compColumnWidth = max(boxWidth, levels.map(compRowWidth).max() ?? boxWidth)
        let width = compLeft + compColumnWidth + 20
        let compColumnX = compLeft + (compColumnWidth - boxWidth) / 2
        // Where each step's box stands: its left edge, top and width (compensations: shifted by
        // the column's offset).
        var boxes: [(x: Double, y: Double, width: Double)] = Array(repeating: (0, 0, 0), count: definition.steps.count)
        for (number, level) in levels.enumerated() {
            if isGroup(level) {
                let start = center - levelWidth(level) / 2 + groupPad
                for (offset, member) in level.enumerated() {
                    boxes[member] = (start + Double(offset) * (memberWidth + memberGap), levelTops[number] + groupHeader, memberWidth)
                }
            } else {
                boxes[level.lowerBound] = (center - boxWidth / 2, levelTops[number], boxWidth)
            }
        }
        var compXs: [Int: Double] = [:]
        for level in levels {
            var x = compLeft + (compColumnWidth - compRowWidth(level)) / 2
            for index in level where definition.steps[index].compensation != nil {
                compXs[index] = x
                x += boxes[index].width + memberGap
            }
        }
        let states = state.map { steps(of: $0, in: definition) } ?? [:]

        var svg = """
            <svg class="graph" role="img" aria-label="graph of saga definition \(HTML.escape(definition.name)) version \(definition.version)" \
            viewBox="0 0 \(Int(width)) \(Int(height))" width="\(Int(width))" xmlns="http://www.w3.org/2000/svg">
            <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">\
            <path class="arrowhead" d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>
            """
        svg += "<text class=\"axis\" x=\"\(f(left))\" y=\"22\">actions (forward)</text>"
        svg += "<text class=\"axis\" x=\"\(f(compLeft))\" y=\"22\">compensations (backward, newest first)</text>"
        svg += "<circle class=\"endpoint\" cx=\"\(f(center))\" cy=\"\(f(top - 14))\" r=\"6\"><title>start</title></circle>"
        let pivot = definition.pivotIndex
        var previousBottom = top - 8
        for (number, level) in levels.enumerated() {
            let levelTop = levelTops[number]
            svg +=
                "<line class=\"flow\" x1=\"\(f(center))\" y1=\"\(f(number == 0 ? previousBottom : levelTop - gap))\" x2=\"\(f(center))\" y2=\"\(f(levelTop))\" marker-end=\"url(#arrow)\"/>"
            if isGroup(level) {
                let name = definition.steps[level.lowerBound].group ?? ""
                let groupLeft = center - levelWidth(level) / 2
                let forkY = levelTop + 24
                let joinY = levelTop + groupHeader + boxHeight + 10
                let firstCenter = boxes[level.lowerBound].x + memberWidth / 2
                let lastCenter = boxes[level.upperBound].x + memberWidth / 2
                svg +=
                    "<rect class=\"group\" x=\"\(f(groupLeft))\" y=\"\(f(levelTop))\" width=\"\(f(levelWidth(level)))\" height=\"\(f(levelHeight(level)))\" rx=\"8\"><title>parallel group \(HTML.escape(name)): its members start at once; the saga moves on when every member completed or was skipped; when one fails for good, the group waits for the others, then the completed members and the steps before are compensated</title></rect>"
                svg +=
                    "<text class=\"group-name\" x=\"\(f(groupLeft + 8))\" y=\"\(f(levelTop + 15))\">‖ parallel group \(HTML.escape(name))</text>"
                svg +=
                    "<line class=\"fork\" x1=\"\(f(firstCenter))\" y1=\"\(f(forkY))\" x2=\"\(f(lastCenter))\" y2=\"\(f(forkY))\"><title>fork: every member whose condition holds starts at once</title></line>"
                svg +=
                    "<line class=\"fork\" x1=\"\(f(firstCenter))\" y1=\"\(f(joinY))\" x2=\"\(f(lastCenter))\" y2=\"\(f(joinY))\"><title>join: every member completed or was skipped</title></line>"
                svg +=
                    "<line class=\"flow\" x1=\"\(f(center))\" y1=\"\(f(levelTop))\" x2=\"\(f(center))\" y2=\"\(f(forkY))\"/>"
                for member in level {
                    let memberCenter = boxes[member].x + memberWidth / 2
                    svg +=
                        "<line class=\"flow\" x1=\"\(f(memberCenter))\" y1=\"\(f(forkY))\" x2=\"\(f(memberCenter))\" y2=\"\(f(boxes[member].y))\" marker-end=\"url(#arrow)\"/>"
                    svg +=
                        "<line class=\"flow\" x1=\"\(f(memberCenter))\" y1=\"\(f(boxes[member].y + boxHeight))\" x2=\"\(f(memberCenter))\" y2=\"\(f(joinY))\"/>"
                }
                svg +=
                    "<line class=\"flow\" x1=\"\(f(center))\" y1=\"\(f(joinY))\" x2=\"\(f(center))\" y2=\"\(f(levelTop + levelHeight(level)))\"/>"
            }
            previousBottom = levelTop + levelHeight(level)
            for index in level {
                let step = definition.steps[index]
                let box = boxes[index]
                let by = box.y
                let forwardOnly = definition.isForwardOnly(index)
                let isPivot = step.options.isPivot
                var cls = isPivot ? "step pivot" : (step.wait != nil ? "step wait" : (forwardOnly ? "step forward" : "step"))
                if step.condition != nil { cls += " conditional" }
                if step.group != nil { cls += " member" }
                if let shown = states[index] { cls += " st-\(shown.cls)" }
                // A wait step is a pill: it runs no command, it waits for a signal.
                svg +=
                    "<rect class=\"\(cls)\" x=\"\(f(box.x))\" y=\"\(f(by))\" width=\"\(f(box.width))\" height=\"\(f(boxHeight))\" rx=\"\(step.wait != nil ? "22" : "6")\" data-step=\"\(HTML.escape(step.name))\"><title>\(HTML.escape(stepTitle(step, forwardOnly: forwardOnly)))</title></rect>"
                svg +=
                    "<text class=\"step-name\" x=\"\(f(box.x + 10))\" y=\"\(f(by + 20))\">\(index + 1). \(step.wait != nil ? "◷ " : "")\(HTML.escape(step.name))\(isPivot ? " ◆ pivot" : "")</text>"
                if let wait = step.wait {
                    let detail = "waits for signal '\(wait.signal)' · up to \(HTML.duration(wait.timeout.seconds))"
                    // Long signal names are squeezed into the box (about 5.6 px a character at 10 px).
                    let fit =
                        Double(detail.count) * 5.6 > box.width - 20
                        ? " textLength=\"\(f(box.width - 20))\" lengthAdjust=\"spacingAndGlyphs\"" : ""
                    svg += "<text class=\"step-wait\" x=\"\(f(box.x + 10))\" y=\"\(f(by + 38))\"\(fit)>\(HTML.escape(detail))</text>"
                    // The signal leads on: its name beside the arrow to what follows.
                    svg +=
                        "<text class=\"signal\" x=\"\(f(center + 8))\" y=\"\(f(by + boxHeight + 19))\">signal '\(HTML.escape(wait.signal))'</text>"
                } else {
                    let detail =
                        "\(step.action) · \(step.options.retry.maxAttempts)×\(step.options.timeout.map { " · \(HTML.seconds($0.consoleSeconds)) timeout" } ?? "")"
                    svg += "<text class=\"step-detail\" x=\"\(f(box.x + 10))\" y=\"\(f(by + 38))\">\(HTML.escape(detail))</text>"
                }
                if let condition = step.condition {
                    svg +=
                        "<text class=\"step-when\" x=\"\(f(box.x + 10))\" y=\"\(f(by + 54))\">when \(HTML.escape(condition.description))</text>"
                }
                if let shown = states[index] {
                    svg +=
                        "<text class=\"step-state st-\(shown.cls)\" x=\"\(f(box.x + box.width - 4))\" y=\"\(f(by - 3))\" text-anchor=\"end\">\(HTML.escape(shown.text))</text>"
                }
                let compX = compXs[index] ?? compColumnX
                if let compensation = step.compensation {
                    let undone = states[index]?.cls == "compensated" ? " st-compensated" : ""
                    svg +=
                        "<rect class=\"comp\(undone)\" x=\"\(f(compX))\" y=\"\(f(by))\" width=\"\(f(box.width))\" height=\"\(f(boxHeight))\" rx=\"6\"><title>compensation of \(HTML.escape(step.name))\(step.group != nil ? " (if it completed, or timed out)" : "")</title></rect>"
                    svg += "<text class=\"step-name\" x=\"\(f(compX + 10))\" y=\"\(f(by + 20))\">↩ undo \(HTML.escape(step.name))</text>"
                    svg +=
                        "<text class=\"step-detail\" x=\"\(f(compX + 10))\" y=\"\(f(by + 38))\">\(HTML.escape(compensation)) · \(definition.compensationRetry.maxAttempts)×</text>"
                    if step.group == nil {
                        svg +=
                            "<line class=\"fail\" x1=\"\(f(box.x + box.width))\" y1=\"\(f(by + boxHeight / 2))\" x2=\"\(f(compX))\" y2=\"\(f(by + boxHeight / 2))\" marker-end=\"url(#arrow)\"><title>a later step fails: undo this one</title></line>"
                    }
                    // Compensation runs backward: to the previous step's compensation (in a
                    // group, from right to left, then up to the steps before).
                    if let previous = definition.steps[..<index].lastIndex(where: { $0.compensation != nil }) {
                        let target = boxes[previous]
                        if definition.groupRange(of: index)?.contains(previous) == true {
                            svg +=
                                "<line class=\"back\" x1=\"\(f(compX))\" y1=\"\(f(by + boxHeight / 2))\" x2=\"\(f((compXs[previous] ?? compColumnX) + target.width))\" y2=\"\(f(target.y + boxHeight / 2))\" marker-end=\"url(#arrow)\"/>"
                        } else {
                            svg +=
                                "<line class=\"back\" x1=\"\(f(compX + box.width / 2))\" y1=\"\(f(by))\" x2=\"\(f((compXs[previous] ?? compColumnX) + target.width / 2))\" y2=\"\(f(target.y + boxHeight))\" marker-end=\"url(#arrow)\"/>"
                        }
                    }
                } else if let wait = step.wait {
                    // The timeout: compensate the steps before, or continue without the signal.
                    let what =
                        wait.onTimeout == .compensate
                        ? "timeout (\(HTML.duration(wait.timeout.seconds))): compensate the steps before"
                        : "timeout (\(HTML.duration(wait.timeout.seconds))): continue without the signal"
                    svg +=
                        "<line class=\"timeout\" x1=\"\(f(box.x + box.width))\" y1=\"\(f(by + boxHeight / 2))\" x2=\"\(f(compX - 6))\" y2=\"\(f(by + boxHeight / 2))\" marker-end=\"url(#arrow)\"><title>no signal '\(HTML.escape(wait.signal))' in time: the reaper ends the wait at its first pass after the timeout</title></line>"
                    svg +=
                        "<text class=\"note timeout-note\" x=\"\(f(compX))\" y=\"\(f(by + boxHeight / 2 + 4))\">◷ \(HTML.escape(what))</text>"
                } else if !forwardOnly && step.group == nil {
                    svg += "<text class=\"note\" x=\"\(f(compX))\" y=\"\(f(by + 28))\">(nothing to undo)</text>"
                }
                if let pivot, index > pivot, index == pivot + 1, step.wait == nil {
                    svg +=
                        "<text class=\"note\" x=\"\(f(compX))\" y=\"\(f(by + 28))\">forward-only: retried until it succeeds</text>"
                }
            }
            if isGroup(level), !definition.isForwardOnly(level.lowerBound),
                level.contains(where: { definition.steps[$0].compensation != nil })
            {
                // One failure line for the group: a member failing (or a later step) undoes the
                // completed members.
                let y = levelTop + groupHeader + boxHeight / 2
                svg +=
                    "<line class=\"fail\" x1=\"\(f(center + levelWidth(level) / 2))\" y1=\"\(f(y))\" x2=\"\(f(level.compactMap { compXs[$0] }.min() ?? compColumnX))\" y2=\"\(f(y))\" marker-end=\"url(#arrow)\"><title>a member fails (the group waits for the others) or a later step fails: undo the completed members, newest declared first</title></line>"
            }
        }
        let endY = nextTop - gap + 14
        svg +=
            "<line class=\"flow\" x1=\"\(f(center))\" y1=\"\(f(endY - 14))\" x2=\"\(f(center))\" y2=\"\(f(endY + 2))\" marker-end=\"url(#arrow)\"/>"
        svg +=
            "<circle class=\"endpoint done\" cx=\"\(f(center))\" cy=\"\(f(endY + 10))\" r=\"7\"><title>completed</title></circle>"
        svg += "<text class=\"note\" x=\"\(f(center + 14))\" y=\"\(f(endY + 14))\">completed</text>"
        return svg + "</svg>"
    }

    /// Where a saga stands at each step it reached: a class (`completed`, `running`, `failed`,
    /// `skipped`, `compensated`, `compensating`) and a short text. The members of a parallel
    /// group it runs take their progress from ``SagaStateMachine/progress(of:in:)``.
    static func steps(of state: SagaState, in definition: SagaDefinition) -> [Int: (cls: String, text: String)] {
        let machine = SagaStateMachine(definition: definition)
        let group = ConsoleGroup(state, definition: definition)
        var result: [Int: (cls: String, text: String)] = [:]
        for index in definition.steps.indices {
            let records = state.history.filter { $0.step == index }
            let compensation = records.last { $0.phase == .compensation && !$0.outcome.isOperatorAction }
            if compensation?.outcome == .completed {
                result[index] = ("compensated", "↩ compensated")
            } else if state.status == .compensating, state.currentStep == index {
                result[index] = ("compensating", "↩ compensating #\(state.attempt)")
            } else if state.status == .needsAttention, compensation != nil, state.currentStep == index {
                result[index] = ("failed", "↩ compensation stopped")
            } else if group?.steps.contains(index) == true {
                result[index] = describe(machine.progress(of: index, in: state))
            } else if state.status == .waiting, state.currentStep == index {
                result[index] = ("waiting", "◷ waiting for its signal")
            } else if definition.steps[index].wait != nil,
                let signal = records.last(where: { $0.phase == .action && $0.outcome == .completed })
            {
                result[index] = ("completed", "✓ signalled by \(signal.actor ?? "?")")
            } else if state.status == .running, state.currentStep == index {
                result[index] = ("running", "running #\(state.attempt)")
            } else if state.status == .needsAttention, state.currentStep == index {
                result[index] = ("failed", "stopped #\(state.attempt)")
            } else if records.contains(where: { $0.phase == .action }) {
                let progress = machine.progress(of: index, in: state)
                if case .running = progress { continue }  // not current: nothing to say
                result[index] = describe(progress)
            }
        }
        return result
    }

    /// A parallel-group member's progress as a class and a short text.
    static func describe(_ progress: ParallelMemberProgress) -> (cls: String, text: String) {
        switch progress {
        case .running(let attempt): ("running", "running #\(attempt)")
        case .completed: ("completed", "✓ completed")
        case .failed(let uncertain): ("failed", uncertain ? "✕ timed out" : "✕ failed")
        case .skipped: ("skipped", "skipped")
        }
    }

    static func stepTitle(_ step: SagaStep, forwardOnly: Bool) -> String {
        if let wait = step.wait {
            var parts = [
                "\(step.name): waits for signal '\(wait.signal)' (saga signal ID \(wait.signal)), up to \(HTML.duration(wait.timeout.seconds))",
                wait.onTimeout == .compensate
                    ? "then the steps before are compensated" : "then the saga goes on without it (the wait is recorded as skipped)",
            ]
            if let condition = step.condition { parts.append("waits only when \(condition) (skipped otherwise)") }
            return parts.joined(separator: "; ")
        }
        var parts = ["\(step.name): \(step.action)"]
        if let compensation = step.compensation { parts.append("undone by \(compensation)") }
        if step.options.isPivot { parts.append("pivot: once it succeeds the saga only goes forward") }
        if forwardOnly && !step.options.isPivot { parts.append("forward-only") }
        if let condition = step.condition { parts.append("runs only when \(condition) (skipped otherwise, and never compensated)") }
        if let group = step.group { parts.append("member of parallel group \(group): runs at once with the other members") }
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
