public import Configuration

/// How a participant runs.
public struct ParticipantConfiguration: Sendable {
    /// The service name; its queue is `<prefix>.<service>`. Instances of one service share the
    /// queue as competing consumers.
    public var service: String
    /// Broker names and the delay levels.
    public var topology: SagaTopology
    /// Unacknowledged deliveries the broker hands this instance at once. Those beyond
    /// ``maxConcurrentHandlers`` wait in the process, ready for the next free handler.
    public var prefetch: Int
    /// How many deliveries this instance processes at once (default 64; at most ``prefetch``, see
    /// ``handlerLimit``). A delivery waiting its turn costs about 2 KB; one in a handler, suspended
    /// at a store connection or a publish, costs its task's frames, about 30 KB. Raise it for
    /// handlers that spend long waiting on other services, not for ones the store's connections
    /// bound.
    public var maxConcurrentHandlers: Int
    /// Command bodies larger than this are dead-lettered. The copy of its saga's state that a
    /// command's body may carry (at most 16 KiB) does not count; a body larger than the limit plus
    /// that is dead-lettered without being parsed.
    public var maxBodyBytes: Int
    /// How often the outbox relay looks for committed but unpublished commands, and how old they
    /// must be (so that it does not race the participant that is publishing them right now).
    public var outboxPollInterval: Duration
    /// See ``outboxPollInterval``.
    public var outboxGracePeriod: Duration
    /// The reaper, or `nil` to run none in this process.
    public var reaper: ReaperConfiguration?
    /// In-process orchestration: a saga's next step whose handler this participant has runs in
    /// this process, without a broker round trip (default `false`: every command goes through the
    /// broker, so that all instances share the work). The command is still stored in the outbox
    /// with the transition and marked sent only once its step is processed, so a crash leaves it
    /// to the outbox relay, which publishes it through the broker. Retries (delayed commands)
    /// still go through the broker's delay queues. Register the handlers of several steps in one
    /// participant to run those steps as local functions; steps of other services stay remote.
    public var inProcessSteps: Bool
    /// Where the participant says whether it consumes its queue and processes its commands
    /// (for readiness probes): the process's registry unless told otherwise.
    public var health: SagaHealth = .process
    /// How often the participant records in the store that it runs, with its service and
    /// commands (``ParticipantInstance``), for `saga services` and `saga show` to say which
    /// service a saga waits for and whether it is alive; `nil` records nothing. Default 15 s.
    public var presenceInterval: Duration? = .seconds(15)
    /// The name this process goes by in its presence record (`saga services`), for example the
    /// `instance` its log lines carry; `nil` for `<host>:<pid>`. `SagaApplication` sets it to
    /// its ``SagaApplication/instance``. The record's id adds the host when the name lacks it.
    public var instanceName: String?

    /// Creates a configuration.
    public init(
        service: String,
        topology: SagaTopology = SagaTopology(),
        prefetch: Int = 64,
        maxConcurrentHandlers: Int = 64,
        maxBodyBytes: Int = 64 * 1024,
        outboxPollInterval: Duration = .seconds(2),
        outboxGracePeriod: Duration = .seconds(5),
        reaper: ReaperConfiguration? = ReaperConfiguration(),
        inProcessSteps: Bool = false
    ) {
        self.service = service
        self.topology = topology
        self.prefetch = prefetch
        self.maxConcurrentHandlers = maxConcurrentHandlers
        self.maxBodyBytes = maxBodyBytes
        self.outboxPollInterval = outboxPollInterval
        self.outboxGracePeriod = outboxGracePeriod
        self.reaper = reaper
        self.inProcessSteps = inProcessSteps
    }

    /// How many deliveries this instance processes at once: ``maxConcurrentHandlers``, at most
    /// ``prefetch`` (the broker never hands over more).
    public var handlerLimit: Int { max(1, min(maxConcurrentHandlers, prefetch)) }

