public import Foundation

/// When a step's primary action is not tried: after `failureThreshold` failed attempts in a row
/// (across every saga and every instance of the service: the state is kept in the store), its
/// circuit opens for `openFor`, and sagas that reach the step run its fallback at once. After
/// `openFor` the circuit is half open: the next attempts try the primary again; the first
/// outcome closes it (success) or opens it again (failure).
public struct CircuitBreakerPolicy: Sendable, Hashable {
    /// Failed attempts of the primary action in a row that open the circuit (1 or more).
    public var failureThreshold: Int
    /// How long an open circuit keeps the primary action from being tried.
    public var openFor: Duration

    /// Creates a policy.
    public init(failureThreshold: Int = 5, openFor: Duration = .seconds(30)) {
        self.failureThreshold = failureThreshold
        self.openFor = openFor
    }
}

/// The state of one step's circuit breaker (see ``CircuitBreakerPolicy``), as stores keep it.
/// Pure: the transitions below decide everything, the store only keeps the value (with a
/// version, compared and swapped).
public struct CircuitBreakerState: Sendable, Hashable, Codable {
    /// Failed attempts of the primary action in a row since the circuit last closed.
    public var failures: Int
    /// When the circuit opened; `nil` while it is closed.
    public var openedAt: Date?

    /// Creates a state (closed, no failure, by default).
    public init(failures: Int = 0, openedAt: Date? = nil) {
        self.failures = failures
        self.openedAt = openedAt
    }

    /// A closed circuit with no failure.
    public static let closed = CircuitBreakerState()

    /// Where a circuit is.
    public enum Position: Sendable, Hashable {
        /// The primary action is tried.
        case closed
        /// The primary action is not tried until `until`: the fallback runs.
        case open(until: Date)
        /// The open interval passed: the primary action is tried again, and its next outcome
        /// closes or reopens the circuit.
        case halfOpen
    }

    /// Where the circuit is at `now`.
    public func position(_ policy: CircuitBreakerPolicy, at now: Date) -> Position {
        guard let openedAt else { return .closed }
        let until = openedAt.addingTimeInterval(policy.openFor.seconds)
        return now < until ? .open(until: until) : .halfOpen
    }

    /// Whether the primary action is tried at `now` (closed or half open).
    public func allowsPrimary(_ policy: CircuitBreakerPolicy, at now: Date) -> Bool {
        if case .open = position(policy, at: now) { return false }
        return true
    }

    /// The state after the primary action succeeded (or answered with a business refusal: the
    /// dependency works): closed, no failure.
    public func recordingSuccess() -> CircuitBreakerState { .closed }

    /// The state after an attempt of the primary action failed (an error or a timeout) at `now`:
    /// one more failure; the circuit opens at the threshold, and a failure while half open (or
    /// open) opens it again from `now`.
    public func recordingFailure(_ policy: CircuitBreakerPolicy, at now: Date) -> CircuitBreakerState {
        if openedAt != nil { return CircuitBreakerState(failures: max(failures, policy.failureThreshold), openedAt: now) }
        let failures = failures + 1
        return CircuitBreakerState(failures: failures, openedAt: failures >= policy.failureThreshold ? now : nil)
    }
}

/// A circuit breaker's state as a store keeps it, with the version its next save must expect.
public struct StoredCircuit: Sendable, Hashable {
    /// The state (``CircuitBreakerState/closed`` when the store has none).
    public var state: CircuitBreakerState
    /// The stored version; 0 when the store has no row for the circuit yet.
    public var version: Int64

    /// Creates a stored circuit.
    public init(state: CircuitBreakerState, version: Int64) {
        self.state = state
        self.version = version
    }
}
