public import Foundation

/// A running process of a service that takes part in sagas, as it last reported itself to the
/// store (see ``SagaStore/recordParticipant(_:)``).
///
/// Every participant reports itself while it runs (every
/// `ParticipantConfiguration.presenceInterval`) and forgets itself when it stops gracefully, so
/// the store answers the operator's questions about a saga that does not move: which service
/// handles the command it waits for, and whether any process of that service is alive.
public struct ParticipantInstance: Sendable, Hashable, Codable {
    /// The topology prefix the participant consumes on (``SagaTopology``'s prefix).
    public var topology: String
    /// The service's name: its queue is `<topology>.<service>`.
    public var service: String
    /// The process: host name, process id and a random tag, unique among the service's instances.
    public var instance: String
    /// The commands the participant has handlers for, sorted.
    public var commands: [String]
    /// When the process started taking part.
    public var startedAt: Date
    /// When it last reported itself.
    public var lastSeen: Date
    /// How often it reports itself (to the millisecond).
    public var reportInterval: Duration

    /// Creates an instance record.
    public init(
        topology: String, service: String, instance: String, commands: [String], startedAt: Date, lastSeen: Date,
        reportInterval: Duration
    ) {
        self.topology = topology
        self.service = service
        self.instance = instance
        self.commands = commands.sorted()
        self.startedAt = startedAt
        self.lastSeen = lastSeen
        self.reportInterval = reportInterval
    }

    /// Whether the instance reported itself at `now`, give or take two missed reports (a process
    /// that stops reporting for longer has died, hangs, or cannot reach the store).
    public func isLive(at now: Date) -> Bool {
        now.timeIntervalSince(lastSeen) <= 3 * reportInterval.seconds + 1
    }

    /// ``reportInterval`` in whole milliseconds, as stores keep it.
    public var reportIntervalMilliseconds: Int64 {
        Int64((reportInterval.seconds * 1000).rounded())
    }

    /// How long instances are kept after their last report: older ones are removed by the next
    /// report of any participant (a process killed without a graceful stop leaves its record).
    public static let retention: Duration = .seconds(7 * 24 * 3600)
}
