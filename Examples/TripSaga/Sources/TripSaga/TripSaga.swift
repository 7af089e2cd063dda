import Foundation
import Participant
import Synchronization

/// Book a flight, book a hotel, charge the card (the pivot: once charged, the trip goes ahead).
public enum TripSaga {
    /// The definition every service and the starter share.
    public static let definition: SagaDefinition = {
        do {
            return try SagaBuilder("trip")
                .step("book-flight", action: "flight.book", compensation: "flight.cancel")
                .step("book-hotel", action: "hotel.book", compensation: "hotel.cancel")
                .step("charge-card", action: "payment.charge", options: StepOptions(isPivot: true))
                .build()
        } catch {
            preconditionFailure("the trip saga is invalid: \(error)")
        }
    }()
}

/// What the services read from the payload.
public struct Trip: Codable, Sendable {
    /// The trip's id.
    public var tripId: String
    /// How many nights the hotel is booked for.
    public var nights: Int
    /// Creates a trip.
    public init(tripId: String, nights: Int) {
        self.tripId = tripId
        self.nights = nights
    }
}

/// A service's bookings, applied once per idempotency key (a real service keeps them in its own
/// database, with the key as a unique column).
public final class Bookings: Sendable {
    private let applied = Mutex<[String: String]>([:])
    /// Creates an empty set of bookings.
    public init() {}
    /// Records `value` under `key` unless the key was seen; returns the value stored for it.
    public func apply(_ key: String, _ value: String) -> String {
        applied.withLock { applied in
            if let existing = applied[key] { return existing }
            applied[key] = value
            return value
        }
    }
    /// How many distinct effects were applied.
    public var count: Int { applied.withLock { $0.count } }
}

/// The hotel refuses trips longer than two weeks: a business refusal, before the pivot, so the
/// flight is cancelled.
public func hotelHandlers(_ bookings: Bookings) -> SagaHandlerRegistry {
    var handlers = SagaHandlerRegistry()
    handlers.register("hotel.book") { context in
        let trip = try context.payload(as: Trip.self)
        guard trip.nights <= 14 else { return try await context.failAndCompensate(reason: "no rooms for \(trip.nights) nights") }
        let id = bookings.apply(context.idempotencyKey, "H-\(trip.tripId)")
        try await context.completeStep(merging: ["hotelBooking": .string(id)])
    }
    handlers.register("hotel.cancel") { context in
        _ = bookings.apply(context.idempotencyKey, "cancelled")
        try await context.completeCompensation()
    }
    return handlers
}

/// The airline books every flight.
public func flightHandlers(_ bookings: Bookings) -> SagaHandlerRegistry {
    var handlers = SagaHandlerRegistry()
    handlers.register("flight.book") { context in
        let trip = try context.payload(as: Trip.self)
        let id = bookings.apply(context.idempotencyKey, "F-\(trip.tripId)")
        try await context.completeStep(merging: ["flightBooking": .string(id)])
    }
    handlers.register("flight.cancel") { context in
        _ = bookings.apply(context.idempotencyKey, "cancelled")
        try await context.completeCompensation()
    }
    return handlers
}

/// The card is charged once per trip.
public func paymentHandlers(_ charges: Bookings) -> SagaHandlerRegistry {
    var handlers = SagaHandlerRegistry()
    handlers.register("payment.charge") { context in
        _ = charges.apply(context.idempotencyKey, "charged")
        try await context.completeStep(merging: ["charged": true])
    }
    return handlers
}
