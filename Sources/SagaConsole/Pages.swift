import Foundation
import Participant

/// The console's pages, rendered on the server.
struct Pages: Sendable {
    let configuration: SagaConsoleConfiguration
    let backend: SagaConsoleBackend
    let security: ConsoleSecurity
    let redactor: Redactor

    /// The operator's session for the request being rendered, if any.
    typealias Session = ConsoleSecurity.Session

    // MARK: - Layout

    /// The page around `body`. `refresh: false` keeps live events from fetching the page again
    /// (the dead-letter page, whose reading takes messages from the queue for a moment).
    func layout(
        title: String, active: String, session: Session?, sagaID: String? = nil, flash: String? = nil, refresh: Bool = true, body: String
    ) -> String {
        func tab(_ path: String, _ name: String, _ key: String) -> String {
            "<a href=\"\(path)\"\(key == active ? " class=\"active\"" : "")>\(name)</a>"
        }
        let mode: String
        if !security.actionsEnabled {
            mode = "<span class=\"mode ro\" title=\"start with --token-file or SAGAKIT_CONSOLE_TOKEN to enable actions\">read-only</span>"
        } else if let session {
            mode = """
                <span class="mode op">operator <b id="operator-name">\(HTML.escape(session.name))</b></span>\
                <form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="\(session.csrf)">\
                <button class="link">log out</button></form>
                """
        } else {
            mode = "<a class=\"mode\" href=\"/login\">\(configuration.readAccess == .operators ? "log in" : "log in to act")</a>"
        }
        // Someone not logged in to a console for operators only sees nothing of the deployment.
        let hidden = configuration.readAccess == .operators && session == nil
        let store = configuration.storeDescription.isEmpty || hidden ? "" : " · " + HTML.escape(configuration.storeDescription)
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(HTML.escape(title)) · saga console</title>
            <link rel="stylesheet" href="/assets/console.css"><script src="/assets/console.js" defer></script></head>
            <body data-saga="\(HTML.escape(sagaID ?? ""))" data-refresh="\(refresh ? "on" : "off")">
            <header><a class="brand" href="/">saga console</a>
            <nav>\(tab("/", "Overview", "overview"))\(tab("/sagas", "Sagas", "sagas"))\(tab("/definitions", "Definitions", "definitions"))\(tab("/services", "Services", "services"))\
            \(tab("/dlq", "Dead letters", "dlq"))</nav>
            <span class="where">prefix \(HTML.escape(configuration.prefix))\(store)</span>
            <span id="live-status" class="live off" title="live updates from the saga lifecycle events">live</span>
            \(mode)</header>
            \(flash.map { "<p class=\"flash\" id=\"flash\">\(HTML.escape($0))</p>" } ?? "")
            <main id="live">\(body)</main>
            <aside id="events"><h3>Live events</h3><ol id="event-log"></ol></aside>
            </body></html>
            """
    }

    func errorPage(_ message: String, session: Session?, back: String = "/") -> String {
        layout(
            title: "Error", active: "", session: session,
            body:
                "<h1>Could not do that</h1><p class=\"error\" id=\"error\">\(HTML.escape(message))</p><p><a href=\"\(HTML.escape(back))\">back</a></p>"
        )
    }

    // MARK: - Overview

    func overview(session: Session?, now: Date = Date()) async throws -> String {
        let store = backend.store
        let counts = try await store.countByStatus(name: nil, topology: configuration.prefix)
        let stalledBefore = now.addingTimeInterval(-configuration.stalledThreshold.consoleSeconds)
        let attention = try await store.list(SagaQuery(statuses: [.needsAttention], topology: configuration.prefix, limit: 20))
        let stalled = try await store.listStalled(
            SagaQuery(statuses: [.running, .compensating], topology: configuration.prefix, limit: 20), noProgressSince: stalledBefore)
        let stuck = try await store.list(
            SagaQuery(
                statuses: [.running, .compensating], minimumAttempt: configuration.stuckAttempts, topology: configuration.prefix, limit: 20)
        )
        let sampleLimit = 5000
        let recent = try await store.list(SagaQuery(topology: configuration.prefix, limit: sampleLimit))
        let hourAgo = now.addingTimeInterval(-3600)
        let registry = try? await backend.definitions()
        var names = Set(recent.map(\.name))
        if let stored = try? await store.definitions() { names.formUnion(stored.map(\.name)) }

        var html = "<h1>Overview</h1>"
        // Status cards.
        html += "<section class=\"cards\" id=\"status-cards\">"
        for status in [SagaStatus.needsAttention, .running, .waiting, .compensating, .completed, .compensated] {
            html +=
                "<a class=\"card st-\(status.consoleName)\" href=\"/sagas?status=\(status.consoleName)\"><span class=\"n\">\(counts[status] ?? 0)</span><span>\(status.consoleName)</span></a>"
        }
        html += "</section>"

        // What needs someone first.
        html += "<section class=\"attention\" id=\"needs-attention\"><h2>Needs attention (\(attention.count))</h2>"
        html += attention.isEmpty ? "<p class=\"quiet\">none</p>" : sagaTable(attention, now: now, showReason: true, registry: registry)
        html += "</section>"
        html +=
            "<section class=\"attention\" id=\"stalled\"><h2>Stalled: no progress for \(HTML.seconds(configuration.stalledThreshold.consoleSeconds)) (\(stalled.count))</h2>"
        html += stalled.isEmpty ? "<p class=\"quiet\">none</p>" : sagaTable(stalled, now: now, showReason: true, registry: registry)
        html += "</section>"
        html +=
            "<section class=\"attention\" id=\"stuck\"><h2>Stuck retrying: attempt \(configuration.stuckAttempts) or more (\(stuck.count))</h2>"
        html +=
            stuck.isEmpty
            ? "<p class=\"quiet\">none</p>" : sagaTable(stuck, now: now, showReason: true, lastError: true, registry: registry)
        html += "</section>"

        // By definition.
        html += "<section id=\"by-definition\"><h2>By definition</h2>"
        var rows: [[String]] = []
        for name in names.sorted() {
            let byStatus = try await store.countByStatus(name: name, topology: configuration.prefix)
            var row = ["<a href=\"/definitions/\(HTML.urlComponent(name))\">\(HTML.escape(name))</a>"]
            for status in SagaStatus.allCases {
                let count = byStatus[status] ?? 0
                row.append(
                    count == 0
                        ? "<span class=\"quiet\">0</span>"
                        : "<a href=\"/sagas?name=\(HTML.urlComponent(name))&status=\(status.consoleName)\">\(count)</a>")
            }
            rows.append(row)
        }
        html += HTML.table(["definition"] + SagaStatus.allCases.map(\.consoleName), rows, classes: "numbers")
        html += "</section>"

        // The last hour.
        var started = [Int](repeating: 0, count: 60)
        var finished = [Int](repeating: 0, count: 60)
        func minute(_ date: Date) -> Int? {
            let index = 59 - Int(now.timeIntervalSince(date) / 60)
            return (0..<60).contains(index) ? index : nil
        }
        var durations: [String: [SagaStatus: [Double]]] = [:]
        for saga in recent {
            if let index = minute(saga.createdAt) { started[index] += 1 }
            if saga.status == .completed || saga.status == .compensated, saga.updatedAt >= hourAgo {
                if let index = minute(saga.updatedAt) { finished[index] += 1 }
                durations[saga.name, default: [:]][saga.status, default: []].append(saga.updatedAt.timeIntervalSince(saga.createdAt))
            }
        }
        html += "<section id=\"last-hour\"><h2>Last hour</h2>"
        html +=
            "<p><span class=\"key started\"></span> started \(started.reduce(0, +)) · <span class=\"key finished\"></span> finished \(finished.reduce(0, +))"
        if recent.count == sampleLimit { html += " <span class=\"quiet\">(from the \(sampleLimit) most recently updated sagas)</span>" }
        html += "</p>" + SVG.perMinute(started: started, finished: finished)
        var latencyRows: [[String]] = []
        for name in durations.keys.sorted() {
            for status in [SagaStatus.completed, .compensated] {
                guard let values = durations[name]?[status], !values.isEmpty else { continue }
                let sorted = values.sorted()
                func percentile(_ q: Double) -> String {
                    HTML.seconds(sorted[min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))])
                }
                latencyRows.append([
                    HTML.escape(name), HTML.badge(status), "\(sorted.count)", percentile(0.5), percentile(0.9), percentile(0.99),
                    HTML.seconds(sorted.last ?? 0),
                ])
            }
        }
        html += "<h3>Latency of sagas finished in the last hour (start to end)</h3>"
        html +=
            latencyRows.isEmpty
            ? "<p class=\"quiet\">no saga finished in the last hour</p>"
            : HTML.table(["definition", "outcome", "sagas", "p50", "p90", "p99", "max"], latencyRows, classes: "numbers latency")
        html += "</section>"
        return layout(title: "Overview", active: "overview", session: session, body: html)
    }

    /// Sagas as a table with links.
    func sagaTable(
        _ sagas: [SagaState], now: Date, showReason: Bool = false, lastError: Bool = false, registry: SagaDefinitionRegistry? = nil
    ) -> String {
        var header = ["id", "definition", "status", "at", "started", "updated", "duration"]
        if showReason { header.append(lastError ? "last error" : "reason") }
        let rows = sagas.map { saga -> [String] in
            let end = saga.status.isTerminal ? saga.updatedAt : now
            var row = [
                HTML.sagaLink(saga.id),
                "<a href=\"/definitions/\(HTML.urlComponent(saga.name))?version=\(saga.definitionVersion)\">\(HTML.escape(saga.name))</a> v\(saga.definitionVersion)",
                HTML.badge(saga.status), saga.status.hasEnded ? "–" : HTML.escape(position(saga, registry: registry)),
                age(saga.createdAt, now: now),
                age(saga.updatedAt, now: now),
                HTML.seconds(end.timeIntervalSince(saga.createdAt)),
            ]
            if showReason {
                let text = lastError ? (saga.history.last { $0.error != nil }?.error ?? "") : (saga.failureReason ?? "")
                row.append("<span class=\"reason\">\(HTML.escape(text))</span>")
            }
            return row
        }
        return HTML.table(header, rows, classes: "sagas")
    }

    /// `book-hotel (action #2)`: the step's name from the saga's definition or its history; for a
    /// saga that needs attention, the phase it stopped in; for a saga in a parallel group, each
    /// member's progress (`parallel group 'prepare': reserve-stock completed, authorize-payment
    /// running (attempt 2)`); for a saga waiting for a signal, the signal and until when (`step 2
    /// 'fraud-review' for signal 'fraud.approved' until … (in 23 h 59 min)`).
    func position(_ saga: SagaState, registry: SagaDefinitionRegistry? = nil, now: Date = Date()) -> String {
        let last = saga.history.last { $0.step == saga.currentStep }
        let definition = registry?.definition(named: saga.name, version: saga.definitionVersion)
        if let definition, let group = ConsoleGroup(saga, definition: definition) { return group.text }
        if let definition, let wait = ConsoleWait(saga, definition: definition) { return wait.text(now: now) }
        let name =
            definition.flatMap { $0.steps.indices.contains(saga.currentStep) ? $0.steps[saga.currentStep].name : nil } ?? last?.stepName
            ?? "step \(saga.currentStep + 1)"
        let phase = saga.status == .needsAttention ? (last?.phase ?? saga.phase) : saga.phase
        return "\(name) (\(phase.rawValue) #\(saga.attempt))"
    }

    // MARK: - List

    func list(query parameters: [String: [String]], session: Session?, now: Date = Date()) async throws -> String {
        func value(_ key: String) -> String? { parameters[key]?.last.flatMap { $0.isEmpty ? nil : $0 } }
        let statuses = Set(
            (parameters["status"] ?? []).flatMap { $0.split(separator: ",") }.compactMap { SagaStatus(consoleName: String($0)) })
        let name = value("name")
        let version = value("version").flatMap(Int.init)
        let stalled = value("stalled") != nil
        let stuck = value("stuck") != nil
        let search = value("q")
        let ageMinutes = value("age").flatMap(Double.init)
        let limit = min(max(value("limit").flatMap(Int.init) ?? 100, 1), 1000)

        var wanted = statuses
        if stalled || stuck {
            wanted = wanted.isEmpty ? [.running, .compensating] : wanted.intersection([.running, .compensating])
        }
        let filtering = search != nil || ageMinutes != nil
        let query = SagaQuery(
            statuses: wanted.isEmpty && !(stalled || stuck) ? nil : wanted, name: name, definitionVersion: version,
            minimumAttempt: stuck ? configuration.stuckAttempts : nil, topology: configuration.prefix, limit: filtering ? 5000 : limit)
        var sagas: [SagaState] = []
        if !((stalled || stuck) && wanted.isEmpty) {
            sagas =
                stalled
                ? try await backend.store.listStalled(
                    query, noProgressSince: now.addingTimeInterval(-configuration.stalledThreshold.consoleSeconds))
                : try await backend.store.list(query)
        }
        if let ageMinutes {
            let since = now.addingTimeInterval(-ageMinutes * 60)
            sagas = sagas.filter { $0.createdAt >= since }
        }
        if let search = search?.lowercased() {
            sagas = sagas.filter { saga in
                saga.id.lowercased().contains(search) || saga.name.lowercased().contains(search)
                    || (saga.failureReason ?? "").lowercased().contains(search)
                    || Redactor.pretty(.object(redactor.redact(saga.payload))).lowercased().contains(search)
            }
        }
        sagas = Array(sagas.prefix(limit))
        let registry = try? await backend.definitions()
        var names: [String] = []
        if let stored = try? await backend.store.definitions() { names = Array(Set(stored.map(\.name))).sorted() }

        var html = "<h1>Sagas</h1><form class=\"filters\" method=\"get\" action=\"/sagas\" id=\"filters\">"
        html += "<input type=\"search\" name=\"q\" placeholder=\"search id, payload, reason\" value=\"\(HTML.escape(search ?? ""))\">"
        html += "<fieldset><legend>status</legend>"
        for status in SagaStatus.allCases {
            html +=
                "<label><input type=\"checkbox\" name=\"status\" value=\"\(status.consoleName)\"\(statuses.contains(status) ? " checked" : "")> \(status.consoleName)</label>"
        }
        html += "</fieldset><label>definition <select name=\"name\"><option value=\"\">any</option>"
        for candidate in names {
            html += "<option\(candidate == name ? " selected" : "")>\(HTML.escape(candidate))</option>"
        }
        html += "</select></label>"
        html +=
            "<label>version <input type=\"number\" min=\"1\" name=\"version\" value=\"\(version.map(String.init) ?? "")\" class=\"short\"></label>"
        html += "<label>started within <select name=\"age\">"
        for (minutes, text) in [("", "any time"), ("5", "5 min"), ("60", "1 hour"), ("1440", "1 day"), ("10080", "1 week")] {
            html += "<option value=\"\(minutes)\"\(value("age") == (minutes.isEmpty ? nil : minutes) ? " selected" : "")>\(text)</option>"
        }
        html += "</select></label>"
        html += "<label><input type=\"checkbox\" name=\"stalled\" value=\"1\"\(stalled ? " checked" : "")> stalled</label>"
        html += "<label><input type=\"checkbox\" name=\"stuck\" value=\"1\"\(stuck ? " checked" : "")> stuck retrying</label>"
        html += "<button>filter</button> <a href=\"/sagas\">clear</a></form>"
        html += "<p class=\"count\" id=\"match-count\">\(sagas.count) saga(s)\(sagas.count == limit ? " (limit \(limit))" : "")</p>"
        html += sagas.isEmpty ? "<p class=\"quiet\">no sagas match</p>" : sagaTable(sagas, now: now, showReason: true, registry: registry)
        return layout(title: "Sagas", active: "sagas", session: session, body: html)
    }

    // MARK: - One saga

    func saga(_ id: String, session: Session?, flash: String?, now: Date = Date()) async throws -> String {
        let state = try await backend.store.load(id)
        let next = await backend.next(state)
        let registry = try? await backend.definitions()
        let end = state.status.isTerminal ? state.updatedAt : now
        var html = "<h1>Saga <span class=\"mono\" id=\"saga-id\">\(HTML.escape(state.id))</span> \(HTML.badge(state.status))</h1>"
        let trace = Self.traceID(state.context["traceparent"])
        html += "<dl class=\"facts\">"
        html +=
            "<dt>definition</dt><dd><a href=\"/definitions/\(HTML.urlComponent(state.name))?version=\(state.definitionVersion)\">\(HTML.escape(state.name)) version \(state.definitionVersion)</a></dd>"
        html +=
            "<dt>status</dt><dd id=\"saga-status\">\(HTML.escape(state.status.consoleName))\(state.status.isTerminal ? "" : " at " + HTML.escape(position(state, registry: registry)))</dd>"
        html += "<dt>started</dt><dd>\(HTML.escape(HTML.time(state.createdAt))) (\(age(state.createdAt, now: now)))</dd>"
        html += "<dt>updated</dt><dd>\(HTML.escape(HTML.time(state.updatedAt))) (\(age(state.updatedAt, now: now)))</dd>"
        html +=
            "<dt>\(state.status.isTerminal ? "took" : "running for")</dt><dd>\(HTML.seconds(end.timeIntervalSince(state.createdAt)))</dd>"
        if let reason = state.failureReason {
            html += "<dt>reason</dt><dd class=\"reason\" id=\"failure-reason\">\(HTML.escape(reason))</dd>"
        }
        if let deadline = state.deadline { html += "<dt>deadline</dt><dd>\(HTML.escape(HTML.time(deadline)))</dd>" }
        html +=
            "<dt>trace id</dt><dd class=\"mono\" id=\"trace-id\">\(trace.map(HTML.escape) ?? "<span class=\"quiet\">none (no traceparent in the context)</span>")</dd>"
        html +=
            "<dt>version</dt><dd>\(state.version)\(state.reapAttempts > 0 ? " · re-sent by the reaper \(state.reapAttempts) time(s)" : "")</dd>"
        html += "</dl>"
        let definition = registry?.definition(named: state.name, version: state.definitionVersion)
        if let definition, let group = ConsoleGroup(state, definition: definition) {
            html +=
                "<section id=\"parallel-group\"><h2>Parallel group \(HTML.escape(group.name))</h2><ul class=\"members\">"
                + group.members.map { member in
                    let cls = SVG.describe(member.progress).cls
                    return
                        "<li class=\"member st-\(cls)\" data-step=\"\(HTML.escape(member.name))\"><b>\(HTML.escape(member.name))</b> \(HTML.escape(ConsoleGroup.describe(member.progress)))</li>"
                }.joined() + "</ul></section>"
        }
        let wait = definition.flatMap { ConsoleWait(state, definition: $0) }
        if let definition, let wait {
            html += waitSection(state, wait: wait, definition: definition, now: now)
        }

        html +=
            "<section class=\"next \(HTML.escape(next.kind))\" id=\"next\"><h2>What happens next</h2><p><b>\(HTML.escape(next.summary))</b></p>"
        let rest = next.text.split(separator: "\n").dropFirst()
        if !rest.isEmpty { html += "<ul>" + rest.map { "<li>\(HTML.escape(String($0)))</li>" }.joined() + "</ul>" }
        html += "</section>"
        html += actions(for: state, next: next, wait: wait, session: session)

        html += "<section id=\"timeline\"><h2>Timeline</h2>"
        html +=
            "<p class=\"legend\"><span class=\"key ok\"></span> action <span class=\"key ok-comp\"></span> compensation <span class=\"key retrying\"></span> failed, retried <span class=\"key failed\"></span> failed <span class=\"key wait\"></span> waiting (queue, retry delay) <span class=\"key operator\"></span> operator <span class=\"key reaper\"></span> reaper</p>"
        html += SVG.gantt(state, now: now)
        html += timelineTable(state, definition: definition)
        html += "</section>"
        if let definition {
            html +=
                "<section id=\"steps\"><h2>Steps</h2><p class=\"quiet\">where this saga is in its definition</p><div class=\"graph-box\">"
                + SVG.graph(definition, state: state) + "</div></section>"
        }

        html +=
            "<section class=\"two\"><div><h2>Payload</h2><pre id=\"payload\">\(HTML.escape(Redactor.pretty(.object(redactor.redact(state.payload)))))</pre></div>"
        let context = redactor.redact(state.context).sorted { $0.key < $1.key }
        html +=
            "<div><h2>Context</h2>"
            + HTML.table(
                ["key", "value"],
                context.map {
                    ["<span class=\"mono\">\(HTML.escape($0.key))</span>", "<span class=\"mono\">\(HTML.escape($0.value))</span>"]
                }, classes: "context") + "</div></section>"
        return layout(title: "Saga \(state.id)", active: "sagas", session: session, sagaID: state.id, flash: flash, body: html)
    }

    /// What a waiting saga waits for, until when, the command that approves, what rejects and
    /// what the timeout does.
    func waitSection(_ state: SagaState, wait: ConsoleWait, definition: SagaDefinition, now: Date) -> String {
        let timeout = HTML.duration(wait.wait.timeout.seconds)
        let atTimeout =
            wait.wait.onTimeout == .compensate
            ? "the saga is compensated (the steps before the wait, newest first)"
            : "the saga goes on without it (the wait is recorded as skipped)"
        var html = "<section id=\"wait\" class=\"wait\"><h2>Waiting for signal <code>\(HTML.escape(wait.wait.signal))</code></h2>"
        html +=
            "<p id=\"wait-until\">step \(wait.step + 1) <b>\(HTML.escape(wait.stepName))</b> waits until <b>\(HTML.escape(wait.until.formatted(.iso8601)))</b> (\(HTML.escape(wait.remaining(now: now)))): up to \(HTML.escape(timeout)) after it began to wait.</p><ul>"
        html +=
            "<li>to approve: <code id=\"signal-command\">\(HTML.escape(wait.signalCommand(state.id)))</code> (the data is merged into the saga's payload, and the saga goes on)\(backend.signal == nil ? "" : ", or Signal below")</li>"
        if !definition.isForwardOnly(wait.step) {
            html += "<li>to reject: <code>\(HTML.escape("saga compensate \(state.id) --reason …"))</code>, or Compensate below</li>"
        }
        html +=
            "<li>at the timeout without the signal, \(atTimeout); the reaper ends an expired wait at its first pass after the timeout</li></ul></section>"
        return html
    }

    /// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
    static func traceID(_ traceparent: String?) -> String? {
        guard let traceparent else { return nil }
        let parts = traceparent.split(separator: "-")
        return parts.count >= 2 ? String(parts[1]) : traceparent
    }

    /// The history as a table; with the saga's definition, a wait step's signal says who sent it
    /// and how long the saga waited.
    func timelineTable(_ state: SagaState, definition: SagaDefinition? = nil) -> String {
        var rows: [[String]] = [["+0 ms", "", "", "saga started", "", "", ""]]
        for record in state.history {
            let offset = "+" + HTML.seconds(record.finishedAt.timeIntervalSince(state.createdAt))
            let isWait = definition.map { $0.steps.indices.contains(record.step) && $0.steps[record.step].wait != nil } ?? false
            if isWait && record.outcome == .completed && record.phase == .action {
                let early = record.reason?.hasSuffix("before the saga reached the wait") == true
                rows.append([
                    offset, HTML.escape(record.stepName), "signal",
                    "<b>signalled by \(HTML.escape(record.actor ?? "?"))</b>",
                    early ? "" : "waited " + HTML.duration(record.finishedAt.timeIntervalSince(record.startedAt)),
                    HTML.escape(record.instance ?? ""),
                    "<span class=\"reason\">\(HTML.escape(record.reason.map { "“\($0)”" } ?? ""))</span>",
                ])
                continue
            }
            let what: String
            switch record.outcome {
            case .retryRequested:
                what = "<b>retry requested by \(HTML.escape(record.actor ?? "?"))</b>"
            case .compensationRequested:
                what = "<b>compensation requested by \(HTML.escape(record.actor ?? "?"))</b>"
            case .resent: what = "re-sent by the reaper"
            case .skipped: what = "skipped"
            case .completed: what = "completed"
            case .retrying: what = "<span class=\"err\">failed, retried</span>"
            case .failed: what = "<span class=\"err\">FAILED</span>"
            }
            let took =
                record.outcome.isOperatorAction || record.outcome == .resent
                ? "" : HTML.seconds(record.finishedAt.timeIntervalSince(record.startedAt))
            let detail = (record.error ?? record.reason.map { "“\($0)”" } ?? "") + (record.timedOut == true ? " (timed out)" : "")
            rows.append([
                offset, HTML.escape(record.stepName), "\(record.phase.rawValue) #\(record.attempt)", what, took,
                HTML.escape(record.instance ?? ""), "<span class=\"reason\">\(HTML.escape(detail))</span>",
            ])
        }
        if state.status.isTerminal {
            rows.append([
                "+" + HTML.seconds(state.updatedAt.timeIntervalSince(state.createdAt)), "", "",
                "saga \(HTML.escape(state.status.consoleName))", "", "",
                HTML.escape(state.failureReason ?? ""),
            ])
        }
        return HTML.table(["after", "step", "phase", "outcome", "handler", "process", "error or reason"], rows, classes: "timeline")
    }

    func actions(for state: SagaState, next: SagaConsoleNextStep, wait: ConsoleWait?, session: Session?) -> String {
        // A waiting saga has nothing to retry: it goes on with its signal (or is compensated).
        let canRetry = !(state.status == .completed || state.status == .compensated || state.status == .waiting)
        let canCompensate =
            next.operatorCommands.contains { $0.hasPrefix("saga compensate") } || (state.status == .running && next.kind != "unknown")
        let canSignal = wait != nil && backend.signal != nil
        let canResolve = state.status == .needsAttention && backend.resolve != nil
        guard canRetry || canCompensate || canSignal || canResolve else { return "" }
        var html = "<section id=\"actions\"><h2>Operate</h2>"
        guard security.actionsEnabled else {
            return html
                + "<p class=\"quiet\">read-only console: actions need an operator token (--token-file or SAGAKIT_CONSOLE_TOKEN). With the CLI: \(next.operatorCommands.map { "<code>\(HTML.escape($0))</code>" }.joined(separator: " "))</p></section>"
        }
        guard let session else {
            return html
                + "<p><a href=\"/login?next=/sagas/\(HTML.urlComponent(state.id))\" id=\"login-to-act\">log in with the operator token</a> to \(canSignal ? "signal or compensate" : "retry or compensate").</p></section>"
        }
        let path = "/sagas/\(HTML.urlComponent(state.id))"
        func form(_ action: String, _ label: String, _ confirm: String, placeholder: String) -> String {
            """
            <form method="post" action="\(path)/\(action)" class="action" data-confirm="\(HTML.escape(confirm))" id="\(action)-form">\
            <input type="hidden" name="csrf" value="\(session.csrf)">\
            <input type="hidden" name="version" value="\(state.version)">\
            <label>why <input name="reason" required placeholder="\(HTML.escape(placeholder))" size="40"></label>\
            <button class="\(action)" id="\(action)-button">\(label)</button></form>
            """
        }
        if canSignal, let wait {
            html += """
                <form method="post" action="\(path)/signal" class="action" data-confirm="\(HTML.escape("Deliver a signal to saga \(state.id), recorded as \(session.name)'s?"))" id="signal-form">\
                <input type="hidden" name="csrf" value="\(session.csrf)">\
                <label>signal <input name="name" required value="\(HTML.escape(wait.wait.signal))" size="24" id="signal-name"></label>\
                <label>data <input name="data" placeholder="\(HTML.escape("optional JSON object, e.g. {\"approved\": true}"))" size="36" id="signal-data"></label>\
                <button class="signal" id="signal-button">Signal</button></form>
                """
        }
        if canRetry {
            html += form(
                "retry", "Retry", "Send the current command of saga \(state.id) again, recorded as \(session.name)'s retry?",
                placeholder: "e.g. fixed the hotel service")
        }
        if canCompensate {
            html += form(
                "compensate", "Compensate", "Undo the completed steps of saga \(state.id), recorded as \(session.name)'s request?",
                placeholder: "e.g. the customer cancelled")
        }
        if canResolve {
            html += form(
                "resolve", "Resolve by hand",
                "Record that what saga \(state.id) stopped at was done by hand (it will not run), and let the saga go on, as \(session.name)?",
                placeholder: "what you did, e.g. refunded by phone")
        }
        html +=
            "<p class=\"quiet\">recorded in the saga's history as <b>\(HTML.escape(session.name))</b>, with the reason (a signal with its name).</p></section>"
        return html
    }

    // MARK: - Definitions

    func definitions(session: Session?) async throws -> String {
        let stored = try await backend.store.definitions()
        var html = "<h1>Definitions</h1>"
        let grouped = Dictionary(grouping: stored, by: \.name)
        var rows: [[String]] = []
        for name in grouped.keys.sorted() {
            let counts = try await sagaCounts(of: name)
            for info in grouped[name] ?? [] {
                let sagas: String
                if let counts {
                    let byStatus = counts[info.version] ?? [:]
                    let total = byStatus.values.reduce(0, +)
                    let unfinished = byStatus.filter { !$0.key.hasEnded && $0.value > 0 }.sorted { $0.key.rawValue < $1.key.rawValue }
                    sagas =
                        total == 0
                        ? "0"
                        : "<a href=\"/sagas?name=\(HTML.urlComponent(name))&version=\(info.version)\">\(total)</a>"
                            + (unfinished.isEmpty
                                ? " <span class=\"quiet\">(all ended)</span>"
                                : " (" + unfinished.map { "\($0.value) \(HTML.escape($0.key.rawValue))" }.joined(separator: ", ") + ")")
                } else {
                    sagas = "<span class=\"quiet\">the store cannot count by version</span>"
                }
                rows.append([
                    "<a href=\"/definitions/\(HTML.urlComponent(name))?version=\(info.version)\">\(HTML.escape(name))</a>",
                    "v\(info.version)",
                    "<span class=\"mono\">\(HTML.escape(String(info.hash.prefix(12))))</span>", HTML.escape(HTML.time(info.registeredAt)),
                    sagas,
                ])
            }
        }
        html +=
            rows.isEmpty
            ? "<p class=\"quiet\">the store keeps no definitions yet: participants register theirs when they start</p>"
            : HTML.table(["name", "version", "hash", "registered", "sagas (not ended)"], rows)
        return layout(title: "Definitions", active: "definitions", session: session, body: html)
    }

    /// The sagas of the console's topology on each version of the definition `name`, by status;
    /// `nil` when the store cannot count by version.
    private func sagaCounts(of name: String) async throws -> [Int: [SagaStatus: Int]]? {
        do {
            return try await backend.store.countByVersion(name: name, topology: configuration.prefix)
        } catch let error as SagaError where error.code == .unsupported {
            return nil
        }
    }

    /// The participant processes that report in, by service, and the commands of the known
    /// definitions that no live process of the console's topology handles.
    func services(session: Session?, now: Date = Date()) async throws -> String {
        var html = "<h1>Services</h1>"
        let participants: [ParticipantInstance]
        do {
            participants = try await backend.store.participants()
        } catch let error as SagaError where error.code == .unsupported {
            html += "<p class=\"quiet\">\(HTML.escape(error.message))</p>"
            return layout(title: "Services", active: "services", session: session, body: html)
        }
        let directory = ServiceDirectory(participants: participants, now: now)
        let mine = directory.services(topology: configuration.prefix)
        html +=
            "<p class=\"quiet\">every participant records itself in the store while it runs and removes its record when it stops; a process that missed three reports is silent (killed, hung, or cut off from the store)</p>"
        if mine.isEmpty {
            html +=
                "<p class=\"quiet\" id=\"no-services\">no participant has reported in on prefix \(HTML.escape(configuration.prefix))</p>"
        } else {
            let rows = mine.map { service -> [String] in
                let state = service.live == 0 ? "dead" : service.silent > 0 ? "degraded" : "ok"
                let last = service.lastSeen.map { age($0, now: now) } ?? "-"
                return [
                    "<b>\(HTML.escape(service.service))</b>",
                    "<span class=\"svc \(state)\">\(service.live) live\(service.silent > 0 ? ", \(service.silent) silent" : "")</span>",
                    HTML.escape(last),
                    service.commands.map { "<span class=\"mono\">\(HTML.escape($0))</span>" }.joined(separator: "<br>"),
                ]
            }
            html += HTML.table(["service", "processes", "last report", "commands"], rows, classes: "services")
        }
        let definitions = await ServiceDirectory.inUse(
            (try? await backend.definitions().all) ?? [], store: backend.store, topology: configuration.prefix)
        let unhandled = directory.unhandled(definitions, topology: configuration.prefix)
        if unhandled.isEmpty {
            html += "<p id=\"unhandled\" class=\"quiet\">every command of the known definitions has a live handler</p>"
        } else {
            html += "<section id=\"unhandled\" class=\"next needs-operator\"><h2>Commands no live process handles</h2>"
            html += "<p>sagas that reach these steps wait until a service that handles them runs</p><ul>"
            html += unhandled.map { entry in
                let who =
                    entry.silentServices.isEmpty
                    ? "no service handles it" : "handled by \(entry.silentServices.joined(separator: ", ")), all silent"
                return
                    "<li><span class=\"mono\">\(HTML.escape(entry.command))</span>: \(HTML.escape(who)); used by \(HTML.escape(entry.usedBy.joined(separator: ", ")))</li>"
            }.joined()
            html += "</ul></section>"
        }
        return layout(title: "Services", active: "services", session: session, body: html)
    }

    func definition(_ name: String, version: Int?, session: Session?) async throws -> String {
        let registry = try await backend.definitions()
        let versions = registry.all.filter { $0.name == name }.map(\.version).sorted()
        guard let chosen = version ?? versions.last, let definition = registry.definition(named: name, version: chosen) else {
            throw ConsoleRefusal(
                status: .notFound,
                message:
                    "no saga definition '\(name)'\(version.map { " version \($0)" } ?? "") in the store (known versions: \(versions.map { "v\($0)" }.joined(separator: ", ")))"
            )
        }
        var html =
            "<h1>Definition \(HTML.escape(name)) <span class=\"quiet\">version \(chosen)</span></h1><p class=\"versions\" id=\"versions\">versions: "
        let counts = (try? await sagaCounts(of: name)) ?? nil
        for candidate in versions {
            let sagas =
                counts.map { counts in
                    let total = counts[candidate]?.values.reduce(0, +) ?? 0
                    return "\(total) saga\(total == 1 ? "" : "s")"
                } ?? "sagas not counted"
            html +=
                candidate == chosen
                ? "<b>v\(candidate)</b> (\(sagas)) "
                : "<a href=\"/definitions/\(HTML.urlComponent(name))?version=\(candidate)\">v\(candidate)</a> (\(sagas)) "
        }
        html += "· hash <span class=\"mono\">\(HTML.escape(definition.contentHash))</span>"
        if let deadline = definition.deadline { html += " · deadline \(HTML.seconds(deadline.consoleSeconds))" }
        html += " · <a href=\"/sagas?name=\(HTML.urlComponent(name))&version=\(chosen)\">its sagas</a></p>"
        html += "<div class=\"graph-box\">" + SVG.graph(definition) + "</div>"
        let rows = definition.steps.enumerated().map { index, step -> [String] in
            [
                "\(index + 1)", HTML.escape(step.name),
                step.wait.map {
                    "◷ waits for signal <code>\(HTML.escape($0.signal))</code> up to \(HTML.duration($0.timeout.seconds)), then \($0.onTimeout == .compensate ? "compensate" : "continue")"
                } ?? "<code>\(HTML.escape(step.action))</code>",
                step.compensation.map { "<code>\(HTML.escape($0))</code>" } ?? (definition.isForwardOnly(index) ? "forward-only" : "—"),
                step.options.isPivot ? "◆ pivot" : "", step.wait == nil ? "\(step.options.retry.maxAttempts)" : "",
                step.options.timeout.map { HTML.seconds($0.consoleSeconds) } ?? "",
                step.group.map { "‖ \(HTML.escape($0))" } ?? "",
                step.condition.map { "<code>when \(HTML.escape($0.description))</code>" } ?? "",
            ]
        }
        html += HTML.table(["#", "step", "action", "compensation", "", "attempts", "timeout", "parallel group", "condition"], rows)
        html +=
            "<p class=\"quiet\">compensations: up to \(definition.compensationRetry.maxAttempts) attempts each, then the saga needs an operator.</p>"
        return layout(title: "Definition \(name)", active: "definitions", session: session, body: html)
    }

    // MARK: - Dead letters

    func deadLetters(session: Session?, flash: String?) async throws -> String {
        let limit = 200
        let letters = try await backend.deadLetters(limit)
        var html = "<h1>Dead letters <span class=\"quiet\">\(HTML.escape(configuration.prefix)).dead-letter</span></h1>"
        html += "<p id=\"dlq-count\">\(letters.count) message(s)\(letters.count == limit ? " (the first \(limit))" : "")</p>"
        let canAct = security.actionsEnabled && session != nil
        if canAct, let session, !letters.isEmpty {
            html += """
                <form method="post" action="/dlq/requeue" class="action" data-confirm="Put every dead letter back where it came from?" id="requeue-all-form">\
                <input type="hidden" name="csrf" value="\(session.csrf)"><input type="hidden" name="all" value="1">\
                <button id="requeue-all">Requeue all</button></form>
                """
        } else if !letters.isEmpty {
            html +=
                security.actionsEnabled
                ? "<p><a href=\"/login?next=/dlq\">log in</a> to requeue.</p>"
                : "<p class=\"quiet\">read-only: requeue with <code>saga dlq requeue --all</code></p>"
        }
        var rows: [[String]] = []
        for letter in letters {
            var requeue = ""
            if canAct, let session, let id = letter.messageID {
                requeue = """
                    <form method="post" action="/dlq/requeue" class="action" data-confirm="Requeue message \(HTML.escape(id))?">\
                    <input type="hidden" name="csrf" value="\(session.csrf)"><input type="hidden" name="id" value="\(HTML.escape(id))">\
                    <button class="requeue">Requeue</button></form>
                    """
                if backend.drop != nil {
                    requeue += """
                        <form method="post" action="/dlq/drop" class="action" data-confirm="Drop message \(HTML.escape(id)) for good? It will never run.">\
                        <input type="hidden" name="csrf" value="\(session.csrf)"><input type="hidden" name="id" value="\(HTML.escape(id))">\
                        <button class="drop">Drop</button></form>
                        """
                }
            }
            // Redacted by the backend, before it was shortened (``SagaConsoleDeadLetter/body``).
            let body = letter.body
            rows.append([
                "<span class=\"mono\">\(HTML.escape(letter.messageID ?? "(none)"))</span>",
                "<span class=\"reason dlq-reason\">\(HTML.escape(letter.reason ?? "(none recorded)"))</span>",
                HTML.escape(letter.service ?? "?"), HTML.escape(letter.sourceQueue ?? "?"),
                "<code>\(HTML.escape(letter.sourceExchange ?? "?"))</code> / <code>\(HTML.escape(letter.sourceRoutingKey ?? letter.command ?? "?"))</code>",
                letter.sagaID.map(HTML.sagaLink) ?? "", HTML.escape(letter.deadLetteredAt ?? ""),
                "<details><summary>\(letter.bytes) bytes</summary><pre>\(HTML.escape(body))</pre></details>", requeue,
            ])
        }
        html +=
            letters.isEmpty
            ? "<p class=\"quiet\">the dead-letter queue is empty</p>"
            : HTML.table(["message id", "reason", "service", "from queue", "requeue to", "saga", "at", "body", ""], rows, classes: "dlq")
        return layout(title: "Dead letters", active: "dlq", session: session, flash: flash, refresh: false, body: html)
    }

    // MARK: - Login

    func login(session: Session?, next: String, error: String? = nil) -> String {
        var html = "<h1>Log in</h1>"
        guard security.actionsEnabled else {
            html +=
                "<p>This console is read-only: no operator token is configured. Start it with <code>--token-file &lt;file&gt;</code> or <code>SAGAKIT_CONSOLE_TOKEN</code> to let operators retry, compensate and requeue.</p>"
            return layout(title: "Log in", active: "", session: session, refresh: false, body: html)
        }
        if let error { html += "<p class=\"error\" id=\"error\">\(HTML.escape(error))</p>" }
        html += """
            <form method="post" action="/login" class="login" id="login-form"><input type="hidden" name="next" value="\(HTML.escape(next))">\
            <label>your name (recorded in the history of every saga you act on) <input name="name" id="name" required maxlength="64" autocomplete="username"></label>\
            <label>operator token <input name="token" id="token" type="password" required autocomplete="current-password"></label>\
            <button id="login-button">Log in</button></form>
            """
        return layout(title: "Log in", active: "", session: session, refresh: false, body: html)
    }
}
