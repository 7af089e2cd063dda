import SagaCore
import Testing

@testable import SagaRabbitMQ

/// The connection thread's decisions, without a broker: instants are made from one base instant, jitter is given.
@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine<String>
    let t0 = ContinuousClock.now

    func machine(
        endpoints: Int = 1, failFast: Bool = false, min: Duration = .milliseconds(100), max: Duration = .seconds(1)
    ) -> Machine {
        Machine(
            policy: .init(
                endpointCount: endpoints, reconnectDelayMin: min, reconnectDelayMax: max,
                publishRecoveryTimeout: .seconds(60), shutdownTimeout: .seconds(10), failFastOnStartup: failFast))
    }

    @Test("backoff doubles per failed round and is capped; jitter scales it")
    func backoffGrowthAndCap() {
        var m = machine()
        #expect(m.start() == .connect(endpoint: 0))
        var now = t0
        var delays: [Duration] = []
        for _ in 0..<6 {
            guard case .backOff(let until, _, _) = m.connectFailed(now: now, jitter: 1) else {
                Issue.record("expected a backoff")
                return
            }
            delays.append(until - now)
            #expect(m.tick(now: until - .milliseconds(1)) == .wait(until: until))
            now = until
            #expect(m.tick(now: now) == .connect(endpoint: 0))
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
        #expect(m.backoffDelay(round: 0, jitter: 0.8) == .milliseconds(80))
        #expect(m.backoffDelay(round: 50, jitter: 1) == .seconds(1))
    }

    @Test("failures are warnings the first time and every tenth time")
    func logLevels() {
        var m = machine()
        _ = m.start()
        var warnings: [Int] = []
        var now = t0
        for _ in 1...20 {
            if case .backOff(let until, let failures, let warn) = m.connectFailed(now: now, jitter: 1) {
                if warn { warnings.append(failures) }
                now = until
                _ = m.tick(now: now)
            }
        }
        #expect(warnings == [1, 10, 20])
    }

    @Test("endpoints are tried in order, round-robin, backing off only after a full round")
    func endpointRotation() {
        var m = machine(endpoints: 3)
        #expect(m.start() == .connect(endpoint: 0))
        #expect(m.connectFailed(now: t0, jitter: 1) == .connect(endpoint: 1))
        #expect(m.connectFailed(now: t0, jitter: 1) == .connect(endpoint: 2))
        guard case .backOff(let until, let failures, _) = m.connectFailed(now: t0, jitter: 1) else {
            Issue.record("expected a backoff after the round")
            return
        }
        #expect(failures == 3 && until == t0 + .milliseconds(100))
        #expect(m.tick(now: until) == .connect(endpoint: 0))
        #expect(m.connectFailed(now: until, jitter: 1) == .connect(endpoint: 1))
        let connected = m.connectSucceeded(now: until)
        #expect(connected.isFirstConnection && connected.failedAttempts == 4 && !connected.redeclareTopology)
        #expect(m.state == .connected(endpoint: 1))
        // A loss reconnects to the same endpoint first, after the shortest backoff.
        let lost = m.connectionLost(now: until, jitter: 1)
        #expect(lost.reconnectAt == until + .milliseconds(100))
        #expect(m.tick(now: until + .milliseconds(100)) == .connect(endpoint: 1))
        let again = m.connectSucceeded(now: until + .seconds(1))
        #expect(!again.isFirstConnection && again.redeclareTopology)
    }

    @Test("fail fast: the start fails once every endpoint failed once")
    func failFast() {
        var m = machine(endpoints: 2, failFast: true)
        _ = m.start()
        #expect(m.connectFailed(now: t0, jitter: 1) == .connect(endpoint: 1))
        #expect(m.connectFailed(now: t0, jitter: 1) == .failStartup)
        #expect(m.state == .closed)
        #expect(m.tick(now: t0) == .finish)
    }

    @Test("a refused login fails the start at once, fail fast or not; after a first connection it is retried")
    func aRefusedLoginFailsTheStart() {
        var m = machine(endpoints: 3, failFast: false)
        _ = m.start()
        #expect(m.connectFailed(now: t0, jitter: 1, refused: true) == .failStartup)
        #expect(m.state == .closed)
        var running = machine(failFast: false)
        _ = running.start()
        _ = running.connectSucceeded(now: t0)
        _ = running.connectionLost(now: t0, jitter: 1)
        _ = running.tick(now: t0 + .seconds(1))
        guard case .backOff = running.connectFailed(now: t0 + .seconds(1), jitter: 1, refused: true) else {
            Issue.record("a refused reconnect must keep trying (the credentials may be rotating)")
            return
        }
    }

    @Test("fail fast applies to the first connection only")
    func failFastOnlyAtStart() {
        var m = machine(failFast: true)
        _ = m.start()
        _ = m.connectSucceeded(now: t0)
        _ = m.connectionLost(now: t0, jitter: 1)
        _ = m.tick(now: t0 + .seconds(1))
        guard case .backOff = m.connectFailed(now: t0 + .seconds(1), jitter: 1) else {
            Issue.record("a reconnect must keep trying")
            return
        }
    }

    @Test("shutdown while disconnected finishes at once and refuses what was parked")
    func shutdownWhileDisconnected() {
        var m = machine()
        _ = m.start()
        _ = m.connectFailed(now: t0, jitter: 1)
        #expect(m.disposition(of: "declare a", isConsume: false) == .park)
        #expect(m.shutdownRequested(now: t0) == .finishNow)
        #expect(m.tick(now: t0) == .finish)
        #expect(m.disposition(of: "declare b", isConsume: false) == .refuse)
        #expect(m.finish() == ["declare a"])
        #expect(m.shutdownRequested(now: t0) == .none)
    }

    @Test("shutdown while connected drains until everything settles or the deadline passes")
    func shutdownDeadline() {
        var m = machine()
        _ = m.start()
        _ = m.connectSucceeded(now: t0)
        m.consumerRegistered(7)
        m.consumerRegistered(3)
        #expect(m.shutdownRequested(now: t0) == .drain(deadline: t0 + .seconds(10), cancelConsumers: [3, 7]))
        #expect(!m.isConsumerActive(3))
        #expect(m.drainVerdict(now: t0 + .seconds(1), allSettled: false, unconfirmed: 0) == .keepDraining)
        #expect(m.drainVerdict(now: t0 + .seconds(1), allSettled: true, unconfirmed: 2) == .keepDraining)
        #expect(m.drainVerdict(now: t0 + .seconds(2), allSettled: true, unconfirmed: 0) == .finish)
        #expect(m.drainVerdict(now: t0 + .seconds(10), allSettled: false, unconfirmed: 5) == .finishTimedOut)
        // Declarations still run while draining; new consumers are refused.
        #expect(m.disposition(of: "declare", isConsume: false) == .run)
        #expect(m.disposition(of: "consume", isConsume: true) == .refuse)
        // A loss while closing does not reconnect.
        let lost = m.connectionLost(now: t0 + .seconds(3), jitter: 1)
        #expect(lost.reconnectAt == nil && lost.dropConsumers == [3, 7])
        #expect(m.tick(now: t0 + .seconds(3)) == .finish)
    }

    @Test("after a loss: unconfirmed publishes are resent in order, returned ones fail as unroutable")
    func resendOrFail() {
        var tracker = ConfirmTracker<String>()
        for name in ["a", "b", "c", "d"] { tracker.add(name) }
        tracker.confirm(tag: 1, multiple: false) { _ in }
        tracker.markReturned(.init(replyCode: 312, replyText: "NO_ROUTE")) { $0 == "c" }
        let (resend, unroutable) = Machine.afterLoss(tracker.removeAll())
        #expect(resend == ["b", "d"])
        #expect(unroutable == ["c"])
    }

    @Test("queued publishes expire only while disconnected, after publishRecoveryTimeout")
    func publishExpiry() {
        var m = machine()
        _ = m.start()
        _ = m.connectSucceeded(now: t0)
        #expect(!m.publishExpired(enqueued: t0, now: t0 + .seconds(120)))
        _ = m.connectionLost(now: t0 + .seconds(1), jitter: 1)
        #expect(m.disconnectedSince == t0 + .seconds(1))
        #expect(!m.publishExpired(enqueued: t0, now: t0 + .seconds(59)))
        #expect(m.publishExpired(enqueued: t0, now: t0 + .seconds(61)))
        _ = m.tick(now: t0 + .seconds(2))
        _ = m.connectSucceeded(now: t0 + .seconds(2))
        #expect(m.disconnectedSince == nil)
        #expect(!m.publishExpired(enqueued: t0, now: t0 + .seconds(120)))
    }

    @Test("declarations and consumer starts park while disconnected and run, in order, on reconnect")
    func parkedCommands() {
        var m = machine()
        _ = m.start()
        _ = m.connectSucceeded(now: t0)
        #expect(m.disposition(of: "now", isConsume: false) == .run)
        _ = m.connectionLost(now: t0, jitter: 1)
        #expect(m.disposition(of: "declare 1", isConsume: false) == .park)
        #expect(m.disposition(of: "consume 2", isConsume: true) == .park)
        m.repark("declare 3")  // the connection dropped in the middle of it
        _ = m.tick(now: t0 + .seconds(1))
        #expect(m.connectSucceeded(now: t0 + .seconds(1)).runParked == ["declare 1", "consume 2", "declare 3"])
        _ = m.connectionLost(now: t0 + .seconds(2), jitter: 1)
        _ = m.tick(now: t0 + .seconds(3))
        #expect(m.connectSucceeded(now: t0 + .seconds(3)).runParked.isEmpty)
    }

    @Test("consumers are re-registered after a reconnect, in registration order, except removed ones")
    func consumerRestart() {
        var m = machine()
        _ = m.start()
        _ = m.connectSucceeded(now: t0)
        for id: UInt64 in [5, 1, 9] { m.consumerRegistered(id) }
        m.consumerRemoved(9)
        _ = m.connectionLost(now: t0, jitter: 1)
        m.consumerRegistered(2)  // started while disconnected: starts with the connection
        _ = m.tick(now: t0 + .seconds(1))
        #expect(m.connectSucceeded(now: t0 + .seconds(1)).restartConsumers == [1, 2, 5])
    }
}
