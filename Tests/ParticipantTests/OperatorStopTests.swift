import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

/// `saga stop` on a saga retrying its pivot for ever, with the real broker and a SQLite store:
/// it needs attention, `show` says who stopped it and why, it cannot be stopped twice, and a
/// resolution by hand completes it. An operator's action whose event cannot be published (no
/// service declared the exchanges) is not reported as failed: it is committed.
@Suite(
    "saga stop on a saga retrying past its pivot",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(2))
)
struct OperatorStopTests {
    @Test func aStoppedSagaNeedsAttentionAndIsResolvedByHand() async throws {
        let amqp = try #require(try TestBroker.availableURL())
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-stop-\(UUID().uuidString).db").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let prefix = "stop-\(UUID().uuidString.prefix(8).lowercased())"
        let trip = OperatorCLITests.trip
        let machine = SagaStateMachine(definition: trip)
        // hotel and flight done; the pivot `confirm` failed three times and is retried.
        var state = machine.start(
            id: "trip-forever", payload: [:], context: [SagaTopology.contextKey: prefix, SagaState.definitionVersionKey: "2"], now: Date()
        ).0
        for step in 0...1 {
            state = try #require(
                machine.apply(.stepCompleted(step: step, attempt: 1, patch: [:], startedAt: Date()), to: state, now: Date()).state)
        }
        for attempt in 1...3 {
            state = try #require(
                machine.apply(
                    .stepFailed(step: 2, attempt: attempt, error: "no such address", retryable: true, startedAt: Date()), to: state,
                    now: Date()
                ).state)
        }
        #expect(state.status == .running && state.attempt == 4)
        let stored = state
        // And a saga with a deadline, before its pivot.
        let held = try SagaBuilder("held")
            .step("hold", action: "stop-test.hold", compensation: "stop-test.release")
            .step("pay", action: "stop-test.pay", options: .pivot)
            .deadline(.seconds(600))
            .build()
        let heldSaga = SagaStateMachine(definition: held).start(
            id: "held-1", payload: [:], context: [SagaTopology.contextKey: prefix, SagaState.definitionVersionKey: "1"], now: Date()
        ).0
        // One whose deadline passed (its service was down for longer).
        let lateSaga = SagaStateMachine(definition: held).start(
            id: "held-late", payload: [:], context: [SagaTopology.contextKey: prefix, SagaState.definitionVersionKey: "1"],
            now: Date().addingTimeInterval(-700)
        ).0
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await store.register(trip)
            try await store.register(held)
            _ = try await store.create(stored, outbox: [])
            _ = try await store.create(heldSaga, outbox: [])
            _ = try await store.create(lateSaga, outbox: [])
        }
        func saga(_ arguments: [String]) async -> CommandRun {
            var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SAGAKIT_") && !$0.key.hasPrefix("SAGA_") }
            environment.merge(["SAGAKIT_STORE_URL": "sqlite://\(path)", "AMQP_URL": amqp, "SAGAKIT_PREFIX": prefix]) { $1 }
            return await CommandRun.run(SagaCLI.executable.path, arguments, environment: environment)
        }

        // `show` names the deadline of a saga that has one.
        let heldShown = await saga(["show", "held-1"])
        #expect(heldShown.stdout.contains("still running before its pivot then, the saga is compensated"), "\(heldShown)")

        let stop = await saga(["stop", "trip-forever", "--reason", "the address does not exist", "--by", "erin"])
        #expect(stop.status == 0, "\(stop)")
        #expect(stop.stdout.contains("saga trip-forever is needs-attention at confirm (action #4)"), "\(stop)")
        #expect(stop.stdout.contains("recorded: stopped by erin: \"the address does not exist\""), "\(stop)")
        // No service ever declared this deployment's exchanges: the stop's lifecycle event could not
        // be published. The stop still counts (it is not reported as failed, which would make an
        // operator act again); the event waits in the outbox for a participant's relay.
        let unsent = try await SQLiteSagaStore(path: path).withRunning { try await $0.pendingOutbox(of: "trip-forever") }
        #expect(!unsent.isEmpty && unsent.allSatisfy { $0.exchange == "\(prefix).events" }, "\(unsent.map(\.exchange))")
        let shown = await saga(["show", "trip-forever"])
        #expect(shown.stdout.contains("stopped by erin: the address does not exist"), "\(shown)")
        let again = await saga(["stop", "trip-forever", "--reason", "again"])
        #expect(again.status == 1 && again.stderr.contains("only a running or compensating saga can be stopped"), "\(again)")

        // Resuming a saga past its deadline says that it will compensate, not go on.
        #expect(await saga(["stop", "held-late", "--reason", "hold service down"]).status == 0)
        let resumed = await saga(["retry", "held-late", "--reason", "hold service back"])
        #expect(resumed.status == 0, "\(resumed)")
        #expect(
            resumed.stderr.contains("saga held-late: its deadline passed at") && resumed.stderr.contains("it compensates"), "\(resumed)")
        #expect(resumed.stderr.contains("retry it with --deadline-minutes N or --no-deadline"), "\(resumed)")
        // Retried with a new deadline, it goes on: no warning, the deadline moved, and the history
        // says who moved it, from when to when.
        #expect(await saga(["stop", "held-late", "--reason", "hold service down again"]).status == 0)
        let extended = await saga(["retry", "held-late", "--reason", "outage over", "--deadline-minutes", "90", "--json"])
        #expect(extended.status == 0 && !extended.stderr.contains("deadline passed"), "\(extended)")
        let moved = try await SQLiteSagaStore(path: path).withRunning { try await $0.load("held-late") }
        let newDeadline = try #require(moved.deadline)
        #expect(abs(newDeadline.timeIntervalSinceNow - 5_400) < 120, "\(newDeadline)")
        #expect(
            moved.history.last?.reason?.hasPrefix("outage over (deadline moved from ") == true, "\(String(describing: moved.history.last))")
        let bothWays = await saga(["retry", "held-late", "--deadline-minutes", "5", "--no-deadline"])
        #expect(bothWays.status != 0 && bothWays.stderr.contains("exclude each other"), "\(bothWays)")
        #expect(await saga(["stop", "held-1", "--reason", "hold service down"]).status == 0)
        let retriedInTime = await saga(["retry", "held-1", "--reason", "hold service back"])
        #expect(retriedInTime.status == 0 && !retriedInTime.stderr.contains("deadline"), "\(retriedInTime)")

        let resolved = await saga(["resolve", "trip-forever", "--reason", "confirmed by phone", "--by", "erin", "--json"])
        #expect(resolved.status == 0, "\(resolved)")
        let json = try JSONSerialization.jsonObject(with: Data(resolved.stdout.utf8)) as? [String: Any]
        #expect(json?["status"] as? String == "completed", "\(resolved)")
    }
}
