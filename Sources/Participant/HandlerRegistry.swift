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
/// Registering two handlers for one command, or one for an empty command name, is a mistake that
/// ``validate(against:)`` reports (`duplicateHandler`, `invalidConfiguration`): a participant
/// refuses to start with it, and `SagaApplication` prints it as one line and exits.
public struct SagaHandlerRegistry: Sendable {
    private var handlers: [String: SagaHandler] = [:]
    /// Commands registered more than once, in order (the first registration is kept).
    private var duplicates: [String] = []
    private var emptyNames = 0

    /// An empty registry.
    public init() {}

    /// Registers a closure for a command. A second handler for the same command is not
    /// registered: ``validate(against:)`` reports it.
    public mutating func register(_ command: String, handler: @escaping SagaHandler) {
        guard !command.isEmpty else {
            emptyNames += 1
            return
        }
        guard handlers[command] == nil else {
            if !duplicates.contains(command) { duplicates.append(command) }
            return
        }
        handlers[command] = handler
    }

    /// Registers a handler value for its ``SagaStepHandler/command``.
    public mutating func register<Handler: SagaStepHandler>(_ handler: Handler) {
        register(Handler.command) { context in try await handler.handle(context) }
    }

    /// Adds every handler of `other`, as if each had been registered here: for one participant
    /// that runs the handlers of several services or modules. A command both registries handle
    /// is a duplicate that ``validate(against:)`` reports.
    public mutating func merge(_ other: SagaHandlerRegistry) {
        for (command, handler) in other.handlers.sorted(by: { $0.key < $1.key }) { register(command, handler: handler) }
        for command in other.duplicates where !duplicates.contains(command) { duplicates.append(command) }
        emptyNames += other.emptyNames
    }

    /// The handler for a command, if registered.
    public func handler(for command: String) -> SagaHandler? { handlers[command] }

    /// Every registered command, sorted.
    public var commands: [String] { handlers.keys.sorted() }

    /// Checks that each command was registered once, and that every registered command belongs to
    /// a known saga definition.
    /// - Throws: `duplicateHandler` naming the commands registered twice; `invalidConfiguration`
    ///   for a handler registered for an empty command name, or naming the commands no definition
    ///   sends.
    public func validate(against definitions: SagaDefinitionRegistry) throws {
        if !duplicates.isEmpty {
            let names = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            throw SagaError(
                .duplicateHandler,
                "handlers are registered more than once for command \(names); each command has exactly one handler per service",
                recoverySuggestion: "remove the second register call (or merge the two handlers into one)")
        }
        if emptyNames > 0 {
            throw SagaError(
                .invalidConfiguration, "a handler is registered for an empty command name",
                recoverySuggestion: "register it for the command of its step (SagaBuilder's action or compensation)")
        }
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
