/// The decisions of one connection thread, as a value type without I/O, clocks or randomness.
///
/// The ``ConnectionWorker`` does the I/O (librabbitmq calls, poll) and feeds the machine what happened, with the
/// current instant and, for backoff, a jitter factor it drew itself; the machine answers with what to do next. In
/// the style of swift-kafka-client's `KafkaProducer.StateMachine` and postgres-nio's `PoolStateMachine`, so every
/// decision is unit-tested without a broker (`ConnectionStateMachineTests`).
///
/// States: `idle` → `connecting` → `connected` ⇄ (`backingOff` → `connecting`) → `closing` → `closed`.
///
/// `Parked` is what waits for a connection (declarations and consumer starts that arrived while disconnected).
struct ConnectionStateMachine<Parked> {
    typealias Instant = ContinuousClock.Instant

    /// The settings the decisions depend on.
    struct Policy: Sendable {
        /// How many broker endpoints there are (tried in order, round-robin on failure); at least 1.
        var endpointCount: Int = 1
        var reconnectDelayMin: Duration = .milliseconds(100)
        var reconnectDelayMax: Duration = .seconds(10)
        var publishRecoveryTimeout: Duration = .seconds(60)
        var shutdownTimeout: Duration = .seconds(10)
        /// When the very first connection fails: give up (`true`) or keep trying (`false`).
        var failFastOnStartup = false
    }

    enum State: Equatable {
        /// Nothing tried yet.
        case idle
        /// An attempt on `endpoint` is under way; `failures` attempts failed before it.
        case connecting(endpoint: Int, failures: Int, everConnected: Bool)
        case connected(endpoint: Int)
        /// Waiting until `until` before trying `endpoint`.
        case backingOff(until: Instant, endpoint: Int, failures: Int, everConnected: Bool)
        /// Shutting down: settling deliveries and waiting for confirms until `deadline` at the latest.
        case closing(deadline: Instant)
        case closed
    }

    /// What to do about a connection attempt.
    enum ConnectAction: Equatable {
        /// Try to connect to this endpoint now.
        case connect(endpoint: Int)
        /// Sleep (still serving the mailbox) until then, and ask again with ``tick(now:)``.
        case wait(until: Instant)
        /// Stop the thread.
        case finish
    }

    /// What to do after a connection attempt failed.
    enum FailureAction: Equatable {
        /// Try the next endpoint at once (the round over the endpoints is not finished).
        case connect(endpoint: Int)
        /// Back off until `until`; `logAsWarning` for the first failure and every tenth (the others are noise).
        case backOff(until: Instant, failures: Int, logAsWarning: Bool)
        /// The first connection failed and the policy says to fail fast: report the error and stop.
        case failStartup
        /// Shutting down: stop.
        case finish
    }

    /// What to do once connected.
    struct ConnectedAction {
        /// `true` for the thread's first connection (report that the bus is up).
        var isFirstConnection: Bool
        /// Failed attempts before this success.
        var failedAttempts: Int
        /// Re-declare the recorded topology (after a reconnect; nothing was declared before the first connection).
        var redeclareTopology: Bool
        /// Consumers to start again, in registration order.
        var restartConsumers: [UInt64]
        /// Commands that waited for the connection, in arrival order.
        var runParked: [Parked]
    }

    /// What to do after the connection was lost.
    struct LostAction {
        /// Back off until then before reconnecting; `nil` when shutting down (then finish).
        var reconnectAt: Instant?
        /// Consumers that were being stopped by a shutdown: forget them (the broker requeues their messages).
        var dropConsumers: [UInt64]
    }

    /// What to do when shutdown is asked for.
    enum ShutdownAction: Equatable {
        /// Connected: cancel these consumers, then keep serving settlements and confirms until done or `deadline`.
        case drain(deadline: Instant, cancelConsumers: [UInt64])
        /// Not connected: nothing can be drained; finish now.
        case finishNow
        /// Already shutting down.
        case none
    }

    /// Whether a command that needs the broker runs now, waits for the connection, or is refused.
    enum Disposition: Equatable {
        case run
        case park
        case refuse
    }

