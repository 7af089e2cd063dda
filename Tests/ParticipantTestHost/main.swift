// A participant process for the fault tests: runs one service of the test order saga on the real
// broker and store, and records every handler effect in a shared SQLite "effects" file, once per
// idempotency key. The tests kill it with SIGKILL at random moments and start it again.
//
// Environment: SERVICE (inventory | payment | shipping), AMQP_URL, STORE_URL (sqlite:… or
// postgres://…), EFFECTS_DB (path), PREFIX (topology prefix), REAPER_MS (reaper poll and stall
// threshold in milliseconds), HANDLER_DELAY_MS (work time per handler), OUTBOX_POLL_MS and
// OUTBOX_GRACE_MS (the outbox relay's poll interval and grace period; 300 and 1000).
//
// The crash-point matrix (CrashMatrixTests) arms one process with CRASH_AT=<CrashPoint> and
// CRASH_AFTER=<n>: the n-th time the process reaches that point it appends "<point> <n> <pid>" to
// the file CRASH_MARKER (when set) and kills itself with SIGKILL.
import Foundation
import GRDB
import Participant
import SagaPostgres
import SagaSQLite
import SagaTestSupport
import Synchronization

let environment = ProcessInfo.processInfo.environment
func required(_ name: String) -> String {
    guard let value = environment[name], !value.isEmpty else {
        FileHandle.standardError.write(Data("ParticipantTestHost: set \(name)\n".utf8))
        exit(2)
    }
    return value
}

let service = required("SERVICE")
let prefix = required("PREFIX")
let reaperMilliseconds = Int(environment["REAPER_MS"] ?? "") ?? 1000
let handlerDelay = Duration.milliseconds(Int(environment["HANDLER_DELAY_MS"] ?? "") ?? 5)
let outboxPoll = Duration.milliseconds(Int(environment["OUTBOX_POLL_MS"] ?? "") ?? 300)
let outboxGrace = Duration.milliseconds(Int(environment["OUTBOX_GRACE_MS"] ?? "") ?? 1000)

/// Counts the times the armed crash point is reached; SIGKILLs the process at the n-th.
final class CrashTrigger: Sendable {
    let point: CrashPoint
    let after: Int
    let marker: String?
    private let reached = Atomic<Int>(0)

    init(point: CrashPoint, after: Int, marker: String?) {
        self.point = point
        self.after = after
        self.marker = marker
    }

    func reach(_ point: CrashPoint) {
        guard point == self.point, reached.add(1, ordering: .relaxed).newValue == after else { return }
        if let marker, let file = FileHandle(forWritingAtPath: marker) ?? createFile(marker) {
            file.seekToEndOfFile()
            file.write(Data("\(point.rawValue) \(after) \(getpid())\n".utf8))
        }
        kill(getpid(), SIGKILL)
    }

    private func createFile(_ path: String) -> FileHandle? {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        return FileHandle(forWritingAtPath: path)
    }
}

if let name = environment["CRASH_AT"], !name.isEmpty {
    guard let point = CrashPoint(rawValue: name) else {
        let known = CrashPoint.allCases.map(\.rawValue).joined(separator: ", ")
        FileHandle.standardError.write(Data("ParticipantTestHost: unknown CRASH_AT \(name); use one of \(known)\n".utf8))
        exit(2)
    }
    let trigger = CrashTrigger(point: point, after: max(Int(environment["CRASH_AFTER"] ?? "") ?? 1, 1), marker: environment["CRASH_MARKER"])
    CrashPoints.install { trigger.reach($0) }
}

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = environment["LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .error
    return handler
}
let logger = Logger(label: "host.\(service).\(ProcessInfo.processInfo.processIdentifier)")

