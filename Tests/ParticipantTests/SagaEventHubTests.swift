import Foundation
import Synchronization
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

    /// A waiter's fallback wake-up is kept by the hub's ticks (no timer per wait): asked only
    /// while the hub listens and ticks, fired once when due, withdrawn when an event came first,
    /// and fired for every waiter left when the ticks stop.
    @Test func fallbackWakeUpsAreTheHubsWhileItListensAndTicks() async throws {
        let hub = SagaEventHub()
        let signal = WakeSignal()
        let token = hub.subscribe("a", signal: signal, terminalOnly: true)
        let now = ContinuousClock.now
        #expect(!hub.wake("a", token: token, at: now), "not listening: the waiter keeps its own timer")

        hub.setListening(true)
        let ticks = Task { await hub.runWakeTicks() }
        let started = ContinuousClock.now + .seconds(5)
        while !hub.wake("a", token: token, at: now + .seconds(1)) {
            #expect(ContinuousClock.now < started, "the ticks did not start")
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(!hub.wake("other", token: token, at: now), "no such waiter")

        let woken = Mutex(0)
        func countWakes() async {
            await signal.wait()
            woken.withLock { $0 += 1 }
        }
        hub.ticker.fireDue(at: now + .milliseconds(999))
        hub.ticker.fireDue(at: now + .seconds(1))
        hub.ticker.fireDue(at: now + .seconds(2))
        await countWakes()
        #expect(woken.withLock { $0 } == 1)

        // Withdrawn: an event came first.
        #expect(hub.wake("a", token: token, at: now + .seconds(1)))
        hub.cancelWake("a", token: token)
        hub.ticker.fireDue(at: now + .seconds(2))
        let early = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await signal.wait()
                return !Task.isCancelled
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(100))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        #expect(!early, "a withdrawn wake-up fired")
        hub.deliver(end("a"))
        await countWakes()  // the event's signal, not the withdrawn wake-up
        #expect(woken.withLock { $0 } == 2)

        // Stopping the ticks wakes the waiter that asked, and later waits keep their own timers.
        #expect(hub.wake("a", token: token, at: now + .seconds(60)))
        ticks.cancel()
        await ticks.value
        await countWakes()
        #expect(woken.withLock { $0 } == 3)
        #expect(!hub.wake("a", token: token, at: now + .seconds(60)))
        hub.unsubscribe("a", token: token)
    }
}
