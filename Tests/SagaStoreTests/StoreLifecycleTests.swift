import Foundation
import Logging
import SagaCore
import SagaSQLite
import SagaTesting
import ServiceLifecycle
import Testing

@testable import SagaPostgres

/// The SQL stores as services: no I/O before `run()`, operations wait for it (bounded), and
/// graceful shutdown, cancellation and `shutdown()` close them.
@Suite("Store lifecycle", .timeLimit(.minutes(1)))
struct StoreLifecycleTests {
    enum Kind: String, CaseIterable, CustomTestStringConvertible {
        case sqlite, postgres
        var testDescription: String { rawValue }
    }

    /// A store of that kind that has not run, with the startup timeout; `nil` when PostgreSQL is
    /// not available outside CI.
    private func makeService(
        _ kind: Kind, startupTimeout: Duration = .seconds(30), in directory: URL
    ) async throws -> (any SagaStore & Service, cleanup: @Sendable () async throws -> Void)? {
        switch kind {
        case .sqlite:
            var configuration = SQLiteSagaStore.Configuration(path: directory.appendingPathComponent("sagas.db").path)
            configuration.startupTimeout = startupTimeout
            return (SQLiteSagaStore(configuration: configuration), {})
        case .postgres:
            guard var configuration = try await testPostgresConfiguration() else { return nil }
            configuration.startupTimeout = startupTimeout
            let finalConfiguration = configuration
            return (
                try PostgresSagaStore(configuration: configuration),
                {
                    try await PostgresSagaStore(configuration: finalConfiguration).withRunning { store in
                        try await store.executeForTesting("DROP SCHEMA IF EXISTS \(store.namespace) CASCADE")
                    }
                }
            )
        }
    }

    @Test(arguments: Kind.allCases)
    func anOperationBeforeRunWaitsForTheStore(kind: Kind) async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        guard let (store, cleanup) = try await makeService(kind, in: directory) else { return }
        let state = Conformance.makeState()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // Called first: waits until run() has opened the store.
                _ = try await store.create(state, outbox: [])
            }
            try await Task.sleep(for: .milliseconds(200))
            group.addTask { try await store.run() }
            try await group.next()
            #expect(try await store.load(state.id).id == state.id)
            await shutdown(store)
            try await group.waitForAll()
        }
        try await cleanup()
    }

    @Test(arguments: Kind.allCases)
    func anOperationOnAStoreThatDoesNotRunFailsAfterTheStartupTimeout(kind: Kind) async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        guard let (store, _) = try await makeService(kind, startupTimeout: .milliseconds(300), in: directory) else { return }
        let started = ContinuousClock.now
        let error = await Conformance.expectSagaError(.storeUnavailable) { _ = try await store.load("any") }
        #expect(ContinuousClock.now - started >= .milliseconds(300))
        #expect(error?.message.contains("is not running: add it to your ServiceGroup or use withRunning/open") == true)
        if kind == .sqlite {
            #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("sagas.db").path))
        }
    }

    @Test(arguments: Kind.allCases)
    func aGracefulShutdownClosesTheStoreAndLaterOperationsFail(kind: Kind) async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        guard let (store, cleanup) = try await makeService(kind, in: directory) else { return }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: store)], logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let state = Conformance.makeState()
            _ = try await store.create(state, outbox: [])
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let error = await Conformance.expectSagaError(.storeUnavailable) { _ = try await store.load("any") }
        #expect(error?.message.contains("has shut down") == true)
        // A store runs once.
        await Conformance.expectSagaError(.invalidState) { try await store.run() }
        try await cleanup()
    }

    @Test(arguments: Kind.allCases)
    func cancellingRunClosesTheStore(kind: Kind) async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        guard let (store, cleanup) = try await makeService(kind, in: directory) else { return }
        let running = Task { try await store.run() }
        _ = try await store.countByStatus(name: nil)
        running.cancel()
        try await running.value
        await Conformance.expectSagaError(.storeUnavailable) { _ = try await store.countByStatus(name: nil) }
        await shutdown(store)  // after the end: returns at once
        try await cleanup()
    }

    @Test func shutdownBeforeRunMakesRunReturnAtOnce() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = SQLiteSagaStore(path: directory.appendingPathComponent("sagas.db").path)
        await store.shutdown()
        try await store.run()
        #expect(!FileManager.default.fileExists(atPath: store.path))
        await Conformance.expectSagaError(.storeUnavailable) { _ = try await store.load("any") }
    }

    private func shutdown(_ store: any SagaStore) async {
        if let store = store as? SQLiteSagaStore { await store.shutdown() }
        if let store = store as? PostgresSagaStore { await store.shutdown() }
    }
}