    /// Reads the configuration of `service` (the service name is code, not configuration).
    ///
    /// Keys (relative to the reader; with `EnvironmentVariablesProvider` and the scope
    /// `sagakit`, `prefetch` is `SAGAKIT_PREFETCH`):
    /// - `prefetch` (int ≥ 1, default 64)
    /// - `max.concurrent.handlers` (int ≥ 1, default 64): ``maxConcurrentHandlers``
    /// - `max.body.bytes` (int ≥ 1, default 65536)
    /// - `outbox.poll.seconds` (seconds, default 2), `outbox.grace.seconds` (seconds, default 5)
    /// - `in.process.steps` (`true`/`false`, default `false`): ``inProcessSteps``
    /// - `presence.seconds` (seconds, default 15; `off` or 0 records nothing): ``presenceInterval``
    /// - `reaper.enabled` (`true`/`false`, default `true`) and the keys of
    ///   ``ReaperConfiguration/init(reader:)`` under `reaper`
    /// - the keys of ``SagaTopology/init(reader:)``
    ///
    /// - Throws: `invalidConfiguration` naming the key whose value is malformed.
    public init(service: String, reader: ConfigReader) throws {
        self.init(
            service: service,
            topology: try SagaTopology(reader: reader),
            prefetch: try reader.sagaInt("prefetch", default: 64, in: 1...65535),
            maxConcurrentHandlers: try reader.sagaInt("max.concurrent.handlers", default: 64, in: 1...65535),
            maxBodyBytes: try reader.sagaInt("max.body.bytes", default: 64 * 1024),
            outboxPollInterval: try reader.sagaSeconds("outbox.poll.seconds", default: .seconds(2)),
            outboxGracePeriod: try reader.sagaSeconds("outbox.grace.seconds", default: .seconds(5)),
            reaper: try reader.sagaChoice("reaper.enabled", default: "true", choices: ["true", "false"]) == "true"
                ? ReaperConfiguration(reader: reader.scoped(to: "reaper")) : nil,
            inProcessSteps: try reader.sagaChoice("in.process.steps", default: "false", choices: ["true", "false"]) == "true"
        )
        presenceInterval = try reader.sagaSecondsOrOff("presence.seconds", default: .seconds(15))
    }

    /// Checks the values a program set.
    /// - Throws: `invalidConfiguration` naming the value that is out of range.
    public func validate() throws {
        guard !service.isEmpty else { throw SagaError(.invalidConfiguration, "the participant's service name is empty") }
        guard (1...65535).contains(prefetch) else {
            throw SagaError(.invalidConfiguration, "prefetch must be between 1 and 65535, not \(prefetch)")
        }
        guard maxConcurrentHandlers >= 1 else {
            throw SagaError(.invalidConfiguration, "maxConcurrentHandlers must be at least 1, not \(maxConcurrentHandlers)")
        }
        guard maxBodyBytes > 0 else { throw SagaError(.invalidConfiguration, "maxBodyBytes must be positive, not \(maxBodyBytes)") }
        guard outboxPollInterval > .zero, outboxGracePeriod >= .zero else {
            throw SagaError(
                .invalidConfiguration,
                "the outbox poll interval must be positive and the grace period not negative (got \(outboxPollInterval), \(outboxGracePeriod))"
            )
        }
        if let presenceInterval, presenceInterval <= .zero {
            throw SagaError(.invalidConfiguration, "the presence interval must be positive (or nil for none), not \(presenceInterval)")
        }
        try reaper?.validate()
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

    /// Reads a reaper configuration.
    ///
    /// Keys: `poll.seconds` (default 300), `stalled.seconds` (default 900), `max.attempts`
    /// (default 3), `batch.size` (default 100).
    /// - Throws: `invalidConfiguration` naming the key whose value is malformed.
    public init(reader: ConfigReader) throws {
        self.init(
            pollInterval: try reader.sagaSeconds("poll.seconds", default: .seconds(300)),
            stalledThreshold: try reader.sagaSeconds("stalled.seconds", default: .seconds(900)),
            maxReapAttempts: try reader.sagaInt("max.attempts", default: 3),
            batchSize: try reader.sagaInt("batch.size", default: 100)
        )
    }

    /// Checks the values: every interval positive, attempts and batch size at least 1.
    /// - Throws: `invalidConfiguration` naming the value that is out of range.
    public func validate() throws {
        var problems: [String] = []
        if pollInterval <= .zero { problems.append("pollInterval must be positive, not \(pollInterval)") }
        if stalledThreshold <= .zero { problems.append("stalledThreshold must be positive, not \(stalledThreshold)") }
        if maxReapAttempts < 1 { problems.append("maxReapAttempts must be at least 1, not \(maxReapAttempts)") }
        if batchSize < 1 { problems.append("batchSize must be at least 1, not \(batchSize)") }
        guard problems.isEmpty else {
            throw SagaError(.invalidConfiguration, "invalid reaper configuration: \(problems.joined(separator: "; "))")
        }
    }
}
