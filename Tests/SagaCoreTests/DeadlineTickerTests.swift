import Synchronization
import Testing

@testable import SagaCore

/// The one task that keeps many waits' deadlines (store attempts, step timeouts, waits for a
/// saga's end): a deadline fires once, within a tick after it, unless withdrawn; nothing is
/// scheduled while the ticker is not running; stopping it fires what is left.
@Suite("Deadline ticker")
struct DeadlineTickerTests {
    @Test func deadlinesFireOnceWithinATickUnlessWithdrawn() async throws {
        let ticker = DeadlineTicker(tick: .milliseconds(20))
        let nothing: @Sendable () -> Void = {}
        #expect(ticker.schedule(at: .now, nothing) == nil, "not running: the caller keeps a timer of its own")

        let fired = Mutex<[String]>([])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await ticker.run() }
            let started = ContinuousClock.now + .seconds(5)
            while !ticker.isRunning {
                #expect(ContinuousClock.now < started, "the ticker did not start")
                try await Task.sleep(for: .milliseconds(2))
            }
            let now = ContinuousClock.now
            let record: @Sendable (String) -> @Sendable () -> Void = { name in { fired.withLock { $0.append(name) } } }
            let soon = ticker.schedule(at: now + .milliseconds(50), record("soon"))
            let withdrawn = ticker.schedule(at: now + .milliseconds(50), record("withdrawn"))
            let left = ticker.schedule(at: now + .seconds(3600), record("left"))
            #expect(soon != nil && withdrawn != nil && left != nil && soon != withdrawn)
            if let withdrawn { ticker.cancel(withdrawn) }

            let outcome = OneShot<ContinuousClock.Instant>()
            let setOutcome: @Sendable () -> Void = { outcome.set(.now) }
            #expect(ticker.schedule(at: now + .milliseconds(50), setOutcome) != nil)
            let at = await outcome.value()
            #expect(at - now >= .milliseconds(50) && at - now < .seconds(2), "fired after \(at - now)")
            let deadline = ContinuousClock.now + .seconds(5)
            while fired.withLock({ $0 }) != ["soon"] && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(fired.withLock { $0 } == ["soon"])
            #expect(ticker.scheduledCount == 1)
            group.cancelAll()
        }
        #expect(fired.withLock { $0 } == ["soon", "left"], "stopping the ticker fires what is left")
        #expect(!ticker.isRunning && ticker.scheduledCount == 0)
        #expect(ticker.schedule(at: .now, nothing) == nil)
    }

    @Test func aOneShotKeepsTheFirstValue() async {
        let shot = OneShot<Int>()
        shot.set(1)
        shot.set(2)
        #expect(await shot.value() == 1)
        let later = OneShot<Int>()
        async let value = later.value()
        later.set(3)
        #expect(await value == 3)
    }
}
