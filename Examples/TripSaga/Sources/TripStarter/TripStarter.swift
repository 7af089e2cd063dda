import Foundation
import Participant
import SagaSQLite
import Synchronization
import TripSaga

/// Starts `TRIPS` trips (every fifth one too long for the hotel), waits for each to finish and
/// prints how they ended. Exits with status 1 when a trip did not end as expected.
@main struct TripStarter {
    static func main() async {
        await SagaApplication.exitOnFailure {
            let app = try SagaApplication(service: "trip-starter", definitions: [TripSaga.definition])
            let store = try SQLiteSagaStore(reader: app.config.scoped(to: "sagakit.store"), logger: app.logger)
            let trips = app.config.int(forKey: "trips", default: 20)
            let manager = SagaManager(runtime: app.runtime(store: store))
            let batch = TripBatch(manager: manager, trips: trips, logger: app.logger)
            // The manager runs as a service: it hears the trips' lifecycle events, so outcome(of:)
            // returns as soon as a trip ends instead of reading the store over and over.
            try await app.run(store: store, services: [manager, batch])
            guard batch.result.withLock({ $0 }) else { throw TripsEndedWrong() }
        }
    }
}

/// Some trips did not end as their payload says they should.
struct TripsEndedWrong: Error, CustomStringConvertible {
    var description: String { "some trips did not end as expected (see the summary above)" }
}

final class TripBatch: Service, Sendable {
    let manager: SagaManager
    let trips: Int
    let logger: Logger
    let result = Mutex(false)

    init(manager: SagaManager, trips: Int, logger: Logger) {
        self.manager = manager
        self.trips = trips
        self.logger = logger
    }

    func run() async throws {
        let run = UUID().uuidString.prefix(6)
        let ids = try await withThrowingTaskGroup(of: (SagaID, Bool).self) { group in
            for number in 1...trips {
                group.addTask {
                    let tooLong = number % 5 == 0
                    let id = try await self.manager.start(
                        "trip", payload: Trip(tripId: "\(run)-\(number)", nights: tooLong ? 21 : 3), id: "trip-\(run)-\(number)")
                    return (id, tooLong)
                }
            }
            return try await group.reduce(into: [(SagaID, Bool)]()) { $0.append($1) }
        }
        var completed = 0
        var compensated = 0
        var wrong: [String] = []
        for (id, tooLong) in ids {
            let final = try await manager.outcome(of: id, timeout: .seconds(60))
            switch final.status {
            case .completed where !tooLong: completed += 1
            case .compensated where tooLong: compensated += 1
            default: wrong.append("\(id) is \(final.status.rawValue)")
            }
        }
        print("trip-starter: \(ids.count) trips: \(completed) completed, \(compensated) compensated, \(wrong.count) wrong")
        for line in wrong { print("trip-starter: unexpected: \(line)") }
        result.withLock { $0 = wrong.isEmpty && completed + compensated == trips }
    }
}
