public import Configuration

/// The names of the exchanges and queues SagaKit uses on the broker, and the topology a
/// participant declares.
///
/// - `<prefix>.commands` (direct): every saga command, routed by command name.
/// - `<prefix>.<service>` (one queue per service): bound to the commands the service handles;
///   competing consumers of one service share it.
/// - `<prefix>.delay.<n>s` (fanout exchange + queue with a TTL of *n* seconds that dead-letters
///   back to the commands exchange with the original routing key): delayed retries on a stock
///   broker, no plugin. A delay is rounded up to the next level; a delay longer than the largest
///   level is shortened to the largest level (a participant logs a warning at start when a retry
///   policy allows such delays).
/// - `<prefix>.dead-letter` (fanout) → `<prefix>.dead-letters`: messages that cannot be
///   processed, with headers saying why and where they came from.
/// - `<prefix>.events` (topic): saga lifecycle events (``SagaLifecycleEvent``), routing key
///   `<definition>.<kind>`; any service binds its own queue to it. Which events are published is
///   ``events``.
public struct SagaTopology: Sendable, Hashable {
    /// The prefix of every name (default `sagakit`).
    public var prefix: String
    /// The type of the service queues (quorum queues for replicated clusters).
    public var queueKind: QueueSpec.Kind
    /// The delay levels, in seconds, ascending.
    public var delayLevels: [Int]
    /// Which saga lifecycle events are published to ``eventsExchange`` (default all).
    public var events: SagaLifecycleEvent.Selection
    /// How old a command's copy of its saga's state may be for a participant to use it instead of
    /// loading the saga (default 2 seconds); `nil`: commands carry no copy.
    ///
    /// A command carries a copy (in its body: `state`, sealed in `stateSeal`; see WireFormat.md) when
    /// the store seals copies (``SagaStore/stateSeal``: the PostgreSQL store does) and the
    /// transition sends exactly one command (not the branches of a parallel group, which would
    /// find each other's copies stale). A participant uses it only on a first delivery
    /// (`redelivered` unset), when the seal verifies, and while the copy is at most this old by
    /// its own clock; otherwise it loads the saga. A copy that is out of date all the same (an
    /// operator's action in that window) loses the commit's compare-and-swap, and the saga is
    /// loaded and decided again as after any concurrent change: the handler's outcome is then
    /// discarded (``SagaError/Code/outcomeDiscarded``) and its local writes rolled back.
    public var stateInCommands: Duration?

    /// Creates the naming scheme.
    public init(
        prefix: String = "sagakit", queueKind: QueueSpec.Kind = .classic, delayLevels: [Int] = [1, 2, 5, 10, 30, 60, 300, 900, 3600],
        events: SagaLifecycleEvent.Selection = .all, stateInCommands: Duration? = .seconds(2)
    ) {
        self.prefix = prefix
        self.queueKind = queueKind
        self.delayLevels = delayLevels.sorted()
        self.events = events
        self.stateInCommands = stateInCommands.flatMap { $0 > .zero ? $0 : nil }
    }

