/// What every SagaKit component of one process shares: the saga definitions it knows, the bus,
/// the store, the broker names, and a logger.
///
/// Build it once and hand it to ``SagaParticipant``, ``SagaManager`` and ``SagaReaper``:
///
/// ```swift
/// let runtime = SagaRuntime(definitions: definitions, bus: bus, store: store, logger: logger)
/// let participant = SagaParticipant(service: "payment", handlers: handlers, runtime: runtime)
/// let manager = SagaManager(runtime: runtime)
/// ```
public struct SagaRuntime: Sendable {
    /// The saga definitions this process runs.
    public var definitions: SagaDefinitionRegistry
    /// The message bus (RabbitMQ in production, ``InMemoryBus`` in tests).
    public var bus: any MessageBus
    /// The saga store every instance of every service shares.
    public var store: any SagaStore
    /// The names of the exchanges and queues on the broker.
    public var topology: SagaTopology
    /// The logger components derive theirs from.
    public var logger: Logger

    /// Creates a runtime.
    public init(
        definitions: SagaDefinitionRegistry,
        bus: any MessageBus,
        store: any SagaStore,
        topology: SagaTopology = SagaTopology(),
        logger: Logger = Logger(label: "sagakit")
    ) {
        self.definitions = definitions
        self.bus = bus
        self.store = store
        self.topology = topology
        self.logger = logger
    }

    var engine: SagaEngine {
        SagaEngine(store: store, bus: bus, definitions: definitions, topology: topology)
    }
}
