import Foundation
import SagaCore
import SagaTesting
import Testing

@testable import SagaSQLite

@Suite("SQLite store", .timeLimit(.minutes(2)))
struct SQLiteStoreTests {
    @Test func urlsNameFiles() throws {
        #expect(try SQLiteSagaStore.Configuration.path(fromURL: "sqlite:///var/lib/sagas.db") == "/var/lib/sagas.db")
        #expect(try SQLiteSagaStore.Configuration.path(fromURL: "sqlite://localhost/var/lib/sagas.db") == "/var/lib/sagas.db")
        #expect(try SQLiteSagaStore.Configuration.path(fromURL: "sqlite:/var/lib/sagas.db") == "/var/lib/sagas.db")
        #expect(try SQLiteSagaStore.Configuration.path(fromURL: "sqlite:data/sagas.db") == "data/sagas.db")
        #expect(try SQLiteSagaStore.Configuration.path(fromURL: "SQLITE:sagas%20db.db?mode=rwc") == "sagas db.db")
        for bad in ["postgres://localhost/db", "sqlite://server/x.db", "sqlite:", "sqlite:///", "sagas.db"] {
            #expect(throws: SagaError.self, "\(bad)") { try SQLiteSagaStore.Configuration.path(fromURL: bad) }
        }
    }

    @Test func openingCreatesTheDirectoryTheFileAndTheSchema() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("nested/deeper/sagas.db").path
        let store = try SQLiteSagaStore(url: "sqlite://\(path)")
        #expect(store.path == path)
        #expect(!FileManager.default.fileExists(atPath: path), "creating a store does no I/O")
        let state = Conformance.makeState()
        try await store.withRunning { store in
            #expect(FileManager.default.fileExists(atPath: path))
            _ = try await store.create(state, outbox: [])
        }

        try await SQLiteSagaStore(path: path).withRunning { reopened throws in
            #expect(try await reopened.load(state.id).id == state.id)
            #expect(try await reopened.integrityCheck() == "ok")
        }
    }

    @Test func aFileFromANewerSchemaIsRefused() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await store.executeForTesting("UPDATE sagakit_schema SET version = \(SQLiteSagaStore.schemaVersion + 1)")
        }

        let error = await Conformance.expectSagaError(.schemaTooNew) { try await SQLiteSagaStore(path: path).withRunning { _ in } }
        #expect(error?.message.contains(path) == true)
        #expect(error?.message.contains("\(SQLiteSagaStore.schemaVersion + 1)") == true)
    }

    @Test func anUnusablePathIsStoreUnavailableNamingIt() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let blocker = directory.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: blocker)
        let underAFile = blocker.appendingPathComponent("sub/sagas.db").path
        let error = await Conformance.expectSagaError(.storeUnavailable) {
            try await SQLiteSagaStore(path: underAFile).withRunning { _ in }
        }
        #expect(error?.message.contains(underAFile) == true)

        let notADatabase = directory.appendingPathComponent("garbage.db")
        try Data(repeating: 0x42, count: 4096).write(to: notADatabase)
        let second = await Conformance.expectSagaError(.storeUnavailable) {
            try await SQLiteSagaStore(path: notADatabase.path).withRunning { _ in }
        }
        #expect(second?.message.contains(notADatabase.path) == true)
    }

    @Test func manyStoresOpeningANewFileAtOnceAllSucceed() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let opened = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<6 {
                group.addTask {
                    try await SQLiteSagaStore(path: path).withRunning { store in
                        try await store.countByStatus(name: nil).values.reduce(0, +)
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(opened == Array(repeating: 0, count: 6))
    }

    /// Two OS processes (this test binary, re-run as ``SQLiteStressWorker``) and this process
    /// drive the same sagas through one file at once.
    @Test(.timeLimit(.minutes(3)))
    func twoProcessesShareOneFileWithoutLoss() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { store in
            let ids = (0..<8).map { _ in Conformance.uniqueID() }
            for id in ids { _ = try await store.create(Conformance.makeState(id: id, payload: ["n": 0]), outbox: []) }
            let sharedPrefix = Conformance.uniqueID("shared")
            let increments = 60

            async let first = runWorker(
                path: path, worker: "w1", ids: ids, increments: increments, sharedPrefix: sharedPrefix, directory: directory
            )
            async let second = runWorker(
                path: path, worker: "w2", ids: ids, increments: increments, sharedPrefix: sharedPrefix, directory: directory
            )
            // This process writes too, meanwhile.
            for step in 0..<increments { try await increment(store: store, id: ids[step % ids.count]) }
            let reports = try await [first, second]

            var total = 0
            for id in ids {
                let state = try await store.load(id)
                let n = state.payload["n"]?.intValue ?? -1
                #expect(state.version == Int64(n + 1), "\(id)")
                total += n
            }
            #expect(total == 3 * increments)
            let outbox = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10_000)
            #expect(outbox.count == 3 * increments + reports.map(\.created).reduce(0, +))
            #expect(reports.map(\.created).reduce(0, +) == SQLiteStressWorker.sharedSagas, "each shared saga created once")
            for index in 0..<SQLiteStressWorker.sharedSagas {
                _ = try await store.load("\(sharedPrefix)-\(index)")
            }
            #expect(try await store.integrityCheck() == "ok")
        }
    }
}

