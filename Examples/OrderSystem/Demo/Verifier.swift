import Foundation
import GRDB
import OrderSystemSupport
import Participant

/// Checks the demo's invariants against the saga store and every service's own database.
struct Verifier {
    let configuration: AppConfiguration
    let declineRate: Double
    /// The fraud desk's rejection rate (ignored with `--manual-review`).
    let fraudRejectRate: Double
    let logger: Logger

    struct Check {
        var passed: Bool
        var title: String
        var detail: String
    }

    struct Outcome {
        var statistics: RunStatistics
        /// What happened to the large orders, for the summary.
        var review: String
        var checks: [Check]
        var passed: Bool { checks.allSatisfy(\.passed) }

        func summary(sagas: Int, kills: [String], store: String, logs: String) -> String {
            let s = statistics
            var lines = [
                "",
                "Summary",
                "  completed        \(s.completed)",
                "  compensated      \(s.compensated)",
                "  needs attention  \(s.needsAttention)",
                "  unfinished       \(s.unfinished)",
                "  throughput       \(String(format: "%.1f", s.throughput)) sagas/s (\(s.count) sagas in \(formatSeconds(s.seconds)))",
                "  latency          p50 \(formatSeconds(s.p50)) · p99 \(formatSeconds(s.p99)) · max \(formatSeconds(s.max))",
            ]
            lines.append("  fraud review     \(review)")
            if !kills.isEmpty { lines.append("  chaos            killed with SIGKILL and restarted: \(kills.joined(separator: ", "))") }
            lines.append("Invariants")
            for check in checks {
                lines.append("  \(check.passed ? "✔" : "✘") \(check.title)")
                if !check.detail.isEmpty { lines.append("      \(check.detail)") }
            }
            lines.append(
                passed ? "All invariants hold." : "INVARIANT VIOLATED: see above, the service logs in \(logs), and `order-saga show <id>`.")
            lines.append("Explore, with SAGAKIT_STORE_URL set to the store (\(ConnectionURL.redact(store))):")
            lines.append("  swift run order-saga list · swift run order-saga show <id> · swift run order-saga graph order")
            return lines.joined(separator: "\n")
        }
    }

