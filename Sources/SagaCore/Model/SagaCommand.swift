/// The body of a saga command message: which saga, which step, which phase, which attempt.
///
/// Bodies stay small; the saga lives in the store. A participant that receives a command loads
/// the saga (or uses the sealed copy of it that the body may carry, see ``SagaCommandBody``) and
/// runs the handler only when the command is the saga's current one.
public struct SagaCommand: Sendable, Hashable, Codable {
    /// The saga id.
    public var sagaID: SagaID
    /// The saga definition's name.
    public var sagaName: String
    /// The command name (also the routing key).
    public var command: String
    /// The step index (0-based).
    public var step: Int
    /// The step name.
    public var stepName: String
    /// Action or compensation.
    public var phase: StepPhase
    /// The attempt number (1-based).
    public var attempt: Int

    /// Creates a command.
    public init(sagaID: SagaID, sagaName: String, command: String, step: Int, stepName: String, phase: StepPhase, attempt: Int) {
        self.sagaID = sagaID
        self.sagaName = sagaName
        self.command = command
        self.step = step
        self.stepName = stepName
        self.phase = phase
        self.attempt = attempt
    }

    /// The key of a saga stored without an incarnation (started before SagaKit recorded one):
    /// `"<saga id>:<step name>:<phase>"`. Handlers get ``idempotencyKey(incarnation:)`` with the
    /// saga's ``SagaState/incarnation`` in ``SagaContext/idempotencyKey``.
    public var idempotencyKey: String { idempotencyKey(incarnation: nil) }

    /// A key that is the same for every delivery and every attempt of this step's phase of this
    /// saga, and differs for a later saga with the same id (after the first was purged):
    /// `"<saga id>:<step name>:<phase>:<incarnation>"` (``SagaState/incarnation``), or without
    /// `:<incarnation>` for a saga that records none. Handlers use it to apply their effect once.
    public func idempotencyKey(incarnation: String?) -> String {
        let key = "\(sagaID):\(stepName):\(phase.rawValue)"
        return incarnation.map { key + ":" + $0 } ?? key
    }

    /// A unique id for this command message (saga, step, phase and attempt).
    public var messageID: String { "\(sagaID):\(step):\(phase.rawValue):\(attempt)" }
}

/// A command to send, now or after a delay.
public struct ScheduledCommand: Sendable, Hashable {
    /// The command.
    public var command: SagaCommand
    /// How long to wait before delivering it; `nil` for now.
    public var delay: Duration?

    /// Creates a scheduled command.
    public init(_ command: SagaCommand, delay: Duration? = nil) {
        self.command = command
        self.delay = delay
    }
}
