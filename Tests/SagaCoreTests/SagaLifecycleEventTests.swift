import Foundation
import SagaCore
import Testing

/// a (compensated), b (compensated, retried twice), pivot p.
private let definition = try! SagaBuilder("trip")
    .step("a", action: "a.do", compensation: "a.undo")
    .step("b", action: "b.do", compensation: "b.undo", options: StepOptions(retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1))))
    .step("p", action: "p.do", options: .pivot)
    .compensationRetry(RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1)))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_700_000_000.123)

@Suite("Saga lifecycle events")
struct SagaLifecycleEventTests {
    /// Applies the events one after the other and collects the lifecycle events of each transition.
    private func run(_ events: [SagaEvent]) -> (SagaState, [SagaLifecycleEvent]) {
        var (state, _) = machine.start(id: "s1", payload: [:], context: [SagaState.definitionVersionKey: "3"], now: t0)
        var published = [SagaLifecycleEvent.started(state, at: t0)]
        for event in events {
            guard case .transition(let next, _) = machine.apply(event, to: state, now: t0) else {
                Issue.record("\(event) did not apply")
                continue
            }
            published += SagaLifecycleEvent.events(of: event, from: state, to: next, version: state.version + 1, at: t0)
            state = next
            state.version += 1
        }
        return (state, published)
    }

    @Test func aCompletedSagaPublishesStartedEachStepAndCompleted() {
        let (_, events) = run([
            .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0),
            .stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0),
            .stepCompleted(step: 2, attempt: 1, patch: [:], startedAt: t0),
        ])
        #expect(events.map(\.kind) == [.started, .stepCompleted, .stepCompleted, .stepCompleted, .completed])
        #expect(events.map(\.sagaVersion) == [1, 2, 3, 4, 4])
        #expect(
            events.map(\.routingKey) == [
                "trip.started", "trip.step-completed", "trip.step-completed", "trip.step-completed", "trip.completed",
            ])
        #expect(events[2].stepName == "b" && events[2].step == 1 && events[2].attempt == 1 && events[2].phase == .action)
        #expect(events.allSatisfy { $0.definitionVersion == 3 && $0.sagaID == "s1" && $0.sagaName == "trip" })
        #expect(Set(events.map(\.id)).count == events.count)
    }

    /// What `SagaManager.startAndWait` returns when it finds the end in the store: the same
    /// event the ending transition published.
    @Test func theEndingOfAnEndedSagaIsTheEventItsLastTransitionPublished() {
        let failing: [SagaEvent] = [
            .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0),
            .stepFailed(step: 1, attempt: 1, error: "timeout", retryable: true, startedAt: t0),
            .stepFailed(step: 1, attempt: 2, error: "timeout again", retryable: true, startedAt: t0),
        ]
        let paths: [[SagaEvent]] = [
            (0..<3).map { .stepCompleted(step: $0, attempt: 1, patch: [:], startedAt: t0) },
            failing + [.compensationCompleted(step: 0, attempt: 1, startedAt: t0)],
            failing + [
                .compensationFailed(step: 0, attempt: 1, error: "down", startedAt: t0),
                .compensationFailed(step: 0, attempt: 2, error: "still down", startedAt: t0),
            ],
        ]
        var kinds: [SagaLifecycleEvent.Kind] = []
        for path in paths {
            let (state, events) = run(path)
            let ending = SagaLifecycleEvent.ending(of: state)
            #expect(ending == events.last, "\(state.status)")
            kinds += ending.map { [$0.kind] } ?? []
        }
        #expect(kinds == [.completed, .compensated, .needsAttention])
        #expect(SagaLifecycleEvent.ending(of: run(Array(failing.prefix(1))).0) == nil)
    }

    @Test func aFailureThatIsRetriedThenCompensatedSaysSo() {
        let (state, events) = run([
            .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0),
            .stepFailed(step: 1, attempt: 1, error: "timeout", retryable: true, startedAt: t0),
            .stepFailed(step: 1, attempt: 2, error: "timeout again", retryable: true, startedAt: t0),
            .compensationCompleted(step: 0, attempt: 1, startedAt: t0),
        ])
        #expect(state.status == .compensated)
        #expect(
            events.map(\.kind) == [
                .started, .stepCompleted, .stepFailed, .stepFailed, .compensationStarted, .compensationStepCompleted, .compensated,
            ])
        #expect(events[2].willRetry == true && events[2].error == "timeout")
        #expect(events[3].willRetry == false && events[3].error == "timeout again")
        #expect(events[4].step == 0 && events[4].phase == .compensation && events[4].error == state.failureReason)
        #expect(events[6].status == .compensated)
    }

    @Test func aStuckCompensationNeedsAttentionAndAnOperatorRetryIsAnEvent() {
        let (state, events) = run([
            .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0),
            .stepFailed(step: 1, attempt: 1, error: "no", retryable: false, startedAt: t0),
            .compensationFailed(step: 0, attempt: 1, error: "down", startedAt: t0),
            .compensationFailed(step: 0, attempt: 2, error: "still down", startedAt: t0),
        ])
        #expect(state.status == .needsAttention)
        #expect(events.suffix(3).map(\.kind) == [.compensationStepFailed, .compensationStepFailed, .needsAttention])
        #expect(events[events.count - 3].willRetry == true)
        #expect(events[events.count - 2].willRetry == false)
        let retry = SagaEvent.retryRequested(by: "alice", reason: "the refund service is back")
        let next = machine.apply(retry, to: state, now: t0).state!
        let operatorEvents = SagaLifecycleEvent.events(of: retry, from: state, to: next, version: state.version + 1, at: t0)
        // Resuming a compensation is the operator's action, not a second compensation-started.
        #expect(operatorEvents.map(\.kind) == [.operatorAction])
        #expect(operatorEvents[0].actor == "alice" && operatorEvents[0].reason == "the refund service is back")
        #expect(operatorEvents[0].action == "retry" && operatorEvents[0].status == .compensating)
    }

    @Test func aFirstStepRefusedWithNothingToUndoStartsAndEndsCompensationAtOnce() {
        let (_, events) = run([.stepFailed(step: 0, attempt: 1, error: "declined", retryable: false, startedAt: t0)])
        #expect(events.map(\.kind) == [.started, .stepFailed, .compensationStarted, .compensated])
    }

    @Test func theOutcomesSelectionKeepsWhatWaitingAndWatchingNeed() {
        let kept = SagaLifecycleEvent.Kind.allCases.filter { SagaLifecycleEvent.Selection.outcomes.includes($0) }
        #expect(kept == [.started, .compensationStarted, .completed, .compensated, .needsAttention, .operatorAction, .waiting])
        #expect(SagaLifecycleEvent.Kind.allCases.allSatisfy { SagaLifecycleEvent.Selection.all.includes($0) })
        #expect(SagaLifecycleEvent.Kind.allCases.allSatisfy { !SagaLifecycleEvent.Selection.none.includes($0) })
        let terminal = SagaLifecycleEvent.Kind.allCases.filter { SagaLifecycleEvent.Selection.terminal.includes($0) }
        #expect(terminal == [.completed, .compensated, .needsAttention])
    }

    @Test func theWireFormatKeepsMillisecondsAndLeavesOutAbsentFields() throws {
        let (_, events) = run([.stepFailed(step: 0, attempt: 1, error: "declined", retryable: false, startedAt: t0)])
        let event = events[1]
        let data = try JSONCoding.encode(event)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["at"] as? String == "2023-11-14T22:13:20.123Z")
        #expect(object["kind"] as? String == "step-failed")
        #expect(object["sagaID"] as? String == "s1")
        #expect(object["actor"] == nil && object["reason"] == nil)
        let decoded = try JSONCoding.decode(SagaLifecycleEvent.self, from: data)
        #expect(decoded == event)
        // A producer in another language may send whole seconds.
        let text = String(decoding: data, as: UTF8.self).replacingOccurrences(of: "20.123Z", with: "20Z")
        #expect(try JSONCoding.decode(SagaLifecycleEvent.self, from: Data(text.utf8)).at == Date(timeIntervalSince1970: 1_700_000_000))
    }
}

