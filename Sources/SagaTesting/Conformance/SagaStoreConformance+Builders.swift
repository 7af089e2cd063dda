public import Foundation
public import Participant
public import Testing

/// What the checks are made of, for your own store tests beyond the contract.
extension SagaStoreConformance {
    /// A unique id (`<prefix>-<lowercase UUID>`), so that tests sharing a store never collide.
    public static func uniqueID(_ prefix: String = "saga") -> String {
        "\(prefix)-\(UUID().uuidString.lowercased())"
    }

    /// `date` rounded to whole milliseconds, the precision every store must keep (see
    /// ``timestampsKeepMilliseconds``).
    public static func milliseconds(_ date: Date = Date()) -> Date {
        Date(timeIntervalSince1970: Double(Int64((date.timeIntervalSince1970 * 1000).rounded())) / 1000)
    }

    /// A saga of definition `name` in its first step (step 0, attempt 1, version 0, no history),
    /// created and updated at `updatedAt`, with a trace context.
    public static func makeState(
        id: SagaID = uniqueID(),
        name: String = "order",
        status: SagaStatus = .running,
        updatedAt: Date = milliseconds(),
        payload: JSONObject = ["orderId": "42"]
    ) -> SagaState {
        SagaState(
            id: id, name: name, status: status, currentStep: 0, attempt: 1, payload: payload,
            context: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], history: [],
            createdAt: updatedAt, updatedAt: updatedAt, version: 0
        )
    }

    /// An outbox message of saga `sagaID` with a unique id, to exchange `sagas` (topology `sagas`)
    /// with routing key `order.reserve` and a JSON content type.
    public static func makeMessage(sagaID: SagaID, createdAt: Date = milliseconds(), body: String = "{}") -> OutboxMessage {
        OutboxMessage(
            id: uniqueID("msg"), sagaID: sagaID, exchange: "sagas", routingKey: "order.reserve", body: Array(body.utf8),
            headers: ["content-type": "application/json"], createdAt: createdAt
        )
    }

    /// Expects `body` to throw a ``SagaError`` with that code, and returns it; records an issue
    /// (and returns `nil`) when `body` throws anything else or nothing.
    @discardableResult
    public static func expectSagaError(
        _ code: SagaError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
    ) async -> SagaError? {
        do {
            try await body()
            Issue.record("expected SagaError \(code), nothing was thrown", sourceLocation: sourceLocation)
            return nil
        } catch let error as SagaError {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            return error
        } catch {
            Issue.record("expected SagaError \(code), got \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }
}