    /// Reads the naming scheme.
    ///
    /// Keys: `prefix` (default `sagakit`), `queue.kind` (`classic` or `quorum`, default
    /// `classic`), `delay.levels` (comma-separated seconds, default `1,2,5,10,30,60,300,900,3600`),
    /// `events` (`all`, `outcomes`, `terminal` or `none`, default `all`: see ``SagaLifecycleEvent/Selection``),
    /// `state.in.commands.seconds` (seconds, default 2; `0` or `off`: none, see ``stateInCommands``).
    /// - Throws: `invalidConfiguration` naming the key whose value is malformed.
    public init(reader: ConfigReader) throws {
        let prefix = reader.string(forKey: "prefix", default: "sagakit")
        guard !prefix.isEmpty, prefix.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw SagaError(
                .invalidConfiguration,
                "configuration value \(reader.sagaDescribe("prefix")) must be letters, digits, '-', '_' or '.', not '\(prefix)'")
        }
        let kind = try reader.sagaChoice("queue.kind", default: "classic", choices: ["classic", "quorum"])
        var levels = SagaTopology().delayLevels
        if let text = reader.string(forKey: "delay.levels") {
            let parsed = text.split(separator: ",").map { Int($0.trimmingPrefix(" ")) }
            guard !parsed.isEmpty, parsed.allSatisfy({ ($0 ?? 0) > 0 }) else {
                throw SagaError(
                    .invalidConfiguration,
                    "configuration value \(reader.sagaDescribe("delay.levels")) must be comma-separated whole seconds greater than 0, not '\(text)'"
                )
            }
            levels = parsed.compactMap { $0 }
        }
        let events = try reader.sagaChoice("events", default: "all", choices: SagaLifecycleEvent.Selection.allCases.map(\.rawValue))
        let stateInCommands = try reader.sagaSecondsOrOff("state.in.commands.seconds", default: SagaTopology().stateInCommands)
        self.init(
            prefix: prefix, queueKind: kind == "quorum" ? .quorum : .classic, delayLevels: levels,
            events: SagaLifecycleEvent.Selection(rawValue: events) ?? .all, stateInCommands: stateInCommands)
    }

    /// The key under which a saga's context records the prefix of the topology it was started
    /// on, so that reapers of other deployments sharing the store leave it alone.
    public static let contextKey = SagaState.topologyKey

    /// The exchange every command is published to.
    public var commandsExchange: String { "\(prefix).commands" }
    /// The exchange dead letters are published to.
    public var deadLetterExchange: String { "\(prefix).dead-letter" }
    /// The topic exchange saga lifecycle events are published to.
    public var eventsExchange: String { "\(prefix).events" }
    /// The queue that keeps dead letters.
    public var deadLetterQueue: String { "\(prefix).dead-letters" }
    /// The queue of a service.
    public func queue(forService service: String) -> String { "\(prefix).\(service)" }
    /// The delay exchange/queue name of a level.
    public func delayName(seconds: Int) -> String { "\(prefix).delay.\(seconds)s" }

    /// The smallest delay level that is at least `delay`. A delay longer than the largest level
    /// cannot be rounded up: it is shortened to the largest level (add a longer level to
    /// ``delayLevels`` when retries must wait longer).
    public func delayLevel(for delay: Duration) -> Int {
        let seconds = delay.seconds
        return delayLevels.first(where: { Double($0) >= seconds }) ?? delayLevels.last ?? 1
    }

    /// Exchanges and queues shared by every participant: commands, delays, dead letters.
    public var shared: Topology {
        var topology = Topology(
            exchanges: [
                ExchangeSpec(name: commandsExchange, kind: .direct),
                ExchangeSpec(name: deadLetterExchange, kind: .fanout),
                ExchangeSpec(name: eventsExchange, kind: .topic),
            ],
            queues: [QueueSpec(name: deadLetterQueue, kind: queueKind)],
            bindings: [BindingSpec(queue: deadLetterQueue, exchange: deadLetterExchange, routingKey: "")]
        )
        for level in delayLevels {
            let name = delayName(seconds: level)
            topology.exchanges.append(ExchangeSpec(name: name, kind: .fanout))
            topology.queues.append(
                QueueSpec(name: name, kind: queueKind, deadLetterExchange: commandsExchange, messageTTL: .seconds(level))
            )
            topology.bindings.append(BindingSpec(queue: name, exchange: name, routingKey: ""))
        }
        return topology
    }

    /// The shared topology plus a service's queue bound to its commands.
    public func topology(forService service: String, commands: [String]) -> Topology {
        let queue = queue(forService: service)
        return shared.merging(
            Topology(
                queues: [QueueSpec(name: queue, kind: queueKind, deadLetterExchange: deadLetterExchange, deadLetterRoutingKey: queue)],
                bindings: commands.sorted().map { BindingSpec(queue: queue, exchange: commandsExchange, routingKey: $0) }
            )
        )
    }
}