    func verify(_ report: BatchReport) async throws -> Outcome {
        let states = try await AppStore.withStore(url: configuration.storeURL, logger: logger) { store in
            var states: [SagaState] = []
            for id in report.ids { states.append(try await store.load(id)) }
            return states
        }
        let statistics = RunStatistics(states: states)
        var checks: [Check] = []

        // 1. Every saga finished.
        let unfinished = states.filter { !$0.status.isTerminal }
        let attention = states.filter { $0.status == .needsAttention }
        checks.append(
            Check(
                passed: unfinished.isEmpty && attention.isEmpty,
                title: "every saga is terminal (completed or compensated)",
                detail: unfinished.isEmpty && attention.isEmpty
                    ? "" : "unfinished: \(sample(unfinished.map(\.id))); needs attention: \(sample(attention.map(\.id)))"))

        // 2. Outcomes follow the payment rule, the accepted cancellations and the fraud reviews:
        // rejected by the desk, timed out (nobody approved), or compensated by an operator
        // (--manual-review: `saga compensate` of a waiting order).
        let review = FraudReviews(states: states, report: report)
        let expectedDeclines = Set(report.ids.filter { OrderSaga.isDeclined(orderID: $0, rate: declineRate) })
        let cancelled = review.cancelled
        let expected = expectedDeclines.union(cancelled).union(review.rejected).union(review.timedOut).union(review.byOperator)
        let compensated = Set(states.filter { $0.status == .compensated }.map(\.id))
        let completed = Set(states.filter { $0.status == .completed }.map(\.id))
        let operatorPart = review.byOperator.isEmpty ? "" : ", \(review.byOperator.count) by an operator"
        checks.append(
            Check(
                passed: compensated == expected,
                title:
                    "exactly the declined, cancelled and rejected orders were compensated (\(expectedDeclines.count) declined, \(cancelled.count) cancelled, \(review.rejected.count) rejected by the fraud desk, \(review.timedOut.count) fraud review timed out\(operatorPart); \(expected.count) in all)",
                detail: compensated == expected
                    ? ""
                    : "compensated unexpectedly: \(sample(compensated.subtracting(expected))); expected compensated: \(sample(expected.subtracting(compensated)))"
            ))

        // 2b. The fraud review: large orders waited, and none shipped unapproved; small ones never
        // waited; the desk followed its rule and left no order to time out.
        let reviewProblems = review.problems(completed: completed, fraudRejectRate: fraudRejectRate)
        checks.append(
            Check(
                passed: reviewProblems.isEmpty,
                title:
                    "large orders waited for the fraud review and shipped only when approved (\(review.large.count) large: \(review.approved.count) approved, \(review.rejected.count) rejected, \(review.timedOut.count) timed out; \(review.skipped.count) small orders skipped it)",
                detail: reviewProblems.joined(separator: "; ")))

        // 3. Inventory: stock conserved.
        let inventory = try LocalDatabase.open(path: configuration.dataPath("inventory.db"))
        let reservations = try await inventory.read { db in
            try Row.fetchAll(db, sql: "SELECT saga_id, sku, quantity, status FROM reservations").map {
                (id: $0["saga_id"] as String, sku: $0["sku"] as String, quantity: $0["quantity"] as Int, status: $0["status"] as String)
            }
        }
        let stock = try await inventory.read { db in
            try Row.fetchAll(db, sql: "SELECT sku, initial, on_hand FROM stock").map {
                (sku: $0["sku"] as String, initial: $0["initial"] as Int, onHand: $0["on_hand"] as Int)
            }
        }
        let shipping = try LocalDatabase.open(path: configuration.dataPath("shipping.db"))
        let shipments = try await shipping.read { db in
            try Row.fetchAll(db, sql: "SELECT saga_id, sku, quantity, attempt FROM shipments").map {
                (id: $0["saga_id"] as String, sku: $0["sku"] as String, quantity: $0["quantity"] as Int, attempt: $0["attempt"] as Int)
            }
        }
        let held = reservations.filter { $0.status == "reserved" }
        let heldBySKU = Dictionary(grouping: held, by: { $0.sku }).mapValues { $0.reduce(0) { $0 + $1.quantity } }
        let shippedBySKU = Dictionary(grouping: shipments, by: { $0.sku }).mapValues { $0.reduce(0) { $0 + $1.quantity } }
        let unbalancedSKUs = stock.filter { $0.initial - $0.onHand != (heldBySKU[$0.sku] ?? 0) }.map(\.sku)
        let heldIDs = Set(held.map(\.id))
        let shippedIDs = Set(shipments.map(\.id))
        let reservedTotal = reservations.filter { $0.status != "cancelled" }.reduce(0) { $0 + $1.quantity }
        let releasedTotal = reservations.filter { $0.status == "released" }.reduce(0) { $0 + $1.quantity }
        let stockOK = unbalancedSKUs.isEmpty && heldBySKU == shippedBySKU && heldIDs == shippedIDs && heldIDs == completed
        checks.append(
            Check(
                passed: stockOK,
                title:
                    "stock conserved: reserved − released = shipped (\(reservedTotal) − \(releasedTotal) = \(shipments.reduce(0) { $0 + $1.quantity }) units, \(stock.count) SKUs)",
                detail: stockOK
                    ? ""
                    : "SKUs whose on-hand does not match: \(sample(unbalancedSKUs)); held but not shipped: \(sample(heldIDs.subtracting(shippedIDs))); shipped but not held: \(sample(shippedIDs.subtracting(heldIDs))); held for unfinished/compensated sagas: \(sample(heldIDs.subtracting(completed)))"
            ))

        // 4. Payment: charged completed orders, nothing left charged for compensated ones.
        let payment = try LocalDatabase.open(path: configuration.dataPath("payment.db"))
        let charges = try await payment.read { db in
            try Row.fetchAll(db, sql: "SELECT saga_id, status FROM charges").map {
                (id: $0["saga_id"] as String, status: $0["status"] as String)
            }
        }
        let chargeStatus = Dictionary(charges.map { ($0.id, $0.status) }) { first, _ in first }
        let unrefunded = compensated.filter { chargeStatus[$0] == "charged" }
        let refunded = compensated.filter { chargeStatus[$0] == "refunded" }
        checks.append(
            Check(
                passed: unrefunded.isEmpty,
                title:
                    "every compensated saga that was charged was refunded (\(refunded.count) refund(s), \(compensated.count - refunded.count) never charged)",
                detail: unrefunded.isEmpty ? "" : "charged and not refunded: \(sample(unrefunded))"))
        let unpaid = completed.filter { chargeStatus[$0] != "charged" }
        checks.append(
            Check(
                passed: unpaid.isEmpty, title: "every completed saga was charged once",
                detail: unpaid.isEmpty ? "" : "completed without a charge: \(sample(unpaid))"))

        // 5. Shipping: nothing shipped for a compensated saga. (Nothing is checked for "shipped
        // twice": the shipments table's primary key on saga_id makes a second row impossible.)
        let wronglyShipped = shippedIDs.intersection(compensated)
        checks.append(
            Check(
                passed: wronglyShipped.isEmpty,
                title: "nothing shipped for a compensated saga (\(shipments.count) shipments)",
                detail: wronglyShipped.isEmpty ? "" : "shipped but compensated: \(sample(wronglyShipped))"))

        // 6. Shipping failures (after the pivot) were retried forward: every saga whose ship step
        // failed went on to complete, and shipped on an attempt after its last failed one (a
        // shipment made by a failed attempt would mean a failure leaked its effect).
        let shipmentAttempt = Dictionary(shipments.map { ($0.id, $0.attempt) }) { first, _ in first }
        var retriedSagas = 0
        var shippingRetries = 0
        var notRetriedForward: [String] = []
        for state in states {
            let failedAttempts = state.history.filter { $0.stepName == "ship" && $0.phase == .action && $0.outcome == .retrying }.map(
                \.attempt)
            guard let lastFailed = failedAttempts.max() else { continue }
            retriedSagas += 1
            shippingRetries += failedAttempts.count
            let shippedOn = shipmentAttempt[state.id]
            if state.status != .completed || shippedOn == nil || shippedOn! <= lastFailed { notRetriedForward.append(state.id) }
        }
        checks.append(
            Check(
                passed: notRetriedForward.isEmpty,
                title:
                    "shipping failures retried forward: \(shippingRetries) retry(ies) in \(retriedSagas) saga(s), each shipped on a later attempt and completed",
                detail: notRetriedForward.isEmpty
                    ? "" : "ship failed and the saga did not complete, or shipped on a failed attempt: \(sample(notRetriedForward))"))
        try inventory.close()
        try shipping.close()
        try payment.close()
        return Outcome(statistics: statistics, review: review.summary, checks: checks)
    }

