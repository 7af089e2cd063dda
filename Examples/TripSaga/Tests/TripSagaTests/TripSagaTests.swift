import Participant
import SagaTesting
import Testing
import TripSaga

@Suite struct TripHandlerTests {
    @Test func theHotelRefusesLongTripsAndTheFlightIsCancelled() async throws {
        let tester = try SagaStepTester(definitions: [TripSaga.definition])
        let bookings = Bookings()
        let run = try await tester.run(
            "hotel.book", payload: ["tripId": "t-1", "nights": 21], handler: hotelHandlers(bookings).handler(for: "hotel.book")!)
        #expect(run.report == .failed("no rooms for 21 nights", retryable: false))
        #expect(run.next.map(\.command) == ["flight.cancel"])
        #expect(bookings.count == 0)
    }

    @Test func aRedeliveredBookingBooksOnce() async throws {
        let tester = try SagaStepTester(definitions: [TripSaga.definition])
        let bookings = Bookings()
        let (first, second) = try await tester.runTwice(
            "flight.book", payload: ["tripId": "t-2", "nights": 2], handler: flightHandlers(bookings).handler(for: "flight.book")!)
        #expect(bookings.count == 1)
        #expect(first.payload["flightBooking"] == second.payload["flightBooking"])
    }

    @Test(arguments: [(3, SagaStatus.completed), (21, SagaStatus.compensated)])
    func wholeTrips(nights: Int, expected: SagaStatus) async throws {
        let system = try SagaTestSystem(definitions: [TripSaga.definition], deliveries: .twice)
        let (flights, hotels, charges) = (Bookings(), Bookings(), Bookings())
        try await system.register(service: "flight", handlers: flightHandlers(flights))
        try await system.register(service: "hotel", handlers: hotelHandlers(hotels))
        try await system.register(service: "payment", handlers: paymentHandlers(charges))
        let final = try await system.run("trip", payload: ["tripId": "t-3", "nights": JSONValue(integerLiteral: nights)])
        #expect(final.status == expected)
        #expect(charges.count == (expected == .completed ? 1 : 0))
        #expect(flights.count == (expected == .completed ? 1 : 2))  // booked, and cancelled when compensated
    }
}