/// Opens the shared effects file. Several hosts start at once, and the first open of a file
/// switches it to WAL mode, which fails with SQLITE_BUSY (the busy timeout does not cover it)
/// while another process holds it: retry for up to ten seconds, as SQLiteSagaStore does.
func openEffects(path: String) throws -> DatabasePool {
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    let deadline = Date().addingTimeInterval(10)
    while true {
        do {
            return try DatabasePool(path: path, configuration: configuration)
        } catch let error as DatabaseError
            where (error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED) && Date() < deadline
        {
            usleep(20_000)
        }
    }
}
let effects = try openEffects(path: required("EFFECTS_DB"))
try effects.write { db in
    try db.execute(sql: "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, command TEXT NOT NULL, saga_id TEXT NOT NULL)")
    try db.execute(
        sql: "CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, saga_id TEXT NOT NULL)")
}

/// The service's local transaction: the effect, applied once per idempotency key.
@Sendable func apply(_ context: SagaContext) async throws {
    try await Task.sleep(for: handlerDelay)
    try await effects.write { db in
        try db.execute(sql: "INSERT INTO calls (command, saga_id) VALUES (?, ?)", arguments: [context.command, context.sagaID])
        try db.execute(
            sql: "INSERT OR IGNORE INTO effects (key, command, saga_id) VALUES (?, ?, ?)",
            arguments: [context.idempotencyKey, context.command, context.sagaID])
    }
    CrashPoints.reach(.afterHandlerEffect)
}

var handlers = SagaHandlerRegistry()
// SERVICE=all handles every step of the order saga (with IN_PROCESS_STEPS=1, its steps run in
// process, one after the other, without a broker hop).
let services = service == "all" ? ["inventory", "payment", "shipping"] : [service]
for service in services {
    switch service {
    case "inventory":
        handlers.register("inventory.reserve") { context in
            try await apply(context)
            try await context.completeStep(merging: ["reserved": true])
        }
        handlers.register("inventory.release") { context in
            try await apply(context)
            try await context.completeCompensation()
        }
    case "payment":
        handlers.register("payment.charge") { context in
            if context.payload["declinePayment"] == .bool(true) {
                try await context.failAndCompensate(reason: "card declined")
                return
            }
            try await apply(context)
            try await context.completeStep(merging: ["charged": true])
        }
        handlers.register("payment.refund") { context in
            try await apply(context)
            try await context.completeCompensation()
        }
    case "shipping":
        handlers.register("shipping.ship") { context in
            try await apply(context)
            try await context.completeStep(merging: ["shipped": true])
        }
    default:
        FileHandle.standardError.write(Data("ParticipantTestHost: unknown SERVICE \(service)\n".utf8))
        exit(2)
    }
}

let storeURL = required("STORE_URL")
let store: any SagaStore & Service
if storeURL.hasPrefix("postgres") {
    store = try PostgresSagaStore(url: storeURL, logger: logger)
} else {
    store = try SQLiteSagaStore(url: storeURL, logger: logger)
}
let bus = try await RabbitMQBus.connect(url: required("AMQP_URL"))
var participantConfiguration = ParticipantConfiguration(
    service: service,
    topology: SagaTopology(prefix: prefix, delayLevels: [1]),
    prefetch: 32,
    outboxPollInterval: outboxPoll,
    outboxGracePeriod: outboxGrace,
    reaper: ReaperConfiguration(
        pollInterval: .milliseconds(reaperMilliseconds), stalledThreshold: .milliseconds(reaperMilliseconds * 2), maxReapAttempts: 20)
)
participantConfiguration.inProcessSteps = environment["IN_PROCESS_STEPS"] == "1"
let participant = SagaParticipant(
    configuration: participantConfiguration, definitions: TestSagas.registry, handlers: handlers, bus: bus, store: store, logger: logger
)
// Exit when the test process that started this host is gone (the host is then re-parented), so
// that a crashed or killed test run leaves no participant behind.
let parent = getppid()
Task.detached {
    while true {
        try await Task.sleep(for: .milliseconds(250))
        if getppid() != parent { exit(0) }
    }
}

let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
        // The store first: a group stops its services in reverse order, so the store stops last.
        services: [.init(service: store), .init(service: participant)], gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger)
)
try await group.run()
await bus.shutdown()
