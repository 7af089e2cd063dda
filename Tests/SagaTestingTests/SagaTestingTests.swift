import Foundation
import Participant
import SagaTesting
import Synchronization
import Testing

/// A trip: book a flight, book a hotel, charge the card (the pivot).
private let trip: SagaDefinition = {
    do {
        return try SagaBuilder("trip")
            .step(
                "flight", action: "flight.book", compensation: "flight.cancel",
                options: StepOptions(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(2)))
            )
            .step("hotel", action: "hotel.book", compensation: "hotel.cancel")
            .step(
                "charge", action: "payment.charge",
                options: StepOptions(isPivot: true, retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(5)))
            )
            .compensationRetry(RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1)))
            .build()
    } catch {
        preconditionFailure("\(error)")
    }
}()

private struct Booking: Error {}

@Suite("SagaStepTester")
struct SagaStepTesterTests {
    @Test func aCompletedStepMergesItsPatchAndSendsTheNextCommand() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let run = try await tester.run("flight.book", payload: ["tripId": "t-1"]) { context in
            #expect(context.stepName == "flight")
            #expect(context.phase == .action)
            try await context.completeStep(merging: ["flightId": "F-9"])
        }
        #expect(run.report == .completed(["flightId": "F-9"]))
        #expect(run.payload == ["tripId": "t-1", "flightId": "F-9"])
        #expect(run.next.map(\.command) == ["hotel.book"])
        #expect(run.after.status == .running)
    }

    @Test func theLocalWritesAHandlerReportsAreShownToTheTest() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let run = try await tester.run("flight.book", payload: ["tripId": "t-1"]) { context in
            try await context.completeStep(
                merging: ["seat": "12A"],
                writing: [LocalWrite("UPDATE seats SET taken = true WHERE seat = $1", "12A", expecting: .atLeastOneRow)])
        }
        #expect(run.localWrites == [LocalWrite("UPDATE seats SET taken = true WHERE seat = $1", "12A", expecting: .atLeastOneRow)])
        #expect(run.payload["seat"] == "12A")
    }

    /// An `Int` field goes into a local write as it is (a user's `.int(order.quantity)` did not
    /// compile: `.int` takes an `Int64`).
    @Test func anIntegerOfAnyWidthIsALocalValue() {
        let quantity = 3
        #expect(LocalValue(quantity) == .int(3))
        #expect(LocalValue(UInt8(200)) == .int(200))
        #expect(LocalValue(Int32(-5)) == .int(-5))
    }

    @Test func returningWithoutReportingCountsAsSuccess() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let run = try await tester.run("hotel.book") { _ in }
        #expect(run.report == .completed([:]))
        #expect(run.next.map(\.command) == ["payment.charge"])
    }

    @Test func aBusinessRefusalStartsCompensatingTheEarlierSteps() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let run = try await tester.run("hotel.book") { try await $0.failAndCompensate(reason: "no rooms") }
        #expect(run.report == .failed("no rooms", retryable: false))
        #expect(run.startedCompensation)
        #expect(run.next.map(\.command) == ["flight.cancel"])
        #expect(!run.willRetry)
    }

    @Test func aThrownErrorIsRetriedByThePolicyWithItsDelay() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let first = try await tester.run("flight.book") { _ in throw Booking() }
        #expect(first.willRetry)
        #expect(first.handlerThrew != nil)
        #expect(first.scheduled.first?.delay == .seconds(2))
        #expect(first.next.first?.attempt == 2)
        // The last attempt: nothing before the first step to compensate, so the saga ends compensated.
        let last = try await tester.run("flight.book", attempt: 3) { _ in throw Booking() }
        #expect(!last.willRetry)
        #expect(last.after.status == .compensated)
        #expect(last.startedCompensation, "ending compensated at once is the start (and end) of compensation")
        // A first step that refuses: compensated at once too (a user's test found it reported false).
        let refused = try await tester.run("flight.book") { try await $0.failAndCompensate(reason: "no seats") }
        #expect(refused.after.status == .compensated && refused.startedCompensation && refused.next.isEmpty)
        // A completed step starts nothing.
        #expect(!(try await tester.run("flight.book") { _ in }).startedCompensation)
    }

    /// A payload that does not decode fails the same way on every attempt: the step fails at
    /// once (compensation before the pivot, needs attention from it on), with no retries.
    @Test func aPayloadThatDoesNotDecodeIsNotRetried() async throws {
        struct Flight: Decodable { var nights: Int }
        let tester = try SagaStepTester(definitions: [trip])
        let before = try await tester.run("hotel.book", payload: ["nights": "three"]) { context in
            _ = try context.payload(as: Flight.self)
        }
        #expect(!before.willRetry)
        #expect(before.startedCompensation)
        #expect(before.next.map(\.command) == ["flight.cancel"])
        guard case .failed(let reason, retryable: false) = before.report else {
            Issue.record("expected a failure without retries, got \(before.report)")
            return
        }
        #expect(reason.contains("does not decode as Flight") && reason.contains("not retried"), "\(reason)")
        // The pivot: a thrown error would be retried for ever; this one needs attention at once.
        let pivot = try await tester.run("payment.charge", payload: ["nights": "three"]) { context in
            _ = try context.payload(as: Flight.self)
        }
        #expect(!pivot.willRetry)
        #expect(pivot.after.status == .needsAttention)
        // The handler's own decoding counts too; any other error is retried.
        let own = try await tester.run("flight.book") { _ in _ = try JSONDecoder().decode(Flight.self, from: Data("{}".utf8)) }
        #expect(!own.willRetry)
        let other = try await tester.run("flight.book") { _ in throw Booking() }
        #expect(other.willRetry)
    }

    @Test func compensationHandlersArePositionedOnACompensatingSaga() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let run = try await tester.run("hotel.cancel") { context in
            #expect(context.phase == .compensation)
            try await context.completeCompensation()
        }
        #expect(run.report == .compensated)
        #expect(run.next.map(\.command) == ["flight.cancel"])
        let wrongCall = try await tester.run("hotel.cancel") { context in
            await #expect(throws: SagaError.self) { try await context.completeStep() }
        }
        #expect(wrongCall.report == .compensated)
    }

    /// A fallback's handler is tested like any other: on a saga whose primary failed for good.
    @Test func aFallbackRunsOnASagaWhosePrimaryFailed() async throws {
        let order = try SagaBuilder("order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step(
                "charge", action: "payment.charge", compensation: "payment.refund",
                options: StepOptions(retry: RetryPolicy(maxAttempts: 2)),
                fallback: SagaFallback(action: "backup.charge")
            )
            .step("ship", action: "shipping.ship", options: .pivot)
            .build()
        let tester = try SagaStepTester(definitions: [order])
        let run = try await tester.run("backup.charge", payload: ["amount": 5]) { context in
            #expect(context.command == "backup.charge" && context.stepName == "charge" && context.phase == .action)
            #expect(context.attempt == 3, "the fallback's first attempt follows the primary's two, as in production")
            try await context.completeStep(merging: ["paidBy": "backup"])
        }
        #expect(run.report == .completed(["paidBy": "backup"]))
        #expect(run.next.map(\.command) == ["shipping.ship"])
        // Its retries are counted from its own first attempt: the second is its last.
        let retried = try await tester.run("backup.charge", attempt: 1) { _ in throw Booking() }
        #expect(retried.next.map(\.command) == ["backup.charge"])
        let last = try await tester.run("backup.charge", attempt: 2) { _ in throw Booking() }
        #expect(last.after.status == .compensating, "\(last.after)")
    }

    @Test func runTwiceGivesTheSameIdempotencyKeyToBothRuns() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let keys = Mutex<[String]>([])
        let charges = Mutex<Set<String>>([])
        let (first, second) = try await tester.runTwice("payment.charge") { context in
            keys.withLock { $0.append(context.idempotencyKey) }
            charges.withLock { _ = $0.insert(context.idempotencyKey) }
            try await context.completeStep()
        }
        #expect(keys.withLock { $0.count } == 2)
        #expect(Set(keys.withLock { $0 }).count == 1)
        #expect(charges.withLock { $0.count } == 1)
        #expect(first.report == second.report)
        #expect(first.after.status == .completed)
    }

    @Test func anUnknownCommandSaysWhichCommandsAreKnown() async throws {
        let tester = try SagaStepTester(definitions: [trip])
        let error = await #expect(throws: SagaError.self) { try await tester.run("car.rent") { _ in } }
        #expect(error?.message.contains("flight.book") == true)
    }
}

