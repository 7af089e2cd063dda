import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Parallel groups where people look at sagas: `saga graph` draws a group as a fork and a join,
/// `saga show` and `saga list` say where each member stands, and the web console draws the
/// members side by side (each with its state on a saga's page). The plain `saga` executable
/// reads the definition from a SQLite store that the test registered it in.
@Suite("saga CLI and console on parallel groups", .timeLimit(.minutes(3)))
struct OperatorParallelGroupTests {
    /// `checkout`: create-order, then the group `prepare` (reserve-stock and authorize-payment
    /// with compensations, screen-fraud only for amounts above 1000), the pivot, a receipt.
    /// Docs/Concepts.md ("Parallel groups") shows its `saga graph`.
    static func checkout() throws -> SagaDefinition {
        try SagaBuilder("checkout")
            .step("create-order", action: "orders.create", compensation: "orders.cancel")
            .parallel("prepare") { group in
                group
                    .step("reserve-stock", action: "inventory.reserve", compensation: "inventory.release")
                    .step(
                        "authorize-payment", action: "payment.authorize", compensation: "payment.void",
                        options: StepOptions(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(30)))
                    )
                    .step("screen-fraud", action: "fraud.screen", when: .greaterThan("amount", 1000))
            }
            .step("capture-payment", action: "payment.capture", options: .pivot)
            .step("send-receipt", action: "email.receipt")
            .build()
    }

    /// `fulfilment`: a group first, a second group right after it, the pivot, then a group after
    /// the pivot (forward only: no compensations).
    static func fulfilment() throws -> SagaDefinition {
        try SagaBuilder("fulfilment")
            .parallel("prepare") { group in
                group
                    .step("pick", action: "warehouse.pick", compensation: "warehouse.restock")
                    .step("label", action: "carrier.label", compensation: "carrier.cancel")
            }
            .parallel("book") { group in
                group
                    .step("reserve-slot", action: "slots.reserve", compensation: "slots.release")
                    .step("tell-warehouse", action: "warehouse.notify")
            }
            .step("ship", action: "carrier.ship", options: .pivot)
            .parallel("notify") { group in
                group.step("email", action: "email.send").step("sms", action: "sms.send")
            }
            .build()
    }

    /// The order saga of the example system: what `saga graph` printed for it before parallel
    /// groups existed (plain definitions keep their bytes).
    static func plainOrder() throws -> SagaDefinition {
        try SagaBuilder("order")
            .step("reserve-stock", action: "inventory.reserve", compensation: "inventory.release")
            .step("charge-card", action: "payment.charge", compensation: "payment.refund")
            .step("ship", action: "shipping.ship", options: .pivot)
            .build()
    }

    static let checkoutGraph = """
        flowchart LR
            start((start))
            a0["create-order<br/>orders.create"]
            c0[/"undo create-order<br/>orders.cancel"/]
            subgraph g1 ["parallel group 'prepare'"]
                a1["reserve-stock<br/>inventory.reserve"]
                a2["authorize-payment<br/>payment.authorize"]
                a3["screen-fraud<br/>fraud.screen<br/>when amount #62; 1000"]
            end
            c1[/"undo reserve-stock<br/>inventory.release<br/>if it completed or timed out"/]
            c2[/"undo authorize-payment<br/>payment.void<br/>if it completed or timed out"/]
            j1((join))
            a4{{"capture-payment<br/>payment.capture · PIVOT"}}
            a5["send-receipt<br/>email.receipt · forward only"]
            done((completed))
            compensated((compensated))
            start --> a0
            a0 -->|ok| a1
            a0 -->|ok| a2
            a0 -->|ok| a3
            a0 -.->|fails| compensated
            a1 -->|ok| j1
            a1 -.->|fails: once the others finish| c2
            a2 -->|ok| j1
            a2 -.->|fails: once the others finish| c1
            a3 -->|ok| j1
            a3 -.->|condition false: skipped| j1
            a3 -.->|fails: once the others finish| c2
            j1 -->|all ok or skipped| a4
            a4 -->|ok| a5
            a4 -.->|fails: retry forward| a4
            a5 -->|ok| done
            a5 -.->|fails: retry forward| a5
            c0 --> compensated
            c1 --> c0
            c2 --> c1
            classDef pivot fill:#fde68a,stroke:#b45309
            class a4 pivot
            classDef undo fill:#fee2e2,stroke:#b91c1c
            class c0,c1,c2 undo
            classDef parallel fill:#eff6ff,stroke:#2563eb,stroke-dasharray:4 3
            class g1 parallel
        """

    static let plainOrderGraph = """
        flowchart LR
            start((start))
            a0["reserve-stock<br/>inventory.reserve"]
            c0[/"undo reserve-stock<br/>inventory.release"/]
            a1["charge-card<br/>payment.charge"]
            c1[/"undo charge-card<br/>payment.refund"/]
            a2{{"ship<br/>shipping.ship · PIVOT"}}
            done((completed))
            compensated((compensated))
            start --> a0
            a0 -->|ok| a1
            a0 -.->|fails| compensated
            a1 -->|ok| a2
            a1 -.->|fails| c0
            a2 -->|ok| done
            a2 -.->|fails: retry forward| a2
            c0 --> compensated
            c1 --> c0
            classDef pivot fill:#fde68a,stroke:#b45309
            class a2 pivot
            classDef undo fill:#fee2e2,stroke:#b91c1c
            class c0,c1 undo
        """

    @Test func graphDrawsAGroupAsAForkAndAJoinAndPlainDefinitionsAsBefore() async throws {
        let store = try await Self.seededStore([])
        defer { try? FileManager.default.removeItem(at: store.directory) }
        let graph = try await Self.runSaga(["graph", "checkout", "--store-url", store.url])
        #expect(graph.status == 0, "\(graph.output)")
        print("saga graph checkout:\n\(graph.output)")
        let mermaid = graph.output.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.hasPrefix("%%") && !$0.hasPrefix("saga: store") }.joined(separator: "\n")
            .trimmingCharacters(in: .newlines)
        #expect(mermaid == Self.checkoutGraph, "\(mermaid)")

        let json = try await Self.runSaga(["graph", "checkout", "--json", "--store-url", store.url])
        let steps = try Self.jsonObject(json.stdout)["steps"] as? [[String: Any]]
        #expect(steps?.map { $0["group"] as? String } == [nil, "prepare", "prepare", "prepare", nil, nil], "\(json.output)")

        // Groups back to back, and a group after the pivot.
        let chained = try await Self.runSaga(["graph", "fulfilment", "--store-url", store.url])
        print("saga graph fulfilment:\n\(chained.output)")
        let lines = Set(chained.stdout.split(separator: "\n").map(String.init))
        for expected in [
            "    start --> a0", "    start --> a1", "    j0 -->|all ok or skipped| a2", "    j0 -->|all ok or skipped| a3",
            "    a0 -.->|fails: once the others finish| c1", "    a1 -.->|fails: once the others finish| c0",
            "    a2 -.->|fails: once the others finish| c1", "    a3 -.->|fails: once the others finish| c2",
            "    c2 --> c1", "    c1 --> c0", "    c0 --> compensated", "    j2 -->|all ok or skipped| a4", "    a4 -->|ok| a5",
            "    a4 -->|ok| a6", "    a5 -.->|fails: retry forward| a5", "    a6 -->|ok| j5", "    j5 -->|all ok or skipped| done",
            "    class g0,g2,g5 parallel", "    subgraph g5 [\"parallel group 'notify'\"]",
            "        a6[\"sms<br/>sms.send · forward only\"]",
        ] {
            #expect(lines.contains(expected), "\(expected) in \(chained.stdout)")
        }
        #expect(!lines.contains { $0.hasPrefix("    c5") || $0.hasPrefix("    c6") }, "no compensations after the pivot")

        let plain = try await Self.runSaga(["graph", "order", "--store-url", store.url])
        #expect(plain.output.contains("\n" + Self.plainOrderGraph + "\n"), "\(plain.output)")
        #expect(!plain.output.contains("subgraph") && !plain.output.contains("parallel"), "\(plain.output)")
    }

    @Test func showAndListSayWhereEachMemberOfARunningGroupIs() async throws {
        let definition = try Self.checkout()
        let machine = SagaStateMachine(definition: definition)
        // Two minutes ahead, so that authorize-payment's retry is still due when the CLI runs,
        // even on a loaded machine.
        let now = Date().addingTimeInterval(120)
        // In the group: reserve-stock completed, authorize-payment's first attempt failed (the
        // second one is due), screen-fraud skipped (amount 50).
        var mixed = try #require(Self.inGroup("pg-mixed", machine: machine, now: now))
        mixed = try #require(
            machine.apply(.stepCompleted(step: 1, attempt: 1, patch: ["reservation": "R-1"], startedAt: now), to: mixed, now: now).state)
        mixed = try #require(
            machine.apply(
                .stepFailed(step: 2, attempt: 1, error: "card network timeout", retryable: true, startedAt: now), to: mixed, now: now
            ).state)
        // Just entered the group: both members run attempt 1.
        let fresh = try #require(Self.inGroup("pg-fresh", machine: machine, now: now))
        // The reaper gave up on both running members: the saga needs an operator in the group.
        let stalled = try #require(machine.apply(.foundStalled(maxReapAttempts: 0), to: fresh, now: now).state)
        var stopped = stalled
        stopped.id = "pg-stopped"
        #expect(stopped.status == .needsAttention)

        let store = try await Self.seededStore([mixed, fresh, stopped])
        defer { try? FileManager.default.removeItem(at: store.directory) }

        let show = try await Self.runSaga(["show", "pg-mixed", "--store-url", store.url])
        print("saga show of a saga in a parallel group:\n\(show.output)")
        #expect(show.status == 0, "\(show.output)")
        #expect(
            show.output.contains(
                "RUNNING at parallel group 'prepare': reserve-stock completed, authorize-payment running (attempt 2), screen-fraud skipped"
            ), "\(show.output)")
        #expect(
            show.output.contains("waiting for 1 member(s) of parallel group 'prepare' to finish: 'payment.authorize' attempt 2"),
            "\(show.output)")
        #expect(show.output.contains("step 3 'authorize-payment': retrying at "), "\(show.output)")
        #expect(show.output.contains("the last attempt failed: card network timeout"), "\(show.output)")
        #expect(show.output.contains("settled: reserve-stock completed, screen-fraud skipped"), "\(show.output)")
        #expect(show.output.contains("routing key(s) 'payment.authorize'"), "\(show.output)")
        #expect(!show.output.contains("'inventory.reserve' attempt"), "the completed member is not waited for: \(show.output)")

        let mixedJSON = try Self.jsonObject(try await Self.runSaga(["show", "pg-mixed", "--json", "--store-url", store.url]).stdout)
        let next = try #require(mixedJSON["nextStep"] as? [String: Any])
        #expect(next["kind"] as? String == "retrying")
        #expect(next["command"] as? String == "payment.authorize" && next["attempt"] as? Int == 2)
        let members = (next["group"] as? [String: Any])?["members"] as? [[String: Any]]
        #expect(members?.map { $0["progress"] as? String } == ["completed", "running", "skipped"], "\(mixedJSON)")
        #expect(members?[1]["attempt"] as? Int == 2)

        let freshShow = try await Self.runSaga(["show", "pg-fresh", "--store-url", store.url])
        #expect(
            freshShow.output.contains(
                "waiting for 2 member(s) of parallel group 'prepare' to finish: 'inventory.reserve' attempt 1, 'payment.authorize' attempt 1"
            ), "\(freshShow.output)")
        #expect(freshShow.output.contains("screen-fraud skipped"), "\(freshShow.output)")

        let stoppedShow = try await Self.runSaga(["show", "pg-stopped", "--store-url", store.url])
        print("saga show of a saga stopped in a parallel group:\n\(stoppedShow.output)")
        #expect(
            stoppedShow.output.contains("needs an operator: `saga retry pg-stopped` or `saga compensate pg-stopped`"),
            "\(stoppedShow.output)")
        #expect(
            stoppedShow.output.contains(
                "sends again: 'inventory.reserve' as attempt 2 (step 2 'reserve-stock', action), 'payment.authorize' as attempt 2 (step 3 'authorize-payment', action)"
            ), "\(stoppedShow.output)")
        #expect(
            stoppedShow.output.contains(
                "stopped in parallel group 'prepare': reserve-stock unfinished (attempt 1), authorize-payment unfinished (attempt 1), screen-fraud skipped"
            ), "\(stoppedShow.output)")
        #expect(
            stoppedShow.output.contains(
                "undoes instead: the completed and unfinished members (newest declared first), then the steps before"),
            "\(stoppedShow.output)")

        let list = try await Self.runSaga(["list", "--store-url", store.url])
        let line = list.output.split(separator: "\n").first { $0.hasPrefix("pg-mixed") }
        #expect(
            line?.contains("parallel group 'prepare': reserve-stock completed, authorize-payment running (attempt 2), screen-fraud skipped")
                == true, "\(list.output)")
    }

    @Test(
        .enabled(if: ProcessInfo.processInfo.environment["AMQP_URL"] != nil, "set AMQP_URL (scripts/rabbitmq.sh url), or run `make test`"))
    func consoleDrawsMembersSideBySideWithTheirStates() async throws {
        let amqp = try #require(ProcessInfo.processInfo.environment["AMQP_URL"])
        let definition = try Self.checkout()
        let machine = SagaStateMachine(definition: definition)
        let now = Date()
        var mixed = try #require(Self.inGroup("pg-console", machine: machine, now: now))
        mixed = try #require(machine.apply(.stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: now), to: mixed, now: now).state)
        let store = try await Self.seededStore([mixed])
        defer { try? FileManager.default.removeItem(at: store.directory) }

        let console = try ProductProcess(
            "saga",
            ["console", "--port", "0", "--store-url", store.url, "--amqp-url", amqp, "--prefix", "pg-\(UUID().uuidString.prefix(8))"],
            environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil, "SAGA_CONSOLE_TOKEN": nil, "SAGAKIT_CONSOLE_TOKEN": nil])
        #expect(try await console.waitForOutput(containing: "listening on http://", timeout: .seconds(60)), "\(console.output)")
        let base = try #require(
            console.output.split(separator: " ").first { $0.hasPrefix("http://127.0.0.1:") }.map { String($0) }, "\(console.output)")

        let page = try await Self.get(base + "definitions/checkout")
        let graph = try #require(page.range(of: "<svg class=\"graph\"").map { String(page[$0.lowerBound...]) })
        #expect(graph.contains("<rect class=\"group\""), "the group is drawn as a box")
        #expect(graph.contains("‖ parallel group prepare"), "with its name")
        #expect(Self.count("class=\"fork\"", in: graph) == 2, "a fork bar and a join bar")
        let members = graph.components(separatedBy: "<").filter { $0.hasPrefix("rect class=\"step") && $0.contains(" member") }
        #expect(members.count == 3, "three members")
        // Side by side: the three members share one row.
        let memberRows = Set(members.map { Self.attribute("y", of: $0) })
        #expect(memberRows.count == 1, "\(memberRows)")
        #expect(graph.contains("<text class=\"step-when\""), "the condition is drawn")
        #expect(graph.contains("when amount &gt; 1000"), "the condition's text")

        let sagaPage = try await Self.get(base + "sagas/pg-console")
        #expect(
            sagaPage.contains(
                "running at parallel group &#39;prepare&#39;: reserve-stock completed, authorize-payment running (attempt 1), screen-fraud skipped"
            ), "\(sagaPage)")
        #expect(sagaPage.contains("<section id=\"parallel-group\">"), "the group's members listed")
        #expect(sagaPage.contains("<li class=\"member st-completed\" data-step=\"reserve-stock\">"))
        #expect(sagaPage.contains("<li class=\"member st-running\" data-step=\"authorize-payment\">"))
        #expect(sagaPage.contains("<li class=\"member st-skipped\" data-step=\"screen-fraud\">"))
        #expect(sagaPage.contains("waiting for 1 member(s) of parallel group"), "what happens next, for the group")
        let drawn = try #require(sagaPage.range(of: "<section id=\"steps\">").map { String(sagaPage[$0.lowerBound...]) })
        #expect(drawn.contains("step member st-completed\""), "reserve-stock drawn completed")
        #expect(drawn.contains("step member st-running\""), "authorize-payment drawn running")
        #expect(drawn.contains("step conditional member st-skipped\""), "screen-fraud drawn skipped")
        #expect(drawn.contains("step st-completed\""), "create-order drawn completed")
        console.process.terminate()
        _ = try await console.waitForExit(timeout: .seconds(10))
    }

    // MARK: - Helpers

    /// A `checkout` saga (amount 50: screen-fraud is skipped) that completed create-order and
    /// runs the group.
    static func inGroup(_ id: String, machine: SagaStateMachine, now: Date) -> SagaState? {
        let start = machine.begin(id: id, payload: ["amount": 50], now: now)
        return machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: now), to: start.state, now: now).state
    }

    /// A SQLite store in a new directory that knows `checkout`, `fulfilment` and `order` and
    /// holds `sagas`.
    static func seededStore(_ sagas: [SagaState]) async throws -> (directory: URL, url: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-groups-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await store.register(try checkout())
            try await store.register(try plainOrder())
            try await store.register(try fulfilment())
            for saga in sagas { _ = try await store.create(saga, outbox: []) }
        }
        return (directory, "sqlite://\(path)")
    }

    /// Runs the `saga` executable built next to the test binary: its exit status, its standard
    /// output, and both outputs interleaved.
    static func runSaga(_ arguments: [String]) async throws -> (status: Int32, stdout: String, output: String) {
        let run = await CommandRun.product("saga", arguments, environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil])
        return (run.status, run.stdout, run.stderr + run.stdout)
    }

    static func jsonObject(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
    }

    static func get(_ url: String) async throws -> String {
        let (data, response) = try await URLSession.shared.data(from: try #require(URL(string: url)))
        #expect((response as? HTTPURLResponse)?.statusCode == 200, "\(url)")
        return String(decoding: data, as: UTF8.self)
    }

    static func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    /// The value of attribute `name` in an SVG tag's text (`rect class="…" y="12" …`).
    static func attribute(_ name: String, of tag: String) -> String? {
        guard let range = tag.range(of: " \(name)=\"") else { return nil }
        return String(tag[range.upperBound...].prefix { $0 != "\"" })
    }
}
