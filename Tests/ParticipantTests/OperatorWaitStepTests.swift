import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Wait steps where people look at sagas: `saga graph` draws a wait as its own shape with the
/// signal and the timeout, `saga show` and `saga list` say what a waiting saga waits for, until
/// when, and how an operator approves or rejects it, the history says who signalled, and the web
/// console draws and explains the wait. The plain `saga` executable reads the definition from a
/// SQLite store that the test registered it in.
@Suite("saga CLI and console on wait steps", .timeLimit(.minutes(3)))
struct OperatorWaitStepTests {
    /// `payout`: reserve-funds, a fraud review for amounts above 1000 (compensated after 24 h
    /// without approval), the pivot, a bank confirmation awaited for 2 h (then the saga goes on
    /// without it), a notification. Docs/Concepts.md ("Waiting for a signal") shows its
    /// `saga graph`.
    static func payout() throws -> SagaDefinition {
        try SagaBuilder("payout")
            .step("reserve-funds", action: "funds.reserve", compensation: "funds.release")
            .wait("fraud-review", for: "fraud.approved", timeout: .seconds(86_400), when: .greaterThan("amount", 1000))
            .step("send-money", action: "bank.transfer", options: .pivot)
            .wait("bank-confirmation", for: "bank.confirmed", timeout: .seconds(7200), onTimeout: .continue)
            .step("notify", action: "email.send")
            .build()
    }

    static let payoutGraph = """
        flowchart LR
            start((start))
            a0["reserve-funds<br/>funds.reserve"]
            c0[/"undo reserve-funds<br/>funds.release"/]
            a1(["fraud-review<br/>waits for signal 'fraud.approved' · up to 24 h<br/>when amount #62; 1000"])
            a2{{"send-money<br/>bank.transfer · PIVOT"}}
            a3(["bank-confirmation<br/>waits for signal 'bank.confirmed' · up to 2 h · forward only"])
            a4["notify<br/>email.send · forward only"]
            done((completed))
            compensated((compensated))
            start --> a0
            a0 -->|ok| a1
            a0 -.->|fails| compensated
            a1 -->|signal 'fraud.approved'| a2
            a1 -.->|condition false: skipped| a2
            a1 -.->|timeout: compensate| c0
            a2 -->|ok| a3
            a2 -.->|fails: retry forward| a2
            a3 -->|signal 'bank.confirmed'| a4
            a3 -.->|timeout: continue| a4
            a4 -->|ok| done
            a4 -.->|fails: retry forward| a4
            c0 --> compensated
            classDef pivot fill:#fde68a,stroke:#b45309
            class a2 pivot
            classDef undo fill:#fee2e2,stroke:#b91c1c
            class c0 undo
            classDef wait fill:#fef9c3,stroke:#a16207,stroke-dasharray:6 3
            class a1,a3 wait
        """

    @Test func graphDrawsAWaitWithItsSignalAndTimeoutAndDocsShowIt() async throws {
        let store = try await Self.seededStore([])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        let graph = try await OperatorParallelGroupTests.runSaga(["graph", "payout", "--store-url", store.url])
        #expect(graph.status == 0, "\(graph.output)")
        print("saga graph payout:\n\(graph.output)")
        let mermaid = graph.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.hasPrefix("%%") }.joined(separator: "\n").trimmingCharacters(in: .newlines)
        #expect(mermaid == Self.payoutGraph, "\(mermaid)")