    private func sample<S: Sequence>(_ ids: S) -> String where S.Element == String {
        let sorted = ids.sorted()
        if sorted.isEmpty { return "none" }
        return sorted.prefix(5).joined(separator: ", ") + (sorted.count > 5 ? " … (\(sorted.count))" : "")
    }
}

/// What the fraud review did to each order, and who asked for which compensation, read from the
/// sagas' history (the `fraud-review` step's record: skipped for a small order, completed by the
/// approving signal, failed when the wait timed out; the actor of a compensation request) and
/// checked against the fraud desk's and the customer's reports. The history is the authority: a
/// request the store applied but whose answer was lost is in it and not in the reports.
struct FraudReviews {
    /// Orders whose amount is above ``OrderSaga/fraudReviewThreshold``.
    var large: Set<String> = []
    /// Orders whose review step was skipped (small orders that reached it).
    var skipped: Set<String> = []
    /// Orders whose wait completed with the approving signal, and who sent it.
    var approvedBy: [String: String] = [:]
    /// Orders whose wait timed out.
    var timedOut: Set<String> = []
    /// Orders whose compensation the fraud desk requested (from the sagas' history: a request
    /// whose answer was lost still counts).
    var rejected: Set<String> = []
    /// Orders the fraud desk reported as rejected.
    var deskRejected: Set<String>
    /// Orders the fraud desk approved (from its report).
    var deskApproved: Set<String>
    /// Orders whose compensation the customer requested (from the sagas' history).
    var cancelled: Set<String> = []
    /// Orders the starter reported as cancelled by the customer.
    var reportedCancelled: Set<String>
    /// Orders compensated on request by someone other than the customer and the fraud desk.
    var byOperator: Set<String> = []
    /// Whether operators decided (`--manual-review`).
    var manual: Bool
    var approved: Set<String> { Set(approvedBy.keys) }

