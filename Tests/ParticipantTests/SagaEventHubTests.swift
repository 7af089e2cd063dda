import Foundation
import Testing

@testable import Participant

/// When `SagaManager.outcome(of:)` may skip its first store read: only for a saga the manager
/// started while listening, without a break since, whose end has not arrived.
@Suite("Saga event hub")
struct SagaEventHubTests {
    private func end(_ id: SagaID, _ kind: SagaLifecycleEvent.Kind = .completed) -> SagaLifecycleEvent {
        SagaLifecycleEvent(
            kind: kind, sagaID: id, sagaName: "order", definitionVersion: 1, status: kind == .completed ? .completed : .running,
            sagaVersion: 4, at: Date())
    }

    @Test func aSagaStartedWhileListeningHasNotEndedUntilItsTerminalEventArrives() {
        let hub = SagaEventHub()
        hub.noteStarted("before")
        hub.setListening(true)
        hub.noteStarted("a")
        hub.noteStarted("b")
        #expect(hub.hasNotEnded("a") && hub.hasNotEnded("b"))
        #expect(!hub.hasNotEnded("before"), "started before the hub listened: its end may have gone unheard")
        #expect(!hub.hasNotEnded("elsewhere"), "not started here: the hub cannot tell")

        hub.deliver(end("a", .stepCompleted))
        #expect(hub.hasNotEnded("a"), "a step event is not the end")
        hub.deliver(end("a"))
        #expect(!hub.hasNotEnded("a"))

        // A break in listening (a reconnect) may have lost events: the hub no longer vouches.
        hub.setListening(false)
        #expect(!hub.hasNotEnded("b"))
        hub.setListening(true)
        #expect(!hub.hasNotEnded("b"))
        hub.noteStarted("c")
        #expect(hub.hasNotEnded("c"))
    }

    @Test func theHubRemembersABoundedNumberOfSagas() {
        let hub = SagaEventHub()
        hub.setListening(true)
        for index in 0..<20_000 {
            hub.noteStarted("s\(index)")
            hub.deliver(end("s\(index)"))
        }
        let remembered = hub.remembered
        #expect(remembered.started <= 8192 && remembered.ended <= 8192, "\(remembered)")
        // The latest ones are still known to have ended; a forgotten start reads the store.
        #expect(!hub.hasNotEnded("s19999"))
        hub.noteStarted("new")
        #expect(hub.hasNotEnded("new"))
    }
}