    /// The verdict on a shutdown in progress.
    enum DrainVerdict: Equatable {
        case keepDraining
        case finish
        case finishTimedOut
    }

    private(set) var state: State = .idle
    let policy: Policy
    private var parked: [Parked] = []
    /// Registered consumers: `true` while active, `false` once a shutdown is stopping them.
    private var consumers: [UInt64: Bool] = [:]
    /// When the connection was lost (publishes queued before then may expire).
    private(set) var disconnectedSince: Instant?

    init(policy: Policy) {
        precondition(policy.endpointCount >= 1, "at least one endpoint")
        self.policy = policy
    }

    var isConnected: Bool {
        if case .connected = state { return true }
        return false
    }

    var isShuttingDown: Bool {
        switch state {
        case .closing, .closed: true
        default: false
        }
    }

    // MARK: Connecting

    /// Starts the first connection attempt.
    mutating func start() -> ConnectAction {
        guard case .idle = state else { return tickAction() }
        state = .connecting(endpoint: 0, failures: 0, everConnected: false)
        return .connect(endpoint: 0)
    }

    /// Asks, while backing off, whether it is time to try again.
    mutating func tick(now: Instant) -> ConnectAction {
        if case .backingOff(let until, let endpoint, let failures, let everConnected) = state, now >= until {
            state = .connecting(endpoint: endpoint, failures: failures, everConnected: everConnected)
            return .connect(endpoint: endpoint)
        }
        return tickAction()
    }

    private func tickAction() -> ConnectAction {
        switch state {
        case .idle: .connect(endpoint: 0)
        case .connecting(let endpoint, _, _), .connected(let endpoint): .connect(endpoint: endpoint)
        case .backingOff(let until, _, _, _): .wait(until: until)
        case .closing, .closed: .finish
        }
    }

    /// The attempt succeeded.
    mutating func connectSucceeded(now: Instant) -> ConnectedAction {
        guard case .connecting(let endpoint, let failures, let everConnected) = state else {
            preconditionFailure("connectSucceeded in state \(state)")
        }
        state = .connected(endpoint: endpoint)
        disconnectedSince = nil
        let waiting = parked
        parked.removeAll()
        return ConnectedAction(
            isFirstConnection: !everConnected,
            failedAttempts: failures,
            redeclareTopology: everConnected,
            restartConsumers: consumers.filter(\.value).keys.sorted(),
            runParked: waiting)
    }

    /// The attempt failed. `jitter` (drawn by the caller, typically in 0.8...1.0) scales the backoff delay.
    /// `refused`: the broker answered and refused the login, the vhost or the access (a wrong password, a
    /// vhost that does not exist), or the TLS settings cannot work (a certificate that does not verify against
    /// the CA given or does not name the host, a CA file that cannot be loaded): before the first connection
    /// that is a mistake in the settings, which no
    /// retry mends, so the start fails at once, whatever ``Policy/failFastOnStartup`` says. After a first
    /// connection (credentials rotated under a running service) it is retried like any other failure.
    mutating func connectFailed(now: Instant, jitter: Double, refused: Bool = false) -> FailureAction {
        guard case .connecting(let endpoint, let failures, let everConnected) = state else {
            return isShuttingDown ? .finish : .failStartup
        }
        let failed = failures + 1
        let next = (endpoint + 1) % policy.endpointCount
        if !everConnected, refused || (policy.failFastOnStartup && next == 0) {
            // Refused, or (fail fast) every endpoint was tried once.
            state = .closed
            return .failStartup
        }
        if next != 0 {
            // Still going round the endpoints: the next one may well be up.
            state = .connecting(endpoint: next, failures: failed, everConnected: everConnected)
            return .connect(endpoint: next)
        }
        let rounds = (failed - 1) / policy.endpointCount
        let until = now + backoffDelay(round: rounds, jitter: jitter)
        state = .backingOff(until: until, endpoint: next, failures: failed, everConnected: everConnected)
        return .backOff(until: until, failures: failed, logAsWarning: failed == 1 || failed % 10 == 0)
    }

