import ArgumentParser
import Foundation
import Participant
import SagaKitApp

/// What every subcommand needs: the configuration, a logger, and JSON output.
struct CommandEnvironment: Sendable {
    let configuration: AppConfiguration
    let logger: Logger

    init(_ options: ConnectionOptions) throws {
        var configuration = try options.configuration()
        // Quiet by default: the command's output is what matters.
        if options.logLevel == nil, ProcessInfo.processInfo.environment["SAGAKIT_LOG_LEVEL"] == nil {
            configuration.logLevel = .error
        }
        ConsoleLogHandler.bootstrap(level: configuration.logLevel)
        self.configuration = configuration
        self.logger = Logger(label: "saga")
    }

    /// Runs `body` with the store open.
    func withStore<T: Sendable>(_ body: @Sendable (any SagaStore) async throws -> T) async throws -> T {
        try await AppStore.withStore(url: configuration.storeURL, logger: logger, body)
    }

    /// Runs `body` with the store open and the broker connected.
    func withStoreAndBus<T: Sendable>(_ body: @Sendable (any SagaStore, RabbitMQBus) async throws -> T) async throws -> T {
        try await withStore { store in try await withBus { bus in try await body(store, bus) } }
    }

    /// Runs `body` with a saga manager on the store and the broker (for commands that move a
    /// saga).
    func withManager<T: Sendable>(_ body: @Sendable (SagaManager) async throws -> T) async throws -> T {
        try await withStoreAndBus { store, bus in
            try await body(
                SagaManager(
                    definitions: OrderSaga.definitions, bus: bus, store: store, topology: configuration.topology, logger: logger))
        }
    }

    /// Runs `body` with the broker connected.
    func withBus<T: Sendable>(_ body: @Sendable (RabbitMQBus) async throws -> T) async throws -> T {
        let bus = try await ParticipantApp.connectBus(configuration, name: "saga CLI", logger: logger, attempts: 1)
        do {
            let result = try await body(bus)
            await bus.shutdown()
            return result
        } catch {
            await bus.shutdown()
            throw error
        }
    }
}

/// Prints a value as pretty JSON (dates in ISO 8601).
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .custom { date, encoder in
        var container = encoder.singleValueContainer()
        try container.encode(isoFormatter.string(from: date))
    }
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows {
        for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

nonisolated(unsafe) let isoFormatter: ISO8601DateFormatter = {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter
}()

/// "3 s ago", "2 min ago", "5 h ago".
func age(_ date: Date, now: Date = Date()) -> String {
    let seconds = max(0, now.timeIntervalSince(date))
    switch seconds {
    case ..<1: return "now"
    case ..<120: return "\(Int(seconds)) s ago"
    case ..<7200: return "\(Int(seconds / 60)) min ago"
    case ..<172_800: return "\(Int(seconds / 3600)) h ago"
    default: return "\(Int(seconds / 86400)) d ago"
    }
}

/// A saga's current position in words: `charge-card (action #2)`.
func position(_ state: SagaState) -> String {
    guard let definition = try? OrderSaga.definitions.definition(named: state.name), definition.steps.indices.contains(state.currentStep)
    else {
        return "step \(state.currentStep) #\(state.attempt)"
    }
    return "\(definition.steps[state.currentStep].name) (\(state.phase.rawValue) #\(state.attempt))"
}

/// Parses `running`, `needs-attention`, `needsAttention`, `needs_attention`…
func parseStatus(_ text: String) throws -> SagaStatus {
    let wanted = text.lowercased().replacingOccurrences(of: "-", with: "").replacingOccurrences(of: "_", with: "")
    guard let status = SagaStatus.allCases.first(where: { $0.rawValue.lowercased() == wanted }) else {
        throw ValidationError("unknown status '\(text)'; use one of \(SagaStatus.allCases.map(\.cliName).joined(separator: ", "))")
    }
    return status
}

extension SagaStatus {
    /// The status as the CLI prints it: `needs-attention`.
    var cliName: String { self == .needsAttention ? "needs-attention" : rawValue }
}

/// An error message for people, and exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
