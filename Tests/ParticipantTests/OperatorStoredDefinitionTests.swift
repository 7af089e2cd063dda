import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Testing

/// The plain `saga` executable, built with no definitions, operates a saga whose definition only
/// a test process knows: that process registered it in the store, the CLI reads it from there.
@Suite("saga CLI on stored definitions", .timeLimit(.minutes(3)))
struct OperatorStoredDefinitionTests {
    /// `trip`: never compiled into the `saga` executable.
    static func trip() throws -> SagaDefinition {
        try SagaBuilder("trip")
            .version(2)
            .step("hotel", action: "trip-test.hotels.book", compensation: "trip-test.hotels.cancel")
            .step("flight", action: "trip-test.flights.book", compensation: "trip-test.flights.cancel")
            .step("confirm", action: "trip-test.trips.confirm", options: .pivot)
            .build()
    }

    @Test func graphDefinitionsAndShowPrintADefinitionTheCLIWasNotBuiltWith() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let trip = try Self.trip()

        // The test process: a manager that runs `trip` starts one (registering the definition).
        let id = "trip-\(UUID().uuidString.prefix(8).lowercased())"
        try await SQLiteSagaStore(path: path).withRunning { store in
            let manager = SagaManager(
                definitions: try SagaDefinitionRegistry([trip]), bus: InMemoryBus(), store: store, logger: Logger(label: "test"))
            try await manager.start("trip", payload: ["city": "Lisbon"], id: id)
            let state = try await store.load(id)
            #expect(state.definitionVersion == 2)
            #expect(try await store.definitions().map(\.name) == ["trip"])
        }

        let url = "sqlite://\(path)"
        let graph = try await runSaga(["graph", "trip", "--store-url", url])
        #expect(graph.status == 0, "\(graph.output)")
        #expect(graph.output.contains("flowchart"), "\(graph.output)")
        #expect(graph.output.contains("trip-test.flights.book"), "\(graph.output)")
        #expect(graph.output.contains("version 2"), "\(graph.output)")

        let missing = try await runSaga(["graph", "trip", "--version", "1", "--store-url", url])
        #expect(missing.status != 0)
        #expect(missing.output.contains("no saga definition 'trip' version 1"), "\(missing.output)")

        let definitions = try await runSaga(["definitions", "--store-url", url])
        #expect(definitions.status == 0, "\(definitions.output)")
        let line = definitions.output.split(separator: "\n").first { $0.hasPrefix("trip ") }
        #expect(line != nil, "\(definitions.output)")
        if let line {
            let columns = line.split(separator: " ", omittingEmptySubsequences: true)
            #expect(columns[1] == "2")
            #expect(columns[2] == trip.contentHash.prefix(8))
            #expect(columns[3] == "1", "one saga on trip version 2: \(line)")
            #expect(line.contains("store"))
        }

        let show = try await runSaga(["show", id, "--store-url", url])
        #expect(show.status == 0, "\(show.output)")
        #expect(show.output.contains("definition  trip version 2"), "\(show.output)")
        #expect(show.output.contains("at hotel (action #1)"), "\(show.output)")
        #expect(
            show.output.contains("waiting for a service to run 'trip-test.hotels.book' attempt 1 (step 1 'hotel', action)"),
            "\(show.output)")
        #expect(!show.output.contains("unknown"), "\(show.output)")
    }

    /// Runs the `saga` executable built next to the test binary; its exit status and output.
    private func runSaga(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let run = await CommandRun.product("saga", arguments, environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil])
        return (run.status, run.stdout + run.stderr)
    }
}
