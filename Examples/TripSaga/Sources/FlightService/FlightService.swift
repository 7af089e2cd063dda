import Participant
import SagaSQLite
import TripSaga

@main struct FlightService {
    static func main() async {
        await SagaApplication.exitOnFailure {
            let app = try SagaApplication(service: "flight", definitions: [TripSaga.definition])
            let store = try SQLiteSagaStore(reader: app.config.scoped(to: "sagakit.store"), logger: app.logger)
            try await app.runParticipant(handlers: flightHandlers(Bookings()), store: store)
        }
    }
}