@Suite("SagaTestSystem")
struct SagaTestSystemTests {
    static func registries(hotelFails: Bool) -> [(String, SagaHandlerRegistry)] {
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { try await $0.completeStep(merging: ["flight": "F-1"]) }
        flight.register("flight.cancel") { try await $0.completeCompensation() }
        var hotel = SagaHandlerRegistry()
        hotel.register("hotel.book") { context in
            if hotelFails { return try await context.failAndCompensate(reason: "no rooms") }
            try await context.completeStep()
        }
        hotel.register("hotel.cancel") { try await $0.completeCompensation() }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { try await $0.completeStep() }
        return [("flight", flight), ("hotel", hotel), ("payment", payment)]
    }

    @Test func aSagaRunsThroughEveryServiceInOrder() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        for (service, handlers) in Self.registries(hotelFails: false) { try await system.register(service: service, handlers: handlers) }
        let final = try await system.run("trip", payload: ["tripId": "t-1"])
        #expect(final.status == .completed)
        #expect(final.payload["flight"] == "F-1")
        #expect(await system.handled.map(\.command) == ["flight.book", "hotel.book", "payment.charge"])
    }

    /// A test's own "database" of hotel rooms: the runner applies the handlers' writes to it,
    /// all of an outcome's or none, and refuses a booking when no room is free.
    @Test func localWritesRunAgainstTheTestsDatabaseAndAFailedOneIsTheHandlersToHandle() async throws {
        let rooms = Mutex(["r-1": 1])
        let runner: SagaTestSystem.LocalWriteRunner = { sagaID, writes in
            try rooms.withLock { rooms in
                var next = rooms
                for write in writes {
                    guard case .text(let room) = write.parameters.first, let free = next[room] else { continue }
                    let delta = write.sql.hasPrefix("UPDATE rooms SET free = free - 1") ? -1 : 1
                    guard free + delta >= 0 else {
                        throw SagaError(.localWriteFailed, "\(write) for \(sagaID) changed no row", recoverySuggestion: "none")
                    }
                    next[room] = free + delta
                }
                rooms = next
            }
        }
        var hotel = SagaHandlerRegistry()
        hotel.register("hotel.book") { context in
            let take = LocalWrite("UPDATE rooms SET free = free - 1 WHERE id = $1 AND free > 0", "r-1", expecting: .rows(1))
            do {
                try await context.completeStep(merging: ["room": "r-1"], writing: [take])
            } catch let error as SagaError where error.code == .localWriteFailed {
                try await context.failAndCompensate(reason: "no room free")
            }
        }
        hotel.register("hotel.cancel") { context in
            try await context.completeCompensation(writing: [LocalWrite("UPDATE rooms SET free = free + 1 WHERE id = $1", "r-1")])
        }
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { try await $0.completeStep() }
        flight.register("flight.cancel") { try await $0.completeCompensation() }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { try await $0.completeStep() }

        let system = try SagaTestSystem(definitions: [trip], localWrites: runner)
        for (service, handlers) in [("flight", flight), ("hotel", hotel), ("payment", payment)] {
            try await system.register(service: service, handlers: handlers)
        }
        let first = try await system.run("trip", payload: [:])
        #expect(first.status == .completed)
        #expect(rooms.withLock { $0["r-1"] } == 0)
        let booked = await system.handled.first { $0.command == "hotel.book" }
        #expect(booked?.localWrites.map(\.sql) == ["UPDATE rooms SET free = free - 1 WHERE id = $1 AND free > 0"])

        // The only room is taken: the write fails, the handler compensates, nothing changed.
        let second = try await system.run("trip", payload: [:])
        #expect(second.status == .compensated)
        #expect(second.failureReason?.contains("no room free") == true)
        #expect(rooms.withLock { $0["r-1"] } == 0)
        #expect(await system.handled.filter { $0.sagaID == second.id }.map(\.command) == ["flight.book", "hotel.book", "flight.cancel"])
    }

    @Test func aFailureCompensatesNewestFirst() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        for (service, handlers) in Self.registries(hotelFails: true) { try await system.register(service: service, handlers: handlers) }
        let final = try await system.run("trip", payload: [:])
        #expect(final.status == .compensated)
        #expect(await system.handled.map(\.command) == ["flight.book", "hotel.book", "flight.cancel"])
    }

    @Test func aPayloadThatDoesNotDecodeCompensatesWithoutRetries() async throws {
        struct Hotel: Decodable { var nights: Int }
        let system = try SagaTestSystem(definitions: [trip])
        let attempts = Mutex(0)
        var handlers = Self.registries(hotelFails: false)
        for index in handlers.indices where handlers[index].0 == "hotel" {
            var hotel = SagaHandlerRegistry()
            hotel.register("hotel.book") { context in
                attempts.withLock { $0 += 1 }
                _ = try context.payload(as: Hotel.self)
            }
            hotel.register("hotel.cancel") { try await $0.completeCompensation() }
            handlers[index].1 = hotel
        }
        for (service, registry) in handlers { try await system.register(service: service, handlers: registry) }
        let final = try await system.run("trip", payload: ["nights": "three"])
        #expect(final.status == .compensated)
        #expect(attempts.withLock { $0 } == 1)
    }

    /// A saga past its deadline is compensated on the virtual clock, as the reaper and the
    /// participants do: by advanceClock, and when a retry's delay carries a command past it.
    @Test func aDeadlineCompensatesOnTheVirtualClock() async throws {
        let held = try SagaBuilder("held-trip")
            .step("flight", action: "flight.book", compensation: "flight.cancel")
            .step(
                "hotel", action: "hotel.book", compensation: "hotel.cancel",
                options: StepOptions(retry: RetryPolicy(maxAttempts: 5, initialDelay: .seconds(40), multiplier: 1))
            )
            .step("charge", action: "payment.charge", options: .pivot)
            .deadline(.seconds(60))
            .build()
        let system = try SagaTestSystem(definitions: [held])
        var registries = Self.registries(hotelFails: false)
        var hotel = SagaHandlerRegistry()
        hotel.register("hotel.book") { _ in throw Booking() }  // keeps failing: retried every 40 s
        hotel.register("hotel.cancel") { try await $0.completeCompensation() }
        registries[1] = ("hotel", hotel)
        for (service, handlers) in registries { try await system.register(service: service, handlers: handlers) }

        // Retries carry the hotel's command past the deadline: it is not run again.
        let retried = try await system.run("held-trip", payload: [:])
        #expect(retried.status == .compensated && retried.failureReason?.hasPrefix("deadline passed") == true, "\(retried)")
        #expect(await system.handled.filter { $0.command == "hotel.book" }.count == 2, "attempts at 0 s and 40 s, not at 80 s")

        // A saga whose command waits (nothing delivered): advanceClock finds it past its deadline.
        let waiting = try await system.start("held-trip", payload: [:])
        try await system.advanceClock(by: .seconds(61))
        #expect(try await system.state(of: waiting).status == .compensating)
        try await system.runUntilIdle()
        #expect(try await system.state(of: waiting).status == .compensated)
        #expect(await system.handled.filter { $0.sagaID == waiting }.map(\.command) == ["flight.cancel"])
    }

    @Test func retryDelaysAdvanceAVirtualClockWithoutWaiting() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        let attempts = Mutex(0)
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { context in
            if attempts.withLock({
                $0 += 1; return $0
            }) < 3 {
                throw Booking()
            }
            try await context.completeStep()
        }
        flight.register("flight.cancel") { try await $0.completeCompensation() }
        try await system.register(service: "flight", handlers: flight)
        for (service, handlers) in Self.registries(hotelFails: false) where service != "flight" {
            try await system.register(service: service, handlers: handlers)
        }
        let began = await system.now
        let clock = ContinuousClock()
        let wall = clock.now
        let final = try await system.run("trip", payload: [:])
        #expect(final.status == .completed)
        #expect(await system.handled.filter { $0.command == "flight.book" }.map(\.attempt) == [1, 2, 3])
        #expect(await system.now.timeIntervalSince(began) >= 4)  // two retries, 2 s and 4 s policy delays (rounded by no level)
        #expect(clock.now - wall < .seconds(2))
    }

    /// A command registered twice is a mistake the test (and the participant at start) reports,
    /// naming the command, not a crash.
    @Test func aCommandRegisteredTwiceIsReportedNotACrash() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { try await $0.completeStep() }
        flight.register("flight.cancel") { try await $0.completeCompensation() }
        flight.register("flight.book") { try await $0.completeStep() }
        let error = await #expect(throws: SagaError.self) { try await system.register(service: "flight", handlers: flight) }
        #expect(error?.code == .duplicateHandler)
        #expect(error?.message.contains("more than once for command 'flight.book'") == true, "\(String(describing: error))")
    }

    /// An operator's runbook, tested: the flight's cancellation keeps failing, the saga needs
    /// attention, the operator cancels by phone and resolves it; it ends compensated.
    @Test func anOperatorResolvesACompensationThatCannotSucceed() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { try await $0.completeStep(merging: ["flight": "F-1"]) }
        flight.register("flight.cancel") { _ in throw Booking() }
        try await system.register(service: "flight", handlers: flight)
        for (service, handlers) in Self.registries(hotelFails: true) where service != "flight" {
            try await system.register(service: service, handlers: handlers)
        }
        let stopped = try await system.run("trip", payload: [:])
        #expect(stopped.status == .needsAttention)
        await #expect(throws: SagaError.self) { try await system.compensate(stopped.id) }
        let resolved = try await system.resolve(stopped.id, by: "alice", reason: "cancelled by phone", patch: ["cancellation": "C-1"])
        #expect(resolved.status == .compensated && resolved.payload["cancellation"] == "C-1")
        #expect(resolved.history.last?.actor == "alice" && resolved.history.last?.reason == "resolved by hand: cancelled by phone")
        try await system.runUntilIdle()
        #expect(try await system.state(of: stopped.id).status == .compensated)
    }

    @Test func twiceDeliveredCommandsExposeAHandlerThatIsNotIdempotent() async throws {
        let system = try SagaTestSystem(definitions: [trip], deliveries: .twice)
        let bookings = Mutex(0)
        var flight = SagaHandlerRegistry()
        flight.register("flight.book") { context in
            bookings.withLock { $0 += 1 }  // not keyed by context.idempotencyKey: books twice
            try await context.completeStep()
        }
        flight.register("flight.cancel") { try await $0.completeCompensation() }
        try await system.register(service: "flight", handlers: flight)
        for (service, handlers) in Self.registries(hotelFails: false) where service != "flight" {
            try await system.register(service: service, handlers: handlers)
        }
        _ = try await system.run("trip", payload: [:])
        #expect(bookings.withLock { $0 } == 2)
    }

    @Test func aMissingServiceIsNamed() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        let error = await #expect(throws: SagaError.self) { _ = try await system.run("trip", payload: [:]) }
        #expect(error?.message.contains("flight.book") == true)
    }

    @Test func twoServicesCannotHandleOneCommand() async throws {
        let system = try SagaTestSystem(definitions: [trip])
        var one = SagaHandlerRegistry()
        one.register("hotel.book") { _ in }
        try await system.register(service: "hotel", handlers: one)
        await #expect(throws: SagaError.self) { try await system.register(service: "other-hotel", handlers: one) }
    }
}

