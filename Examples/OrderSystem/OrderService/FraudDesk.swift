import Foundation
import OrderSystemSupport
import Participant
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The fraud desk of the example: large orders wait at the order saga's `fraud-review` step for
/// the signal `fraud.approved` (see ``OrderSaga``), and someone has to look at them.
///
/// Automatic (the default), the desk works the queue the way a person at a review screen would:
/// every `interval` it lists the batch's orders that wait (`saga list --status waiting` does the
/// same query), approves each with `SagaManager.signal(_:name:payload:by:)`, or rejects it with
/// `SagaManager.compensate(_:by:reason:)` when ``OrderSaga/fraudDeskRejects(orderID:rate:)`` says
/// so (deterministic, so that the demo knows which orders must end compensated). Manual
/// (`--manual-review`), it decides nothing: it prints each waiting order and how an operator
/// approves it with `saga signal`; an order nobody approves is compensated when its wait times out.
final class FraudDesk: Sendable {
    /// Who decides.
    enum Mode: Sendable, Equatable {
        /// The desk approves every large order, except the share `rejectRate` that it rejects.
        case automatic(rejectRate: Double)
        /// An operator approves with `saga signal <id> fraud.approved --by <name>`.
        case manual
    }

    /// The name the desk signs its decisions with (in the sagas' history).
    static let reviewer = OrderSaga.fraudDesk

    let manager: SagaManager
    let runID: String
    let mode: Mode
    let logger: Logger
    private let decisions = Mutex(Decisions())

    /// What the desk did, and the orders it has seen waiting.
    private struct Decisions {
        var approved: [String] = []
        var rejected: [String] = []
        var seen: Set<String> = []
    }

    init(manager: SagaManager, runID: String, mode: Mode, logger: Logger) {
        self.manager = manager
        self.runID = runID
        self.mode = mode
        self.logger = logger
    }

    /// Orders the desk approved (their signal was delivered).
    var approved: [String] { decisions.withLock { $0.approved.sorted() } }
    /// Orders the desk rejected (their compensation was accepted).
    var rejected: [String] { decisions.withLock { $0.rejected.sorted() } }
    /// Orders of the batch seen waiting for a review.
    var seenCount: Int { decisions.withLock { $0.seen.count } }

    /// Works the queue until the task is cancelled: every `interval`, the batch's waiting orders.
    func run(interval: Duration = .milliseconds(200)) async {
        while !Task.isCancelled {
            do {
                let waiting = try await manager.store.list(
                    SagaQuery(statuses: [.waiting], name: OrderSaga.name, limit: 1000))
                for state in waiting where state.id.hasPrefix(runID + "-") {
                    guard decisions.withLock({ $0.seen.insert(state.id).inserted }) else { continue }
                    if await !review(state) {
                        // Not decided (the store was busy…): look again on the next round.
                        _ = decisions.withLock { $0.seen.remove(state.id) }
                    }
                }
            } catch {
                logger.warning("could not list the orders waiting for a fraud review: \(error)")
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// Decides one waiting order (or, manual, announces it). Returns `false` when it should be
    /// looked at again.
    private func review(_ state: SagaState) async -> Bool {
        let id = state.id
        let amount = if case .number(let number) = state.payload["amount"] { number.description } else { "?" }
        switch mode {
        case .manual:
            announce(
                "order \(id) (amount \(amount)) waits for a fraud review: approve it with "
                    + "`order-saga signal \(id) \(OrderSaga.Signal.fraudApproved) --by <your name>` "
                    + "(compensated if nobody does within \(OrderSaga.fraudReviewTimeoutText))")
            return true
        case .automatic(let rejectRate) where OrderSaga.fraudDeskRejects(orderID: id, rate: rejectRate):
            do {
                try await manager.compensate(id, by: Self.reviewer, reason: "rejected by the fraud review (amount \(amount))")
                decisions.withLock { $0.rejected.append(id) }
                logger.info("fraud review: rejected", metadata: ["saga.id": "\(id)"])
                return true
            } catch let error as SagaError where error.code == .invalidState {
                // Cancelled by the customer meanwhile: nothing to reject.
                logger.info("fraud review: rejection refused: \(error)", metadata: ["saga.id": "\(id)"])
                return true
            } catch {
                // The store may have applied the request although its answer did not arrive (a
                // commit that timed out): the saga's history says whether it did.
                if await manager.historyHoldsCompensationRequest(of: id, by: Self.reviewer) {
                    decisions.withLock { $0.rejected.append(id) }
                    logger.info(
                        "fraud review: rejected (the store did not answer in time, but the saga's history holds the rejection): \(error)",
                        metadata: ["saga.id": "\(id)"])
                    return true
                }
                logger.warning("fraud review: could not reject, will try again: \(error)", metadata: ["saga.id": "\(id)"])
                return false
            }
        case .automatic:
            do {
                let payload: JSONObject = ["fraudReview": ["decision": "approved", "reviewer": .string(Self.reviewer)]]
                switch try await manager.signal(id, name: OrderSaga.Signal.fraudApproved, payload: payload, by: Self.reviewer) {
                case .delivered:
                    decisions.withLock { $0.approved.append(id) }
                    logger.info("fraud review: approved", metadata: ["saga.id": "\(id)"])
                case .ignored(let reason, _):
                    logger.info("fraud review: approval ignored: \(reason)", metadata: ["saga.id": "\(id)"])
                }
                return true
            } catch {
                if await manager.historyHoldsApproval(of: id, by: Self.reviewer) {
                    decisions.withLock { $0.approved.append(id) }
                    logger.info(
                        "fraud review: approved (the store did not answer in time, but the saga's history holds the approval): \(error)",
                        metadata: ["saga.id": "\(id)"])
                    return true
                }
                logger.warning("fraud review: could not approve, will try again: \(error)", metadata: ["saga.id": "\(id)"])
                return false
            }
        }
    }

    /// Prints a line above the order service's progress line.
    private func announce(_ text: String) {
        print(isatty(STDOUT_FILENO) == 1 ? "\r\u{1B}[2K" + text : text)
        fflush(nil)
    }
}