    init(states: [SagaState], report: BatchReport) {
        deskRejected = Set(report.rejected)
        reportedCancelled = Set(report.cancelled)
        deskApproved = Set(report.approved)
        manual = report.manualReview
        for state in states {
            if case .number(let amount) = state.payload["amount"], amount.doubleValue > OrderSaga.fraudReviewThreshold {
                large.insert(state.id)
            }
            if let request = state.history.first(where: { $0.outcome == .compensationRequested }) {
                switch request.actor {
                case OrderSaga.fraudDesk: rejected.insert(state.id)
                case "customer": cancelled.insert(state.id)
                default: byOperator.insert(state.id)
                }
            }
            guard let record = state.history.last(where: { $0.stepName == OrderSaga.fraudReviewStep && $0.phase == .action }) else {
                continue
            }
            switch record.outcome {
            case .skipped: skipped.insert(state.id)
            case .completed: approvedBy[state.id] = record.actor ?? "?"
            case .failed: timedOut.insert(state.id)
            default: break
            }
        }
    }

    /// One line for the summary.
    var summary: String {
        let byDesk = approvedBy.values.count { $0 == OrderSaga.fraudDesk }
        let byOthers = approvedBy.count - byDesk
        let decided = approved.union(rejected).union(timedOut).union(byOperator)
        return "\(large.count) large order(s): \(approvedBy.count) approved (\(byDesk) by the fraud desk"
            + (byOthers > 0 ? ", \(byOthers) by hand" : "") + "), \(rejected.count) rejected by the desk"
            + (byOperator.isEmpty ? "" : ", \(byOperator.count) compensated by an operator")
            + ", \(timedOut.count) timed out, \(large.subtracting(decided).count) declined or cancelled"
            + (manual ? " (--manual-review)" : "")
    }

    /// What is wrong with the reviews (nothing when empty).
    func problems(completed: Set<String>, fraudRejectRate: Double) -> [String] {
        var problems: [String] = []
        func add(_ what: String, _ ids: Set<String>) {
            if !ids.isEmpty { problems.append("\(what): \(Self.sample(ids))") }
        }
        add("large orders shipped without an approval", completed.intersection(large).subtracting(approved))
        add("small orders that did not skip the review", completed.subtracting(large).subtracting(skipped))
        add("small orders that waited", Set(approvedBy.keys).union(timedOut).subtracting(large))
        add("approved by the desk but not completed", deskApproved.subtracting(completed))
        add("reported rejected by the desk without its request in the history", deskRejected.subtracting(rejected))
        add("reported cancelled by the customer without their request in the history", reportedCancelled.subtracting(cancelled))
        add("approved by the desk without a signal in the history", deskApproved.filter { approvedBy[$0] != OrderSaga.fraudDesk })
        if !manual {
            add(
                "approved by the desk although its rule rejects them",
                deskApproved.filter { OrderSaga.fraudDeskRejects(orderID: $0, rate: fraudRejectRate) })
            add(
                "rejected by the desk although its rule approves them",
                rejected.filter { !OrderSaga.fraudDeskRejects(orderID: $0, rate: fraudRejectRate) })
            add("timed out although the desk was working", timedOut)
            add("compensated by someone else than the customer or the desk", byOperator)
        }
        return problems
    }

    private static func sample(_ ids: Set<String>) -> String {
        let sorted = ids.sorted()
        return sorted.prefix(5).joined(separator: ", ") + (sorted.count > 5 ? " … (\(sorted.count))" : "")
    }
}