        // Docs/Concepts.md shows this very output.
        let concepts = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Docs/Concepts.md"), encoding: .utf8)
        let section = try #require(concepts.range(of: "## Waiting for a signal").map { String(concepts[$0.upperBound...]) })
        let block = try #require(
            section.range(of: "```mermaid\n").flatMap { start in
                section[start.upperBound...].range(of: "\n```").map { String(section[start.upperBound..<$0.lowerBound]) }
            })
        #expect(block == Self.payoutGraph, "Docs/Concepts.md's diagram is not saga graph's output:\n\(block)")

        let json = try await OperatorParallelGroupTests.runSaga(["graph", "payout", "--json", "--store-url", store.url])
        let steps = try #require(try OperatorParallelGroupTests.jsonObject(json.stdout)["steps"] as? [[String: Any]])
        let waits = steps.map { $0["wait"] as? [String: Any] }
        #expect(waits.map { $0?["signal"] as? String } == [nil, "fraud.approved", nil, "bank.confirmed", nil], "\(json.output)")
        #expect(waits[1]?["timeoutSeconds"] as? Double == 86_400 && waits[1]?["onTimeout"] as? String == "compensate")
        #expect(waits[3]?["timeoutSeconds"] as? Double == 7200 && waits[3]?["onTimeout"] as? String == "continue")
    }

    @Test func showAndListSayWhatAWaitingSagaWaitsForAndWhoSignalled() async throws {
        let machine = SagaStateMachine(definition: try Self.payout())
        let now = Date()
        let waiting = try #require(Self.atFraudReview("wait-review", machine: machine, now: now))
        #expect(waiting.status == .waiting)
        // Approved by alice: the saga runs send-money.
        var approved = try #require(
            machine.apply(.signalReceived(name: "fraud.approved", payload: ["reviewer": "alice"], by: "alice"), to: waiting, now: now)
                .state)
        approved.id = "wait-approved"
        #expect(approved.status == .running && approved.currentStep == 2)
        // Approved by bob before the saga reached the review: kept, the saga still runs reserve-funds.
        let started = machine.begin(id: "wait-early", payload: ["amount": 5000], now: now).state
        let early = try #require(
            machine.apply(.signalReceived(name: "fraud.approved", payload: [:], by: "bob"), to: started, now: now).state)
        // Past the pivot, waiting for the bank (continues on timeout: nothing to compensate).
        let sent = try #require(
            machine.apply(.stepCompleted(step: 2, attempt: 1, patch: [:], startedAt: now), to: approved, now: now).state)
        var bank = sent
        bank.id = "wait-bank"
        #expect(bank.status == .waiting && bank.currentStep == 3)

        // A small payout skips the review (its condition does not hold): it never waited.
        var small = try #require(
            machine.apply(
                .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: now),
                to: machine.begin(id: "wait-skipped", payload: ["amount": 10], now: now).state, now: now
            ).state)
        small.id = "wait-skipped"
        #expect(small.status == .running && small.currentStep == 2)

        let store = try await Self.seededStore([waiting, approved, early, bank, small])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        let until = waiting.updatedAt.addingTimeInterval(86_400)

        // Its timeline says the review was skipped by its condition, not that no signal came.
        let skipped = try await OperatorParallelGroupTests.runSaga(["show", "wait-skipped", "--store-url", store.url])
        let review = skipped.stdout.split(separator: "\n").filter { $0.contains("fraud-review") }
        #expect(review.contains { $0.contains("skipped") && $0.contains("condition") }, "\(skipped.output)")
        #expect(!review.contains { $0.contains("no signal") }, "\(skipped.output)")

        let show = try await OperatorParallelGroupTests.runSaga(["show", "wait-review", "--store-url", store.url])
        print("saga show of a waiting saga:\n\(show.output)")
        #expect(show.status == 0, "\(show.output)")
        #expect(
            show.output.contains(
                "WAITING at step 2 'fraud-review' for signal 'fraud.approved' until \(until.formatted(.iso8601)) (in 23 h 59 min)"),
            "\(show.output)")
        #expect(
            show.output.contains(
                "to approve: `saga signal wait-review fraud.approved --data '{…}' --by <you>` (the data is merged into the saga's payload; the saga goes on with step 3 'send-money')"
            ), "\(show.output)")
        #expect(show.output.contains("to reject: `saga compensate wait-review --reason …` (undoes reserve-funds)"), "\(show.output)")
        #expect(
            show.output.contains(
                "at the timeout (24 h after it began to wait) without the signal, the saga is compensated (undoes reserve-funds)"),
            "\(show.output)")
        #expect(show.output.contains("the reaper ends an expired wait at its first pass after the timeout (every 5 min"), "\(show.output)")

        let json = try OperatorParallelGroupTests.jsonObject(
            try await OperatorParallelGroupTests.runSaga(["show", "wait-review", "--json", "--store-url", store.url]).stdout)
        let next = try #require(json["nextStep"] as? [String: Any])
        #expect(next["kind"] as? String == "waiting-for-signal")
        #expect(next["stepName"] as? String == "fraud-review" && next["step"] as? Int == 1)
        let wait = try #require(next["wait"] as? [String: Any], "\(json)")
        #expect(wait["signal"] as? String == "fraud.approved" && wait["onTimeout"] as? String == "compensate")
        // To the millisecond the store keeps (a stored time may round the last millisecond).
        let shownUntil = (wait["until"] as? String).flatMap {
            try? Date($0, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        }
        #expect(shownUntil.map { abs($0.timeIntervalSince(until)) <= 0.002 } == true, "\(wait)")
        #expect(wait["timeoutSeconds"] as? Double == 86_400)
        #expect(
            next["operatorCommands"] as? [String] == ["saga signal wait-review fraud.approved", "saga compensate wait-review"],
            "\(next)")

        let approvedShow = try await OperatorParallelGroupTests.runSaga(["show", "wait-approved", "--store-url", store.url])
        print("saga show of a signalled saga:\n\(approvedShow.output)")
        #expect(approvedShow.output.contains("RUNNING at send-money (action #1)"), "\(approvedShow.output)")
        #expect(
            approvedShow.output.contains("signalled      by alice after waiting less than 1 s: signal 'fraud.approved'"),
            "\(approvedShow.output)")
        let timeline = try #require(
            try OperatorParallelGroupTests.jsonObject(
                try await OperatorParallelGroupTests.runSaga(["show", "wait-approved", "--json", "--store-url", store.url]).stdout)[
                    "timeline"]
                as? [[String: Any]])
        let signal = try #require(timeline.first { $0["event"] as? String == "signal" }, "\(timeline)")
        #expect(signal["actor"] as? String == "alice" && signal["stepName"] as? String == "fraud-review")

        let earlyShow = try await OperatorParallelGroupTests.runSaga(["show", "wait-early", "--store-url", store.url])
        #expect(
            earlyShow.output.contains("signalled      by bob: signal 'fraud.approved', before the saga reached the wait"),
            "\(earlyShow.output)")

        let bankShow = try await OperatorParallelGroupTests.runSaga(["show", "wait-bank", "--store-url", store.url])
        print("saga show of a saga waiting after the pivot:\n\(bankShow.output)")
        #expect(bankShow.output.contains("for signal 'bank.confirmed' until "), "\(bankShow.output)")
        #expect(!bankShow.output.contains("to reject"), "past the pivot nothing is compensated: \(bankShow.output)")
        #expect(
            bankShow.output.contains(
                "without the signal, the saga goes on with step 5 'notify' (the wait is recorded as skipped)"), "\(bankShow.output)")

        let list = try await OperatorParallelGroupTests.runSaga(["list", "--status", "waiting", "--store-url", store.url])
        print("saga list --status waiting:\n\(list.output)")
        #expect(list.status == 0, "\(list.output)")
        let rows = list.stdout.split(separator: "\n").filter { $0.hasPrefix("wait-") }
        #expect(rows.map { String($0.prefix { $0 != " " }) }.sorted() == ["wait-bank", "wait-review"], "\(list.output)")
        #expect(
            rows.contains { $0.contains("waiting") && $0.contains("step 2 'fraud-review' for signal 'fraud.approved' until ") },
            "\(list.output)")
        #expect(list.stdout.contains("waiting 2"), "the totals count the waiting sagas: \(list.output)")
    }

    @Test(
        .enabled(if: ProcessInfo.processInfo.environment["AMQP_URL"] != nil, "set AMQP_URL (scripts/rabbitmq.sh url), or run `make test`"))
    func consoleDrawsAndExplainsAWait() async throws {
        let amqp = try #require(ProcessInfo.processInfo.environment["AMQP_URL"])
        let machine = SagaStateMachine(definition: try Self.payout())
        let waiting = try #require(Self.atFraudReview("wait-console", machine: machine, now: Date()))
        var approved = try #require(
            machine.apply(.signalReceived(name: "fraud.approved", payload: [:], by: "alice"), to: waiting, now: Date()).state)
        approved.id = "wait-console-approved"
        let store = try await Self.seededStore([waiting, approved])
        defer { try? FileManager.default.removeItem(at: store.directory) }

        let console = try ProductProcess(
            "saga",
            ["console", "--port", "0", "--store-url", store.url, "--amqp-url", amqp, "--prefix", "wait-\(UUID().uuidString.prefix(8))"],
            environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil, "SAGA_CONSOLE_TOKEN": nil, "SAGAKIT_CONSOLE_TOKEN": nil])
        #expect(try await console.waitForOutput(containing: "listening on http://", timeout: .seconds(60)), "\(console.output)")
        let base = try #require(
            console.output.split(separator: " ").first { $0.hasPrefix("http://127.0.0.1:") }.map { String($0) }, "\(console.output)")

        let page = try await OperatorParallelGroupTests.get(base + "definitions/payout")
        let graph = try #require(page.range(of: "<svg class=\"graph\"").map { String(page[$0.lowerBound...]) })
        #expect(OperatorParallelGroupTests.count("<rect class=\"step wait", in: graph) == 2, "two waits drawn as waits")
        #expect(graph.contains("waits for signal &#39;fraud.approved&#39; · up to 24 h"), "the signal and the timeout")
        #expect(graph.contains("<text class=\"signal\""), "the signal beside the arrow to what follows")
        #expect(graph.contains("timeout (24 h): compensate the steps before"), "the compensating timeout")
        #expect(graph.contains("timeout (2 h): continue without the signal"), "the continuing timeout")

        let sagaPage = try await OperatorParallelGroupTests.get(base + "sagas/wait-console")
        #expect(sagaPage.contains("<span class=\"badge st-waiting\">waiting</span>"), "the waiting badge")
        #expect(
            sagaPage.contains("waiting at step 2 &#39;fraud-review&#39; for signal &#39;fraud.approved&#39; until "), "\(sagaPage)")
        #expect(sagaPage.contains("<section id=\"wait\""), "what it waits for")
        #expect(
            sagaPage.contains(
                "<code id=\"signal-command\">saga signal wait-console fraud.approved --data &#39;{…}&#39; --by &lt;you&gt;</code>"),
            "the command that approves")
        let drawn = try #require(sagaPage.range(of: "<section id=\"steps\">").map { String(sagaPage[$0.lowerBound...]) })
        #expect(drawn.contains("step wait conditional st-waiting\""), "fraud-review drawn waiting")
        #expect(drawn.contains("◷ waiting for its signal"))

        let overview = try await OperatorParallelGroupTests.get(base)
        #expect(overview.contains("<a class=\"card st-waiting\" href=\"/sagas?status=waiting\"><span class=\"n\">1</span>"), "a card")
        let filtered = try await OperatorParallelGroupTests.get(base + "sagas?status=waiting")
        #expect(filtered.contains("wait-console") && filtered.contains("1 saga(s)"), "the status filter")
        let metrics = try await OperatorParallelGroupTests.get(base + "metrics")
        #expect(metrics.contains("sagakit_store_sagas{saga=\"payout\",status=\"waiting\"} 1"), "\(metrics)")
        #expect(metrics.contains("sagakit_store_sagas_by_version{saga=\"payout\",version=\"1\",status=\"waiting\"} 1"), "\(metrics)")

        // Signalled: who sent it, in the timeline and the drawing.
        let approvedPage = try await OperatorParallelGroupTests.get(base + "sagas/wait-console-approved")
        #expect(approvedPage.contains("<b>signalled by alice</b>"), "the signal in the timeline: \(approvedPage)")
        #expect(approvedPage.contains("✓ signalled by alice"), "the wait drawn signalled")
        #expect(!approvedPage.contains("<section id=\"wait\""), "it no longer waits")
        console.process.terminate()
        _ = try await console.waitForExit(timeout: .seconds(10))
    }

    @Test(
        .enabled(if: ProcessInfo.processInfo.environment["AMQP_URL"] != nil, "set AMQP_URL (scripts/rabbitmq.sh url), or run `make test`"))
    func eventsSayWhatASagaWaitsForAndWhoSignalled() async throws {
        let amqp = try #require(ProcessInfo.processInfo.environment["AMQP_URL"])
        let definition = try Self.payout()
        let machine = SagaStateMachine(definition: definition)
        let now = Date()
        let start = machine.begin(id: "wait-events", payload: ["amount": 5000], now: now).state
        let waiting = try #require(Self.atFraudReview("wait-events", machine: machine, now: now))
        let approved = try #require(
            machine.apply(.signalReceived(name: "fraud.approved", payload: [:], by: "alice"), to: waiting, now: now).state)
        // The events of reaching the wait and of the signal, as the engine publishes them.
        let events =
            SagaLifecycleEvent.events(
                of: .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: now), from: start, to: waiting, version: 2,
                definition: definition, at: now)
            + SagaLifecycleEvent.events(
                of: .signalReceived(name: "fraud.approved", payload: [:], by: "alice"), from: waiting, to: approved, version: 3,
                definition: definition, at: now)
        #expect(events.map(\.kind) == [.stepCompleted, .waiting, .stepCompleted], "\(events)")

        let prefix = "wait-\(UUID().uuidString.prefix(8))"
        let follower = try ProductProcess(
            "saga",
            ["events", "--saga", "wait-events", "--count", "\(events.count)", "--timeout", "60", "--amqp-url", amqp, "--prefix", prefix],
            environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil])
        #expect(try await follower.waitForOutput(containing: "saga: listening on", timeout: .seconds(60)), "\(follower.output)")
        let bus = try await RabbitMQBus.connect(url: amqp)
        for event in events {
            try await bus.publish(
                OutgoingMessage(
                    exchange: "\(prefix).events", routingKey: event.routingKey, body: Array(try JSONCoding.encode(event)),
                    messageId: UUID().uuidString, contentType: "application/json", type: event.kind.rawValue))
        }
        await bus.shutdown()
        #expect(try await follower.waitForExit(timeout: .seconds(60)) == 0, "\(follower.output)")
        print("saga events of a wait:\n\(follower.output)")
        let until = waiting.updatedAt.addingTimeInterval(86_400).formatted(.iso8601)
        #expect(
            follower.output.contains("waiting  fraud-review: waits for signal 'fraud.approved' until \(until)"), "\(follower.output)")
        #expect(
            follower.output.contains("step-completed  fraud-review #1  by alice: signal 'fraud.approved'"), "\(follower.output)")
    }

    // MARK: - Helpers

    /// A `payout` saga of 5000 (the fraud review applies) that reserved the funds and waits for
    /// `fraud.approved`.
    static func atFraudReview(_ id: String, machine: SagaStateMachine, now: Date) -> SagaState? {
        let start = machine.begin(id: id, payload: ["amount": 5000], now: now)
        return machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: now), to: start.state, now: now).state
    }

    /// A SQLite store in a new directory that knows `payout` and holds `sagas`.
    /// Two deployments sharing one store: `saga list` shows the sagas of its own topology (the
    /// prefix, `sagakit` by default) and those that record none, counts only those, says when
    /// other topologies have matching sagas, and `--all-topologies` shows all (a user's list
    /// mixed both deployments).
    @Test func listShowsItsOwnTopologyUnlessAskedForAll() async throws {
        let machine = SagaStateMachine(definition: try Self.payout())
        let now = Date()
        func saga(_ id: String, topology: String?, status: SagaStatus = .running) -> SagaState {
            var state = machine.begin(id: id, payload: ["amount": 10], now: now).state
            state.context[SagaState.topologyKey] = topology
            state.status = status
            return state
        }
        let store = try await Self.seededStore([
            saga("shop-1", topology: "shop"), saga("shop-2", topology: "shop"),
            saga("billing-1", topology: "billing", status: .needsAttention), saga("untagged-1", topology: nil),
        ])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        func ids(_ output: String) -> [String] {
            output.split(separator: "\n").map { String($0.prefix { $0 != " " }) }.filter { $0.contains("-") }.sorted()
        }

        let shop = try await OperatorParallelGroupTests.runSaga(["list", "--prefix", "shop", "--store-url", store.url])
        #expect(shop.status == 0, "\(shop.output)")
        #expect(ids(shop.stdout) == ["shop-1", "shop-2", "untagged-1"], "\(shop.output)")
        #expect(shop.stdout.contains("in the store (topology shop): running 3 ·"), "\(shop.output)")

        let shopIDs = try await OperatorParallelGroupTests.runSaga(["list", "--ids", "--prefix", "shop", "--store-url", store.url])
        #expect(shopIDs.stdout.split(separator: "\n").sorted() == ["shop-1", "shop-2", "untagged-1"], "\(shopIDs.output)")

        let all = try await OperatorParallelGroupTests.runSaga([
            "list", "--all-topologies", "--prefix", "shop", "--store-url", store.url,
        ])
        #expect(ids(all.stdout) == ["billing-1", "shop-1", "shop-2", "untagged-1"], "\(all.output)")
        #expect(all.stdout.contains("in the store (every topology): running 3 ·"), "\(all.output)")
        #expect(all.stdout.contains("needs-attention 1"), "\(all.output)")

        let attention = try await OperatorParallelGroupTests.runSaga([
            "list", "--prefix", "shop", "--status", "needs-attention", "--store-url", store.url,
        ])
        #expect(attention.stdout.contains("no sagas match"), "\(attention.output)")
        #expect(
            attention.stdout.contains("(other topologies than 'shop' have matching sagas: use --all-topologies, or --prefix for theirs)"),
            "\(attention.output)")
        #expect(attention.stdout.contains("needs-attention 0"), "\(attention.output)")

        let other = try await OperatorParallelGroupTests.runSaga([
            "list", "--name", "payout", "--prefix", "shop", "--status", "completed", "--store-url", store.url,
        ])
        #expect(other.stdout.contains("no sagas match"), "\(other.output)")
        #expect(!other.stdout.contains("other topologies"), "none of them completed either: \(other.output)")

        let elsewhere = try await OperatorParallelGroupTests.runSaga([
            "list", "--prefix", "nobody", "--status", "running", "--store-url", store.url,
        ])
        #expect(ids(elsewhere.stdout) == ["untagged-1"], "\(elsewhere.output)")
    }

    /// During a rolling upgrade the processes of one service handle different commands: `saga
    /// services` says which process handles what (a user could not tell which shipping process
    /// lacked the new command), under the name its log lines carry.
    @Test func servicesSaysWhichProcessHandlesWhatWhenTheyDiffer() async throws {
        let store = try await Self.seededStore([])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        let now = Date()
        try await SQLiteSagaStore(path: String(store.url.dropFirst("sqlite://".count))).withRunning { sqlite in
            for (instance, commands) in [
                ("shipping-101@vm", ["funds.reserve"]), ("shipping-102@vm", ["funds.reserve", "bank.transfer"]),
                ("payment-103@vm", ["email.send"]), ("payment-104@vm", ["email.send"]),
            ] {
                try await sqlite.recordParticipant(
                    ParticipantInstance(
                        topology: "roll", service: String(instance.prefix { $0 != "-" }), instance: instance, commands: commands,
                        startedAt: now, lastSeen: now, reportInterval: .seconds(15)))
            }
        }
        let services = try await OperatorParallelGroupTests.runSaga(["services", "--prefix", "roll", "--store-url", store.url])
        print("saga services during a rolling upgrade:\n\(services.stdout)")
        #expect(services.stdout.contains("shipping: its processes handle different commands (a rolling upgrade?):"), "\(services.output)")
        #expect(services.stdout.contains("  shipping-101@vm (live): funds.reserve (not: bank.transfer)"), "\(services.output)")
        #expect(services.stdout.contains("  shipping-102@vm (live): bank.transfer, funds.reserve\n"), "\(services.output)")
        #expect(!services.stdout.contains("payment: its processes"), "the same commands: \(services.output)")
        let json = try OperatorParallelGroupTests.jsonObject(
            try await OperatorParallelGroupTests.runSaga(["services", "--json", "--prefix", "roll", "--store-url", store.url]).stdout)
        let shipping = (json["services"] as? [[String: Any]])?.first { $0["service"] as? String == "shipping" }
        let commands = (shipping?["instances"] as? [[String: Any]])?.map { "\($0["instance"] ?? "")=\($0["commands"] ?? "")" }
        #expect(commands?.count == 2 && commands?.first?.hasPrefix("shipping-101@vm=") == true, "\(String(describing: commands))")
    }

    /// A saga whose next command the broker keeps refusing (no queue bound to it yet, during a
    /// rollout): `saga show` says it is not published yet and how often publishing failed,
    /// instead of "sent to exchange …" (a user's show said "sent").
    @Test func showSaysWhenTheNextCommandIsStillInTheOutbox() async throws {
        let machine = SagaStateMachine(definition: try Self.payout())
        let now = Date()
        let started = machine.begin(id: "unrouted-1", payload: ["amount": 10], now: now).state
        let store = try await Self.seededStore([])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        try await SQLiteSagaStore(path: String(store.url.dropFirst("sqlite://".count))).withRunning { sqlite in
            let message = OutboxMessage(
                id: "m-1", sagaID: started.id, exchange: "sagakit.commands", routingKey: "funds.reserve", body: Array("{}".utf8),
                headers: [:], createdAt: now.addingTimeInterval(-120))
            _ = try await sqlite.create(started, outbox: [message])
            try await sqlite.recordFailedAttempts(["m-1"], retryAt: now.addingTimeInterval(30))
            try await sqlite.recordFailedAttempts(["m-1"], retryAt: now.addingTimeInterval(60))
        }
        let show = try await OperatorParallelGroupTests.runSaga(["show", "unrouted-1", "--store-url", store.url])
        print("saga show of an unpublished command:\n\(show.stdout)")
        #expect(
            show.stdout.contains(
                "not published yet: 'funds.reserve' is in the outbox, and 2 publish(es) failed — unroutable when no queue"),
            "\(show.output)")
        #expect(!show.stdout.contains("sent to exchange"), "\(show.output)")
        let json = try OperatorParallelGroupTests.jsonObject(
            try await OperatorParallelGroupTests.runSaga(["show", "unrouted-1", "--json", "--store-url", store.url]).stdout)
        let unpublished = (json["nextStep"] as? [String: Any])?["unpublished"] as? [String: Any]
        #expect(unpublished?["failedPublishes"] as? Int == 2 && unpublished?["routingKeys"] as? [String] == ["funds.reserve"], "\(json)")
    }

    static func seededStore(_ sagas: [SagaState]) async throws -> (directory: URL, url: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-waits-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await store.register(try payout())
            for saga in sagas { _ = try await store.create(saga, outbox: []) }
        }
        return (directory, "sqlite://\(path)")
    }
}
