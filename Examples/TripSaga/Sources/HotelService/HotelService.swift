import Participant
import SagaSQLite
import TripSaga

@main struct HotelService {
    static func main() async {
        await SagaApplication.exitOnFailure {
            let app = try SagaApplication(service: "hotel", definitions: [TripSaga.definition])
            let store = try SQLiteSagaStore(reader: app.config.scoped(to: "sagakit.store"), logger: app.logger)
            try await app.runParticipant(handlers: hotelHandlers(Bookings()), store: store)
        }
    }
}
