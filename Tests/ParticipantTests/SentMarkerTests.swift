import Logging
import Synchronization
import Testing

@testable import Participant

/// The sent marker gathers the ids queued in one window into one store write, sleeps while
/// nothing is queued, and hands ids back to the caller when it is not running.
@Suite("Sent marker", .timeLimit(.minutes(1)))
struct SentMarkerTests {
    /// Records each flush's ids.
    final class Recorder: Sendable {
        let flushes = Mutex<[[String]]>([])
        var all: [[String]] { flushes.withLock { $0 } }
    }

    private func marker(_ recorder: Recorder, interval: Duration = .milliseconds(100)) -> SentMarker {
        SentMarker(interval: interval, logger: Logger(label: "test")) { ids in
            recorder.flushes.withLock { $0.append(ids) }
        }
    }

    /// Runs `body` while `marker` runs (once `run()` has started), then stops the marker.
    private func whileRunning(_ marker: SentMarker, _ body: () async throws -> Void) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await marker.run() }
            try await waitUntil { marker.enqueue([]) }
            try await body()
            group.cancelAll()
        }
    }

    private func waitUntil(_ condition: () -> Bool) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while !condition() && clock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }

    @Test("ids queued within one window are marked with one write, in order")
    func aWindowIsOneWrite() async throws {
        let recorder = Recorder()
        let marker = marker(recorder, interval: .milliseconds(300))
        try await whileRunning(marker) {
            #expect(marker.enqueue(["a"]))
            #expect(marker.enqueue(["b", "c"]))
            #expect(marker.enqueue(["d"]))
            try await waitUntil { !recorder.all.isEmpty }
            #expect(recorder.all == [["a", "b", "c", "d"]])
            // The next id opens a new window.
            #expect(marker.enqueue(["e"]))
            try await waitUntil { recorder.all.count == 2 }
            #expect(recorder.all == [["a", "b", "c", "d"], ["e"]])
        }
    }

    @Test("an idle marker writes nothing; a cancelled one marks what is queued, then hands ids back")
    func idleAndStop() async throws {
        let recorder = Recorder()
        let marker = marker(recorder, interval: .seconds(30))
        // Not running: the caller marks the ids itself.
        #expect(!marker.enqueue(["early"]))
        try await whileRunning(marker) {
            try await Task.sleep(for: .milliseconds(300))
            #expect(recorder.all.isEmpty)
            // Queued within a window that has not ended: flushed when the marker stops.
            #expect(marker.enqueue(["late"]))
        }
        #expect(recorder.all == [["late"]])
        #expect(!marker.enqueue(["after"]))
    }

    @Test("a participant's window stays a tenth of its relay's grace period or less")
    func windowFollowsTheGracePeriod() {
        #expect(SentMarker.interval(forGracePeriod: .seconds(5)) == .milliseconds(100))
        #expect(SentMarker.interval(forGracePeriod: .milliseconds(500)) == .milliseconds(50))
        #expect(SentMarker.interval(forGracePeriod: .zero) == .zero)
    }

    @Test("a second run of a shared marker returns at once and leaves the first in charge")
    func secondRunReturns() async throws {
        let recorder = Recorder()
        let marker = marker(recorder, interval: .milliseconds(50))
        try await whileRunning(marker) {
            await marker.run()
            #expect(marker.enqueue(["x"]))
            try await waitUntil { !recorder.all.isEmpty }
            #expect(recorder.all == [["x"]])
        }
    }
}