/// What a worker process reports.
struct WorkerReport: Codable {
    var created: Int
    var conflicts: Int
}

/// Runs this test binary again as a ``SQLiteStressWorker`` and returns its report.
func runWorker(
    path: String, worker: String, ids: [String], increments: Int, sharedPrefix: String, directory: URL
) async throws -> WorkerReport {
    let report = directory.appendingPathComponent("\(worker).json")
    let output = directory.appendingPathComponent("\(worker).log")
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    process.arguments = ["--testing-library", "swift-testing", "--filter", "SQLiteStressWorker"]
    var environment = ProcessInfo.processInfo.environment
    environment["SAGAKIT_STRESS_PATH"] = path
    environment["SAGAKIT_STRESS_IDS"] = ids.joined(separator: ",")
    environment["SAGAKIT_STRESS_INCREMENTS"] = "\(increments)"
    environment["SAGAKIT_STRESS_SHARED"] = sharedPrefix
    environment["SAGAKIT_STRESS_REPORT"] = report.path
    process.environment = environment
    let handle = try FileHandle(forWritingTo: output)
    process.standardOutput = handle
    process.standardError = handle
    let status: Int32 = try await withCheckedThrowingContinuation { continuation in
        process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
        do { try process.run() } catch { continuation.resume(throwing: error) }
    }
    try? handle.close()
    let log = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
    guard status == 0, let data = try? Data(contentsOf: report) else {
        Issue.record("worker \(worker) exited with \(status):\n\(log.suffix(4000))")
        throw CancellationError()
    }
    return try JSONDecoder().decode(WorkerReport.self, from: data)
}

/// The other process of ``SQLiteStoreTests/twoProcessesShareOneFileWithoutLoss()``: does nothing
/// unless started by it (with `SAGAKIT_STRESS_*` in the environment).
@Suite("SQLiteStressWorker")
struct SQLiteStressWorker {
    static let sharedSagas = 10

    @Test func worker() async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let path = environment["SAGAKIT_STRESS_PATH"], let reportPath = environment["SAGAKIT_STRESS_REPORT"],
            let ids = environment["SAGAKIT_STRESS_IDS"]?.split(separator: ",").map(String.init),
            let increments = environment["SAGAKIT_STRESS_INCREMENTS"].flatMap({ Int($0) }),
            let shared = environment["SAGAKIT_STRESS_SHARED"]
        else { return }
        try await SQLiteSagaStore(path: path).withRunning { store in
            // Both workers race to create the same sagas: exactly one creation each.
            var created = 0
            for index in 0..<Self.sharedSagas {
                let state = Conformance.makeState(id: "\(shared)-\(index)")
                if case .created = try await store.create(state, outbox: [Conformance.makeMessage(sagaID: state.id)]) { created += 1 }
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<3 {
                    group.addTask {
                        var step = task
                        while step < increments {
                            try await increment(store: store, id: ids[step % ids.count])
                            step += 3
                        }
                    }
                }
                try await group.waitForAll()
            }
            let report = try JSONEncoder().encode(WorkerReport(created: created, conflicts: 0))
            try report.write(to: URL(fileURLWithPath: reportPath))
        }
    }
}
