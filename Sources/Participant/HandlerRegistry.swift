import Synchronization

/// A handler for one saga command: it does the service's local work and reports the outcome
/// through its ``SagaContext``.
public typealias SagaHandler = @Sendable (SagaContext) async throws -> Void

/// A handler with dependencies, registered as a value.
///
/// ```swift
/// struct ReserveStock: SagaStepHandler {
///     static let command = "inventory.reserve"
///     let stock: StockDatabase
///     func handle(_ context: SagaContext) async throws {
///         let order = try context.payload(as: Order.self)
///         let reservation = try await stock.reserve(order, key: context.idempotencyKey)
///         try await context.completeStep(merging: ["reservationId": .string(reservation.id)])
///     }
/// }
/// ```
public protocol SagaStepHandler: Sendable {
    /// The command this handler serves (an action or a compensation of some saga definition).
    static var command: String { get }
    /// Handles one command.
    func handle(_ context: SagaContext) async throws
}

/// The handlers of one service, one per command.
///
/// Registering two handlers for one command is a programmer error and stops the process with a
/// message naming the command.
public struct SagaHandlerRegistry: Sendable {
    private var handlers: [String: SagaHandler] = [:]

    /// An empty registry.
    public init() {}

    /// Registers a closure for a command.
    public mutating func register(_ command: String, handler: @escaping SagaHandler) {
        precondition(!command.isEmpty, "SagaKit: a handler was registered for an empty command name")
        precondition(
            handlers[command] == nil,
            "SagaKit: a handler for command '\(command)' is already registered; each command has exactly one handler per service"
        )
        handlers[command] = handler
    }

    /// Registers a handler value for its ``SagaStepHandler/command``.
    public mutating func register<Handler: SagaStepHandler>(_ handler: Handler) {
        register(Handler.command) { context in try await handler.handle(context) }
    }

    /// The handler for a command, if registered.
    public func handler(for command: String) -> SagaHandler? { handlers[command] }

    /// Every registered command, sorted.
    public var commands: [String] { handlers.keys.sorted() }

    /// Checks that every registered command belongs to a known saga definition.
    /// - Throws: `invalidConfiguration` naming the commands no definition sends.
    public func validate(against definitions: SagaDefinitionRegistry) throws {
        let known = Set(definitions.all.flatMap(\.commands))
        let unknown = commands.filter { !known.contains($0) }
        if !unknown.isEmpty {
            throw SagaError(
                .invalidConfiguration,
                "handlers are registered for commands that no saga definition sends: \(unknown.joined(separator: ", "))",
                recoverySuggestion: "check the command names against the definitions, or register the missing definition"
            )
        }
    }
}