@Suite("Wire format schemas")
struct WireFormatSchemaTests {
    private static func schema(_ name: String) throws -> [String: Any] {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Docs/schemas/\(name)")
        return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: docs)) as? [String: Any])
    }

    @Test func theEventSchemaDescribesEveryField() throws {
        let schema = try Self.schema("saga-event.schema.json")
        let properties = try #require(schema["properties"] as? [String: Any])
        // An event with every optional field set.
        let event = SagaLifecycleEvent(
            kind: .operatorAction, sagaID: "s", sagaName: "n", definitionVersion: 1, status: .running, sagaVersion: 2, step: 0,
            stepName: "a", phase: .action, attempt: 1, error: "e", willRetry: true, action: "retry", actor: "x", reason: "r",
            at: Date())
        let encoded = try #require(try JSONSerialization.jsonObject(with: JSONCoding.encode(event)) as? [String: Any])
        #expect(Set(encoded.keys) == Set(properties.keys))
        let minimal = SagaLifecycleEvent(
            kind: .completed, sagaID: "s", sagaName: "n", definitionVersion: 1, status: .completed, sagaVersion: 2, at: Date())
        let required = try #require(schema["required"] as? [String])
        let minimalKeys = try #require(try JSONSerialization.jsonObject(with: JSONCoding.encode(minimal)) as? [String: Any]).keys
        #expect(Set(required) == Set(minimalKeys))
        let kinds = try #require((properties["kind"] as? [String: Any])?["enum"] as? [String])
        #expect(kinds == SagaLifecycleEvent.Kind.allCases.map(\.rawValue))
        let statuses = try #require((properties["status"] as? [String: Any])?["enum"] as? [String])
        #expect(Set(statuses) == Set(SagaStatus.allCases.map(\.rawValue)))
    }

    @Test func theCommandSchemaDescribesEveryField() throws {
        let schema = try Self.schema("saga-command.schema.json")
        let properties = try #require(schema["properties"] as? [String: Any])
        let command = SagaCommand(sagaID: "s", sagaName: "n", command: "c", step: 0, stepName: "a", phase: .action, attempt: 1)
        let encoded = try #require(try JSONSerialization.jsonObject(with: JSONCoding.encode(command)) as? [String: Any])
        let withCopy = try #require(
            try JSONSerialization.jsonObject(with: Data(command.jsonBytes(stateCopy: (Array(#"{"id":"s"}"#.utf8), "0a1b"))))
                as? [String: Any])
        #expect(Set(withCopy.keys) == Set(properties.keys))
        #expect(Set(try #require(schema["required"] as? [String])) == Set(encoded.keys))
    }
}
