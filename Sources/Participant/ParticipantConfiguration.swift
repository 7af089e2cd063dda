/// How a participant runs.
public struct ParticipantConfiguration: Sendable {
    /// The service name; its queue is `<prefix>.<service>`. Instances of one service share the
    /// queue as competing consumers.
    public var service: String
    /// Broker names and the delay levels.
    public var topology: SagaTopology
    /// Unacknowledged deliveries the broker hands this instance at once; it bounds how many
    /// handlers run concurrently.
    public var prefetch: Int
    /// Bodies larger than this are dead-lettered without being parsed.
    public var maxBodyBytes: Int
    /// How often the outbox relay looks for committed but unpublished commands, and how old they
    /// must be (so that it does not race the participant that is publishing them right now).
    public var outboxPollInterval: Duration
    /// See ``outboxPollInterval``.
    public var outboxGracePeriod: Duration
    /// The reaper, or `nil` to run none in this process.
    public var reaper: ReaperConfiguration?

    /// Creates a configuration.
    public init(
        service: String,
        topology: SagaTopology = SagaTopology(),
        prefetch: Int = 64,
        maxBodyBytes: Int = 64 * 1024,
        outboxPollInterval: Duration = .seconds(2),
        outboxGracePeriod: Duration = .seconds(5),
        reaper: ReaperConfiguration? = ReaperConfiguration()
    ) {
        self.service = service
        self.topology = topology
        self.prefetch = prefetch
        self.maxBodyBytes = maxBodyBytes
        self.outboxPollInterval = outboxPollInterval
        self.outboxGracePeriod = outboxGracePeriod
        self.reaper = reaper
    }
}

/// The stalled-saga reaper. It runs safely in several processes at once: each poll claims
/// stalled sagas with a lease, so two reapers never take the same saga.
public struct ReaperConfiguration: Sendable {
    /// How often to look for stalled sagas (reference default 300 s).
    public var pollInterval: Duration
    /// A running or compensating saga not updated for this long is stalled (reference default
    /// 900 s).
    public var stalledThreshold: Duration
    /// Re-sends of the current command without progress before the saga needs attention.
    public var maxReapAttempts: Int
    /// Sagas claimed per poll.
    public var batchSize: Int

    /// Creates a reaper configuration.
    public init(
        pollInterval: Duration = .seconds(300), stalledThreshold: Duration = .seconds(900), maxReapAttempts: Int = 3, batchSize: Int = 100
    ) {
        self.pollInterval = pollInterval
        self.stalledThreshold = stalledThreshold
        self.maxReapAttempts = maxReapAttempts
        self.batchSize = batchSize
    }
}