/// Several versions of one saga in the test kits, as a rolling upgrade has them (an outside
/// trial could not test its v1 sagas on its v2 handlers: the test system lost the version, and the
/// step tester always took the first version).
@Suite("SagaTesting with several versions")
struct SagaTestingVersionTests {
    static let v1 = try! SagaBuilder("ticket").version(1)
        .step("reserve", action: "seats.reserve", compensation: "seats.release")
        .step("charge", action: "billing.charge", compensation: "billing.refund")
        .build()
    static let v2 = try! SagaBuilder("ticket").version(2)
        .step("reserve", action: "seats.reserve", compensation: "seats.release")
        .step("check", action: "billing.fraud-check")
        .step("charge", action: "billing.charge", compensation: "billing.refund")
        .build()

    struct ChargeV2: Codable { var paymentToken: String }
    struct ChargeV1: Codable { var card: String }

    /// Release 2's charge: decodes by the saga's version.
    static let charge: SagaHandler = { context in
        let token: String =
            context.definitionVersion >= 2
            ? try context.payload(as: ChargeV2.self).paymentToken : try context.payload(as: ChargeV1.self).card
        try await context.completeStep(merging: ["charged": .string(token)])
    }

    @Test func theSystemStartsTheNewestOrAGivenVersionAndKeepsEachSagaOnItsOwn() async throws {
        let system = try SagaTestSystem(definitions: [Self.v1, Self.v2])
        var seats = SagaHandlerRegistry()
        seats.register("seats.reserve") { try await $0.completeStep() }
        seats.register("seats.release") { try await $0.completeCompensation() }
        var billing = SagaHandlerRegistry()
        billing.register("billing.fraud-check") { try await $0.completeStep() }
        billing.register("billing.charge", handler: Self.charge)
        billing.register("billing.refund") { try await $0.completeCompensation() }
        try await system.register(service: "seats", handlers: seats)
        try await system.register(service: "billing", handlers: billing)
        let new = try await system.start("ticket", payload: ["paymentToken": "tok"])
        let old = try await system.start("ticket", payload: ["card": "4242"], version: 1)
        try await system.runUntilIdle()
        let newFinal = try await system.state(of: new)
        let oldFinal = try await system.state(of: old)
        #expect(newFinal.definitionVersion == 2 && newFinal.status == .completed && newFinal.payload["charged"] == "tok")
        #expect(oldFinal.definitionVersion == 1 && oldFinal.status == .completed && oldFinal.payload["charged"] == "4242")
        #expect(newFinal.history.map(\.stepName) == ["reserve", "check", "charge"])
        #expect(oldFinal.history.map(\.stepName) == ["reserve", "charge"])
        await #expect(throws: SagaError.self) { try await system.start("ticket", payload: [:], version: 3) }
    }

    @Test func theStepTesterTakesTheNewestVersionOrTheOneAskedFor() async throws {
        let tester = try SagaStepTester(definitions: [Self.v1, Self.v2])
        let newest = try await tester.run("billing.charge", payload: ["paymentToken": "tok"], handler: Self.charge)
        #expect(newest.before.definitionVersion == 2 && newest.command.step == 2)
        #expect(newest.report == .completed(["charged": "tok"]))
        // A v1 saga's payload on release 2's handler.
        let older = try await tester.run("billing.charge", payload: ["card": "4242"], version: 1, handler: Self.charge)
        #expect(older.before.definitionVersion == 1 && older.command.step == 1)
        #expect(older.report == .completed(["charged": "4242"]))
        await #expect(throws: SagaError.self) {
            _ = try await tester.run("billing.fraud-check", version: 1) { try await $0.completeStep() }
        }
    }
}