    /// The delay before the attempt after `round` full rounds of failures: `reconnectDelayMin` doubled per round,
    /// capped at `reconnectDelayMax`, times `jitter`.
    func backoffDelay(round: Int, jitter: Double) -> Duration {
        let base = policy.reconnectDelayMin * (1 << min(max(round, 0), 20))
        return min(base, policy.reconnectDelayMax) * min(max(jitter, 0), 1)
    }

    /// The connection dropped (socket error, missed heartbeats, an unexpected channel close).
    mutating func connectionLost(now: Instant, jitter: Double) -> LostAction {
        let stopping = consumers.filter { !$0.value }.keys.sorted()
        for id in stopping { consumers[id] = nil }
        switch state {
        case .connected(let endpoint):
            disconnectedSince = now
            let until = now + backoffDelay(round: 0, jitter: jitter)
            state = .backingOff(until: until, endpoint: endpoint, failures: 0, everConnected: true)
            return LostAction(reconnectAt: until, dropConsumers: stopping)
        case .closing, .closed:
            state = .closed
            return LostAction(reconnectAt: nil, dropConsumers: stopping)
        case .idle, .connecting, .backingOff:
            return LostAction(reconnectAt: nil, dropConsumers: stopping)
        }
    }

    // MARK: Commands

    /// Where a declaration (or a consumer start, `isConsume`) goes; a parked one is kept here until
    /// ``connectSucceeded(now:)`` hands it back.
    mutating func disposition(of command: Parked, isConsume: Bool) -> Disposition {
        switch state {
        case .connected: return .run
        case .closing: return isConsume ? .refuse : .run
        case .closed: return .refuse
        case .idle, .connecting, .backingOff:
            parked.append(command)
            return .park
        }
    }

    /// An operation found the connection gone halfway: keep the command for the next connection.
    mutating func repark(_ command: Parked) {
        parked.append(command)
    }

    /// Whether a publish queued at `enqueued` has waited too long for a lost connection to come back.
    func publishExpired(enqueued: Instant, now: Instant) -> Bool {
        guard !isConnected, disconnectedSince != nil else { return false }
        return now - enqueued > policy.publishRecoveryTimeout
    }

    /// Splits the publishes left unconfirmed by a lost connection or channel: those the broker returned as
    /// unroutable fail, the others are sent again (in order) on the next channel.
    static func afterLoss<Item>(_ outstanding: [ConfirmTracker<Item>.Entry]) -> (resend: [Item], unroutable: [Item]) {
        var resend: [Item] = []
        var unroutable: [Item] = []
        for entry in outstanding {
            if entry.returned != nil { unroutable.append(entry.item) } else { resend.append(entry.item) }
        }
        return (resend, unroutable)
    }

    // MARK: Consumers

    /// A consumer was started (or registered while disconnected: it starts with the connection).
    mutating func consumerRegistered(_ id: UInt64) { consumers[id] = true }

    /// A consumer is gone for good (cancelled, refused by the broker, its queue deleted).
    mutating func consumerRemoved(_ id: UInt64) { consumers[id] = nil }

    /// Whether a consumer is registered and not being stopped.
    func isConsumerActive(_ id: UInt64) -> Bool { consumers[id] == true }

    // MARK: Shutdown

    /// Shutdown was asked for at `now`.
    mutating func shutdownRequested(now: Instant) -> ShutdownAction {
        switch state {
        case .connected:
            let deadline = now + policy.shutdownTimeout
            state = .closing(deadline: deadline)
            let active = consumers.filter(\.value).keys.sorted()
            for id in active { consumers[id] = false }
            return .drain(deadline: deadline, cancelConsumers: active)
        case .idle, .connecting, .backingOff:
            state = .closed
            return .finishNow
        case .closing, .closed:
            return .none
        }
    }

    /// While closing: finish when everything is settled and confirmed, or when the deadline has passed.
    func drainVerdict(now: Instant, allSettled: Bool, unconfirmed: Int) -> DrainVerdict {
        guard case .closing(let deadline) = state else { return .finish }
        if allSettled && unconfirmed == 0 { return .finish }
        return now >= deadline ? .finishTimedOut : .keepDraining
    }

    /// The thread stops: returns the commands still parked (to refuse them).
    mutating func finish() -> [Parked] {
        state = .closed
        defer { parked.removeAll() }
        return parked
    }
}
