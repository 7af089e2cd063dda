import ArgumentParser
import Foundation
import OrderSystemSupport
import Participant
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The order service: starts order sagas and follows them until they finish, printing progress.
/// It takes no part in the saga's steps (the inventory, payment and shipping services do), but
/// it runs the fraud desk (``FraudDesk``) that approves or rejects the large orders waiting for a
/// review, unless `--manual-review` leaves that to an operator.
@main
struct OrderService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-service",
        abstract: "Starts order sagas and prints their progress (example saga starter)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "This instance's name.")
    var instance: String?

    @Option(help: "How many orders to place.")
    var count = 10

    @Option(help: "How many sagas may be in flight at once.")
    var concurrency = 50

    @Option(help: "Prefix of this batch's order ids (random by default).")
    var runID: String?

    @Option(help: "How many different SKUs the orders use.")
    var skus = 5

    @Option(help: "Share of orders the customer cancels shortly after placing them (0…1), by `saga compensate` semantics.")
    var cancelRate = 0.0

    @Option(help: "Share of orders with an amount above the fraud review threshold (0…1, deterministic by order id).")
    var largeOrderRate = 0.1

    @Option(help: "Share of large orders the fraud desk rejects (0…1, deterministic by order id); it approves the others.")
    var fraudRejectRate = 0.0

    @Flag(
        help:
            "No fraud desk: large orders wait until an operator runs `saga signal <id> fraud.approved --by <name>` (or time out and are compensated)."
    )
    var manualReview = false

    @Option(help: "Give up waiting for the sagas after this many seconds.")
    var timeout = 600

    @Option(help: "Write the batch's figures as JSON to this file.")
    var report: String?

    @Flag(
        help:
            "After the batch, keep running (serving --metrics-port) until SIGINT or SIGTERM, so that Prometheus scrapes the final figures.")
    var keepRunning = false

    func validate() throws {
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard skus >= 1 else { throw ValidationError("--skus must be at least 1") }
        guard (0...1).contains(cancelRate) else { throw ValidationError("--cancel-rate must be between 0 and 1") }
        guard (0...1).contains(largeOrderRate) else { throw ValidationError("--large-order-rate must be between 0 and 1") }
        guard (0...1).contains(fraudRejectRate) else { throw ValidationError("--fraud-reject-rate must be between 0 and 1") }
    }

    func run() async throws {
        let (configuration, instance, logger) = try ParticipantApp.prepare(
            service: "order", connection: connection, instance: instance)
        let runID = runID ?? String(UUID().uuidString.lowercased().prefix(6))

        let app = try ParticipantApp.application(service: "order", instance: instance, configuration: configuration)
        let metrics = try ParticipantApp.metrics(configuration, logger: logger)
        let opened = try await AppStore.open(url: configuration.storeURL, logger: logger)
        // The manager logs errors only: the progress line says more than 500 "saga started".
        var runtime = app.runtime(store: opened.store)
        runtime.logger.logLevel = Swift.max(configuration.logLevel, .error)
        let manager = SagaManager(runtime: runtime)
        let desk = FraudDesk(
            manager: manager, runID: runID, mode: manualReview ? .manual : .automatic(rejectRate: fraudRejectRate), logger: logger)
        let batch = OrderBatch(
            manager: manager, runID: runID, count: count, concurrency: concurrency, skus: skus,
            cancelRate: cancelRate, largeOrderRate: largeOrderRate, desk: desk, timeout: .seconds(timeout), report: report,
            keepRunning: keepRunning, logger: logger)
        // The store, the bus, the manager (it hears the sagas' lifecycle events, so waiting for a
        // saga costs no polling), the batch and the metrics endpoint (when enabled); the batch
        // ending ends the process gracefully.
        try await app.run(store: opened.store, services: [manager, batch] + metrics)
        if batch.failed.withLock({ $0 }) { throw ExitCode(1) }
    }
}

/// Starts `count` orders with at most `concurrency` in flight, then waits for all of them.
final class OrderBatch: Service, Sendable {
    let manager: SagaManager
    let runID: String
    let count: Int
    let concurrency: Int
    let skus: Int
    let cancelRate: Double
    let largeOrderRate: Double
    let desk: FraudDesk
    let timeout: Duration
    let report: String?
    let keepRunning: Bool
    let logger: Logger
    let failed = Mutex(false)
    /// Orders whose cancellation was accepted (the saga was compensated on request).
    let cancelled = Mutex<[String]>([])

    init(
        manager: SagaManager, runID: String, count: Int, concurrency: Int, skus: Int, cancelRate: Double, largeOrderRate: Double,
        desk: FraudDesk, timeout: Duration, report: String?,
        keepRunning: Bool = false,
        logger: Logger
    ) {
        self.manager = manager
        self.runID = runID
        self.count = count
        self.concurrency = concurrency
        self.skus = skus
        self.cancelRate = cancelRate
        self.largeOrderRate = largeOrderRate
        self.desk = desk
        self.timeout = timeout
        self.report = report
        self.keepRunning = keepRunning
        self.logger = logger
    }

