import Participant
import SagaTesting
import Testing

/// A parallel group (flight and hotel at once), a wait for the traveller's confirmation (1 h,
/// compensated on timeout), then the charge.
private let groupTrip: SagaDefinition = {
    do {
        return try SagaBuilder("group-trip")
            .parallel("book") { group in
                group
                    .step("flight", action: "flight.book", compensation: "flight.cancel")
                    .step("hotel", action: "hotel.book", compensation: "hotel.cancel", options: StepOptions(retry: .none))
            }
            .wait("confirm", for: "traveller.confirmed", timeout: .seconds(3600))
            .step("charge", action: "payment.charge")
            .build()
    } catch {
        fatalError("\(error)")
    }
}()

@Suite("SagaTesting with parallel groups and waits")
struct SagaTestingLanguageTests {
    private func system(hotelFails: Bool) async throws -> SagaTestSystem {
        let system = try SagaTestSystem(definitions: [groupTrip])
        var travel = SagaHandlerRegistry()
        travel.register("flight.book") { try await $0.completeStep(merging: ["flight": "LH1"]) }
        travel.register("flight.cancel") { try await $0.completeCompensation() }
        travel.register("hotel.book") { context in
            if hotelFails { return try await context.failAndCompensate(reason: "no rooms") }
            try await context.completeStep(merging: ["hotel": "H1"])
        }
        travel.register("hotel.cancel") { try await $0.completeCompensation() }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { try await $0.completeStep() }
        try await system.register(service: "travel", handlers: travel)
        try await system.register(service: "payment", handlers: payment)
        return system
    }

    @Test func theGroupRunsBothMembersThenTheSagaWaitsForTheSignal() async throws {
        let system = try await system(hotelFails: false)
        let waiting = try await system.run("group-trip", payload: [:])
        #expect(waiting.status == .waiting)
        #expect(await system.handled.map(\.command) == ["flight.book", "hotel.book"])
        let result = try await system.signal(waiting.id, name: "traveller.confirmed", payload: ["seat": "12A"], by: "traveller")
        guard case .delivered = result else { throw SagaError(.invalidState, "the signal was not delivered: \(result)") }
        try await system.runUntilIdle()
        let final = try await system.state(of: waiting.id)
        #expect(final.status == .completed)
        #expect(final.payload["flight"] == "LH1" && final.payload["hotel"] == "H1" && final.payload["seat"] == "12A")
    }

    @Test func aRefusingMemberCompensatesTheOtherAndTheWaitIsNeverReached() async throws {
        let system = try await system(hotelFails: true)
        let final = try await system.run("group-trip", payload: [:])
        #expect(final.status == .compensated)
        #expect(await system.handled.map(\.command) == ["flight.book", "hotel.book", "flight.cancel"])
    }

    @Test func withoutTheSignalTheTimeoutCompensatesAndALateSignalIsIgnored() async throws {
        let system = try await system(hotelFails: false)
        let waiting = try await system.run("group-trip", payload: [:])
        try await system.advanceClock(by: .seconds(3599))
        #expect(try await system.state(of: waiting.id).status == .waiting)
        try await system.advanceClock(by: .seconds(1))
        try await system.runUntilIdle()
        #expect(try await system.state(of: waiting.id).status == .compensated)
        #expect(Array(await system.handled.map(\.command).suffix(2)) == ["hotel.cancel", "flight.cancel"])
        guard case .ignored(let reason, _) = try await system.signal(waiting.id, name: "traveller.confirmed") else {
            throw SagaError(.invalidState, "a late signal was delivered")
        }
        #expect(reason.contains("came too late"))
        await #expect(throws: SagaError.self) { try await system.signal(waiting.id, name: "nope") }
    }

    @Test func theStepTesterRunsAGroupMemberAsTheLastToFinish() async throws {
        let tester = try SagaStepTester(definitions: [groupTrip])
        let run = try await tester.run("hotel.book", payload: [:]) { try await $0.completeStep() }
        // The flight completed: the group joins and the saga waits for the traveller.
        #expect(run.after.status == .waiting && run.next.isEmpty)
        let retry = try await tester.run("flight.book", attempt: 2) { context in
            throw SagaError(.invalidState, "down")
        }
        #expect(retry.willRetry && retry.next.map(\.attempt) == [3])
    }
}