    func id(_ number: Int) -> String { String(format: "%@-%05d", runID, number) }

    /// Order `number`'s data. A large order (``OrderSaga/isLarge(orderID:rate:)``) costs 1,050 to
    /// 3,000, above ``OrderSaga/fraudReviewThreshold``: it waits for a fraud review.
    func order(_ number: Int) -> JSONObject {
        let large = OrderSaga.isLarge(orderID: id(number), rate: largeOrderRate)
        return [
            "orderId": .string(id(number)),
            "sku": .string("sku-\(number % skus)"),
            "quantity": .number(Double(1 + number % 3)),
            "amount": .number(large ? Double(1_050 + 50 * (number % 40)) : Double(10 + number % 90)),
            "customer": .string("customer-\(number % 37)"),
        ]
    }

    /// A customer who changes their mind: after a short, order-dependent wait, asks to compensate
    /// the saga. Accepted before the pivot (stock released, card refunded), refused after it.
    func cancelLater(_ id: String) async {
        let wait = Duration.milliseconds(Int(OrderSaga.fraction("\(id)#cancel-delay") * 150))
        try? await Task.sleep(for: wait)
        // The order is placed beside this task: a customer can cancel only once it exists.
        for placed in 1...100 {
            do {
                try await manager.compensate(id, by: "customer", reason: "cancelled by the customer")
                cancelled.withLock { $0.append(id) }
                logger.info("order cancelled by the customer", metadata: ["saga.id": "\(id)"])
                return
            } catch let error as SagaError where error.code == .unknownSaga && placed < 100 {
                try? await Task.sleep(for: .milliseconds(20))
            } catch let error as SagaError where error.code == .invalidState || error.code == .unknownSaga {
                logger.info("cancellation refused: \(error)", metadata: ["saga.id": "\(id)"])
                return
            } catch {
                // Not a refusal: the request may have been applied although its answer was lost.
                if await manager.historyHoldsCompensationRequest(of: id, by: "customer") {
                    cancelled.withLock { $0.append(id) }
                    logger.info(
                        "order cancelled by the customer (the answer was lost, the saga's history holds it)", metadata: ["saga.id": "\(id)"]
                    )
                } else {
                    logger.warning("could not cancel the order (the customer gives up): \(error)", metadata: ["saga.id": "\(id)"])
                }
                return
            }
        }
    }

    func run() async throws {
        guard count > 0 else {
            logger.info("nothing to do (--count 0)")
            return
        }
        try await manager.declareTopology()
        let store = manager.store
        // Outcomes are awaited on the sagas' lifecycle events once the manager listens.
        for _ in 0..<200 where !manager.isListeningForEvents { try await Task.sleep(for: .milliseconds(25)) }
        if !manager.isListeningForEvents {
            logger.warning("not receiving saga lifecycle events (is sagakit.events = none?); waiting for sagas reads the store")
        }
        let progress = ProgressLine(total: count)
        logger.info("placing \(count) orders", metadata: ["run": "\(runID)", "concurrency": "\(concurrency)"])
        // The fraud desk works the large orders' reviews while the batch runs.
        let fraudDesk = Task { [desk] in await desk.run() }
        defer { fraudDesk.cancel() }
        if desk.mode == .manual {
            progress.finish(
                "order-service: --manual-review: large orders wait for `order-saga signal <id> \(OrderSaga.Signal.fraudApproved) --by <name>`; "
                    + "`order-saga list --status waiting` lists them")
        }

        let clock = ContinuousClock()
        let began = clock.now
        let deadline = began.advanced(by: timeout)
        var started = 0
        var finished: [SagaStatus: Int] = [:]
        var unfinished = 0
        var lastPrint = clock.now
        func show() {
            let line = progress.line(
                started: started, completed: finished[.completed] ?? 0, compensated: finished[.compensated] ?? 0,
                needsAttention: finished[.needsAttention] ?? 0, elapsed: clock.now - began)
            if clock.now - lastPrint >= (progress.isTerminal ? .seconds(1) : .seconds(5)) {
                progress.show(line)
                lastPrint = clock.now
            }
        }
        // At most `concurrency` orders in flight: each starts its saga and awaits its outcome;
        // every outcome lets the next order in. Cancellations run alongside.
        try await withThrowingDiscardingTaskGroup { cancellations in
            try await withThrowingTaskGroup(of: SagaStatus?.self) { orders in
                func place(_ number: Int) {
                    orders.addTask { [self] in
                        // A store that does not answer for a while (an outage, a lock) fails this
                        // order's start or wait, not the whole batch: the order is placed again
                        // with the same id (a start is idempotent by id) until the batch's deadline.
                        while true {
                            do {
                                // Returns the saga's terminal lifecycle event; the store is read
                                // only when no event comes.
                                return try await manager.startAndWait(
                                    OrderSaga.name, payload: order(number), id: id(number), timeout: deadline - clock.now
                                ).status
                            } catch let error as SagaError where error.code == .timeout {
                                return nil
                            } catch let error as SagaError where error.code == .storeUnavailable && clock.now < deadline {
                                logger.warning(
                                    "placing the order failed for want of the store; trying again in 1 s",
                                    metadata: ["saga.id": "\(id(number))", "error": "\(error)"])
                                try await Task.sleep(for: .seconds(1))
                            }
                        }
                    }
                    if OrderSaga.fraction("\(id(number))#cancel") < cancelRate {
                        cancellations.addTask { [self] in await cancelLater(id(number)) }
                    }
                    started += 1
                }
                while started < Swift.min(concurrency, count) { place(started) }
                while let status = try await orders.next() {
                    if let status { finished[status, default: 0] += 1 } else { unfinished += 1 }
                    if started < count && !Task.isShuttingDownGracefully && clock.now < deadline { place(started) }
                    show()
                }
            }
        }
        // Every saga has finished (or the batch gave up): the desk's lists are final once it stops.
        fraudDesk.cancel()
        await fraudDesk.value
        if unfinished > 0 || started < count {
            logger.error("gave up waiting after \(timeout): \(unfinished) saga(s) unfinished, \(count - started) order(s) not placed")
            failed.withLock { $0 = true }
        }
        // Exact figures from the stored states of this batch.
        var states: [SagaState] = []
        for number in 0..<started {
            states.append(try await store.load(id(number)))
        }
        let statistics = RunStatistics(states: states)
        progress.finish(
            progress.line(
                started: started, completed: statistics.completed, compensated: statistics.compensated,
                needsAttention: statistics.needsAttention, elapsed: clock.now - began))
        print(
            """
            order-service: \(statistics.count) orders (run \(runID)) in \(formatSeconds(statistics.seconds)): \
            \(String(format: "%.1f", statistics.throughput)) sagas/s
              completed \(statistics.completed) · compensated \(statistics.compensated) · needs attention \(statistics.needsAttention) · unfinished \(statistics.unfinished)
              latency p50 \(formatSeconds(statistics.p50)) · p99 \(formatSeconds(statistics.p99)) · max \(formatSeconds(statistics.max))
              fraud review: \(desk.seenCount) large order(s) waited · approved by the desk \(desk.approved.count) · rejected by the desk \(desk.rejected.count)\(desk.mode == .manual ? " (--manual-review)" : "")
            """)
        if statistics.unfinished > 0 { failed.withLock { $0 = true } }
        if let report {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let batchReport = BatchReport(
                runID: runID, ids: (0..<started).map(id), cancelled: cancelled.withLock { $0 }.sorted(), approved: desk.approved,
                rejected: desk.rejected, manualReview: desk.mode == .manual, statistics: statistics)
            try encoder.encode(batchReport)
                .write(to: URL(fileURLWithPath: report))
        }
        if keepRunning {
            print("order-service: batch done; running until SIGINT or SIGTERM (--keep-running)")
            fflush(nil)
            try? await gracefulShutdown()
        }
    }
}

/// What `--report` writes.
struct BatchReport: Codable {
    var runID: String
    var ids: [String]
    /// Orders whose cancellation was accepted.
    var cancelled: [String]
    /// Large orders the fraud desk approved (their `fraud.approved` signal was delivered).
    var approved: [String]
    /// Large orders the fraud desk rejected (their compensation was accepted).
    var rejected: [String]
    /// Whether the fraud desk was off (`--manual-review`): operators decided.
    var manualReview: Bool
    var statistics: RunStatistics
}

/// The progress display: one updating line on a terminal, a line every few seconds otherwise.
struct ProgressLine: Sendable {
    let total: Int
    let isTerminal = isatty(STDOUT_FILENO) == 1

    func line(started: Int, completed: Int, compensated: Int, needsAttention: Int, elapsed: Duration) -> String {
        let finished = completed + compensated + needsAttention
        let rate = elapsed.seconds > 0 ? Double(finished) / elapsed.seconds : 0
        return "started \(started)/\(total) · completed \(completed) · compensated \(compensated) · needs attention \(needsAttention)"
            + " · in flight \(Swift.max(started - finished, 0)) · \(String(format: "%.0f", rate)) sagas/s"
    }

    func show(_ line: String) {
        if isTerminal {
            print("\r\u{1B}[2K" + line, terminator: "")
            fflush(nil)
        } else {
            print(line)
        }
    }

    func finish(_ line: String) {
        if isTerminal { print("\r\u{1B}[2K" + line) } else { print(line) }
    }
}
