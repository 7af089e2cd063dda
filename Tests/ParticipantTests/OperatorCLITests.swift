import Foundation
import Participant
import SagaSQLite
import SagaTestSupport
import Synchronization
import Testing

/// The plain `saga` executable (no compiled-in definitions) on the real broker and a real store,
/// operating `trip` sagas whose definition exists only in this test process: list with every
/// filter, show, graph, definitions, retry, compensate, reap and dlq, for people and as JSON.
@Suite(
    "saga CLI on a user-defined saga (broker and store)",
    .enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"),
    .timeLimit(.minutes(5))
)
struct OperatorCLITests {
    /// `trip` version 2: hotel, flight, then the pivot `confirm`, whose failures are retried
    /// forward every second.
    static let trip: SagaDefinition = {
        let everySecond = RetryPolicy(maxAttempts: 50, initialDelay: .seconds(1), multiplier: 1, maxDelay: .seconds(1))
        do {
            return try SagaBuilder("trip")
                .version(2)
                .step("hotel", action: "trip-cli.hotels.book", compensation: "trip-cli.hotels.cancel")
                .step(
                    "flight", action: "trip-cli.flights.book", compensation: "trip-cli.flights.cancel",
                    options: StepOptions(retry: everySecond)
                )
                .step("confirm", action: "trip-cli.trips.confirm", options: StepOptions(isPivot: true, retry: everySecond))
                .build()
        } catch {
            preconditionFailure("\(error)")
        }
    }()

    /// `trip` version 1: hotel and flight only.
    static let tripV1: SagaDefinition = {
        do {
            return try SagaBuilder("trip")
                .step("hotel", action: "trip-cli.hotels.book", compensation: "trip-cli.hotels.cancel")
                .step("flight", action: "trip-cli.flights.book", compensation: "trip-cli.flights.cancel")
                .build()
        } catch {
            preconditionFailure("\(error)")
        }
    }()

    /// A switch the test turns on while the services run.
    final class Switch: Sendable {
        private let state = Mutex(false)
        var isOn: Bool { state.withLock { $0 } }
        func turnOn() { state.withLock { $0 = true } }
    }

    /// The payload switches of the fake services.
    struct TripPayload: Codable {
        var noSeats: Bool?
        var flightDown: Bool?
        var confirmBroken: Bool?
    }

    /// The three services. `confirmFixed` makes a broken confirmation succeed (the fix an
    /// operator deploys before retrying).
    static func handlers(confirmFixed: Switch) -> [String: SagaHandlerRegistry] {
        var hotels = SagaHandlerRegistry()
        hotels.register("trip-cli.hotels.book") { try await $0.completeStep(merging: ["hotel": "Pestana"]) }
        hotels.register("trip-cli.hotels.cancel") { try await $0.completeCompensation() }
        var flights = SagaHandlerRegistry()
        flights.register("trip-cli.flights.book") { context in
            let trip = try context.payload(as: TripPayload.self)
            if trip.noSeats == true { return try await context.failAndCompensate(reason: "no seats on TP123") }
            if trip.flightDown == true { throw TestFailure("airline API down") }
            try await context.completeStep(merging: ["flight": "TP123"])
        }
        flights.register("trip-cli.flights.cancel") { try await $0.completeCompensation() }
        var trips = SagaHandlerRegistry()
        trips.register("trip-cli.trips.confirm") { context in
            let trip = try context.payload(as: TripPayload.self)
            if trip.confirmBroken == true && !confirmFixed.isOn {
                throw TestFailure("confirmation service rejects the booking")
            }
            try await context.completeStep()
        }
        return ["hotels": hotels, "flights": flights, "trips": trips]
    }

    @Test func listShowGraphRetryCompensateAndJSONOnASagaOnlyTheTestKnows() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let storeURL = "sqlite://\(path)"
        let topology = SagaTopology(prefix: "cli-\(UUID().uuidString.prefix(8).lowercased())", delayLevels: [1])
        let cli = SagaCLI(store: storeURL, amqp: amqp, prefix: topology.prefix)
        let confirmFixed = Switch()
        let bus = try await RabbitMQBus.connect(url: amqp)
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await Self.withServices(Self.handlers(confirmFixed: confirmFixed), bus: bus, store: store, topology: topology) { manager in
                let managerV1 = SagaManager(
                    definitions: try SagaDefinitionRegistry([Self.tripV1]), bus: bus, store: store, topology: topology,
                    logger: quietTestLogger)

                let compensated = try await manager.start("trip", payload: ["noSeats": true], id: "trip-compensated")
                let stuck = try await manager.start("trip", payload: ["confirmBroken": true], id: "trip-stuck")
                let onV1 = try await managerV1.start("trip", payload: [:], id: "trip-v1")
                #expect(try await manager.outcome(of: compensated, timeout: .seconds(60)).status == .compensated)
                #expect(try await manager.outcome(of: onV1, timeout: .seconds(60)).status == .completed)
                try await Self.waitUntil("the stuck saga reaches attempt 5") { try await store.load(stuck).attempt >= 5 }

                // list: each filter.
                #expect(try await cli.listIDs(["--name", "trip", "--status", "compensated"]) == [compensated])
                #expect(try await cli.listIDs(["--status", "completed"]) == [onV1])
                #expect(try await cli.listIDs(["--name", "trip", "--version", "1"]) == [onV1])
                #expect(Set(try await cli.listIDs(["--version", "2"])) == [compensated, stuck])
                #expect(try await cli.listIDs(["--name", "nobody"]).isEmpty)
                // The saga retrying forever past its pivot: neither needs-attention nor stalled…
                #expect(try await cli.listIDs(["--status", "needs-attention"]).isEmpty)
                #expect(try await cli.listIDs(["--stalled", "60"]).isEmpty)
                // …but stuck retrying: alone (5 attempts), with a number, before another option.
                #expect(try await cli.listIDs(["--stuck-retrying"]) == [stuck])
                #expect(try await cli.listIDs(["--stuck-retrying", "3", "--name", "trip"]) == [stuck])
                #expect(try await cli.listIDs(["--stuck-retrying", "--version", "2"]) == [stuck])
                #expect(try await cli.listIDs(["--stuck-retrying", "1000"]).isEmpty)
                let table = try await cli.succeed(["list", "--stuck-retrying"])
                #expect(table.contains(stuck) && table.contains("confirm (action #"), "\(table)")
                #expect(table.contains("stuck retrying (attempt 5 or more)"), "\(table)")
                let badStatus = try await cli.run(["list", "--status", "asleep", "--json"])
                #expect(badStatus.status != 0 && badStatus.stdout.isEmpty, "\(badStatus)")
                #expect(badStatus.stderr.contains("unknown status 'asleep'"), "\(badStatus)")

                // show: the compensated saga's timeline, line by line.
                let shown = try await cli.succeed(["show", compensated])
                let lines = shown.split(separator: "\n", omittingEmptySubsequences: false).map { String($0) }
                let timeline = Array(lines.drop { !$0.hasPrefix("timeline") }.dropFirst().prefix { !$0.isEmpty })
                #expect(timeline.count == 5, "\(shown)")
                if timeline.count == 5 {
                    #expect(timeline[0] == "  +0 ms       saga started", "\(timeline[0])")
                    #expect(Self.columns(timeline[1]).dropFirst(2).starts(with: ["hotel", "action", "#1", "completed"]), "\(timeline[1])")
                    #expect(Self.columns(timeline[2]).dropFirst(2).starts(with: ["flight", "action", "#1", "FAILED"]), "\(timeline[2])")
                    #expect(timeline[2].hasSuffix("no seats on TP123"), "\(timeline[2])")
                    // Which process recorded each step: the instance `saga services` lists.
                    #expect(timeline[1].contains(" on hotels-1@"), "\(timeline[1])")
                    #expect(timeline[2].contains(" on flights-1@"), "\(timeline[2])")
                    #expect(timeline[3].contains(" on hotels-1@"), "\(timeline[3])")
                    #expect(
                        Self.columns(timeline[3]).dropFirst(2).starts(with: ["hotel", "compensation", "#1", "completed"]), "\(timeline[3])")
                    #expect(timeline[4].hasSuffix("saga compensated"), "\(timeline[4])")
                }
                #expect(shown.contains("definition  trip version 2"), "\(shown)")
                #expect(shown.contains("status      COMPENSATED"), "\(shown)")
                #expect(shown.contains("reason      step 'flight' failed: no seats on TP123"), "\(shown)")
                #expect(
                    shown.contains(
                        "next\n  finished: the completed steps were compensated. Why: step 'flight' failed: no seats on TP123\n"),
                    "\(shown)")
                print("saga show of a compensated saga of a user-defined definition:\n\(shown)")
                // --redact (or SAGAKIT_REDACT): payload keys masked in show and in list's JSON.
                #expect(shown.contains("Pestana"), "\(shown)")
                let redacted = try await cli.succeed(["show", compensated, "--redact", "hotel, email"])
                #expect(redacted.contains("\"hotel\":\"••••\"") && !redacted.contains("Pestana"), "\(redacted)")
                let listedJSON = try await cli.json(["list", "--status", "compensated"], environment: ["SAGAKIT_REDACT": "hotel"])
                let listedPayload = ((listedJSON as? [[String: Any]])?.first?["payload"] as? [String: Any]) ?? [:]
                #expect(listedPayload["hotel"] as? String == "••••" && listedPayload["noSeats"] as? Bool == true, "\(listedPayload)")

                // show: the stuck saga says it is retrying past the pivot.
                let stuckShown = try await cli.json(["show", stuck]) as? [String: Any]
                let next = stuckShown?["nextStep"] as? [String: Any]
                #expect(["retrying", "waiting"].contains(next?["kind"] as? String), "\(String(describing: next))")
                #expect(next?["command"] as? String == "trip-cli.trips.confirm")
                #expect((next?["attempt"] as? Int ?? 0) >= 5)
                #expect((stuckShown?["next"] as? String)?.contains("past the pivot") == true, "\(String(describing: stuckShown))")
                // The store cannot see a dead-lettered command: show says where to look.
                #expect((stuckShown?["next"] as? String)?.contains("`saga dlq list --saga \(stuck)`") == true)
                // …and which service runs that command, from the participants' records.
                let handledBy = next?["handledBy"] as? [String: Any]
                #expect(handledBy?["services"] as? [String] == ["trips"], "\(String(describing: next))")
                #expect(handledBy?["live"] as? Int == 1 && handledBy?["silent"] as? Int == 0)
                #expect(
                    (stuckShown?["next"] as? String)?.contains("handled by service 'trips': 1 process(es) report in") == true,
                    "\(String(describing: stuckShown))")

                // services: the three participants, live, with their commands; nothing unhandled.
                let services = try await cli.json(["services", "--check"]) as? [String: Any]
                let byService = Dictionary(
                    ((services?["services"] as? [[String: Any]]) ?? []).map { ($0["service"] as? String ?? "", $0) },
                    uniquingKeysWith: { first, _ in first })
                #expect(Set(byService.keys) == ["hotels", "flights", "trips"], "\(String(describing: services))")
                #expect(byService["hotels"]?["commands"] as? [String] == ["trip-cli.hotels.book", "trip-cli.hotels.cancel"])
                #expect((byService["trips"]?["instances"] as? [[String: Any]])?.map { $0["live"] as? Bool } == [true])
                #expect((services?["unhandled"] as? [Any])?.isEmpty == true, "\(String(describing: services))")
                let servicesTable = try await cli.succeed(["services"])
                #expect(servicesTable.contains("every command of the known definitions has a live handler"), "\(servicesTable)")

                let stuckTimeline = stuckShown?["timeline"] as? [[String: Any]] ?? []
                #expect(
                    stuckTimeline.contains {
                        $0["outcome"] as? String == "retrying" && $0["error"] as? String == "confirmation service rejects the booking"
                    })
                // The process that recorded the attempt is the one `services` lists.
                let recordedBy = stuckTimeline.first { $0["outcome"] as? String == "retrying" }?["instance"] as? String
                #expect(recordedBy?.hasPrefix("trips-1@") == true, "\(stuckTimeline)")
                #expect((byService["trips"]?["instances"] as? [[String: Any]])?.map { $0["instance"] as? String } == [recordedBy])

                // graph, for people and as JSON.
                let graph = try await cli.succeed(["graph", "trip"])
                #expect(graph.contains("flowchart LR") && graph.contains("trip-cli.trips.confirm · PIVOT"), "\(graph)")
                let graphJSON = try await cli.json(["graph", "trip", "--version", "1"]) as? [String: Any]
                #expect(graphJSON?["version"] as? Int == 1)
                #expect((graphJSON?["steps"] as? [[String: Any]])?.map { $0["name"] as? String } == ["hotel", "flight"])
                #expect((graphJSON?["mermaid"] as? String)?.hasPrefix("flowchart LR") == true)

                // compensate, by someone, with a reason.
                let cancelled = try await manager.start("trip", payload: ["flightDown": true], id: "trip-cancelled")
                try await Self.waitUntil("the flight has been tried twice") { try await store.load(cancelled).attempt >= 2 }
                let compensateOutput = try await cli.succeed([
                    "compensate", cancelled, "--by", "alice", "--reason", "customer cancelled the trip",
                ])
                #expect(compensateOutput.contains("recorded: compensation requested by alice"), "\(compensateOutput)")
                #expect(try await manager.outcome(of: cancelled, timeout: .seconds(60)).status == .compensated)
                let cancelledShown = try await cli.succeed(["show", cancelled])
                print("saga show of a saga an operator compensated:\n\(cancelledShown)")
                #expect(
                    cancelledShown.contains("compensation requested by alice at ")
                        && cancelledShown.contains(": \"customer cancelled the trip\""), "\(cancelledShown)")
                let operatorEntry = (try await cli.json(["show", cancelled]) as? [String: Any]).flatMap {
                    $0["timeline"] as? [[String: Any]]
                }?
                .first { $0["event"] as? String == "operator" }
                #expect(operatorEntry?["actor"] as? String == "alice")
                #expect(operatorEntry?["reason"] as? String == "customer cancelled the trip")
                #expect(operatorEntry?["outcome"] as? String == "compensationRequested")
                #expect(operatorEntry?["stepName"] as? String == "flight")
                // Past the pivot, compensating is refused, on standard error.
                let refused = try await cli.run(["compensate", stuck, "--json"])
                #expect(refused.status != 0 && refused.stdout.isEmpty, "\(refused)")
                #expect(refused.stderr.contains("past its pivot"), "\(refused)")

                // retry, by someone, with a reason (JSON: the new state). The fix lands after the retry:
                // before it, the saga's own delayed retry could complete it first.
                let retried =
                    try await cli.json(["retry", stuck, "--by", "bob", "--reason", "confirmation service fixed"]) as? [String: Any]
                #expect(retried?["id"] as? String == stuck)
                #expect(retried?["status"] as? String == "running")
                let lastRecord = (retried?["history"] as? [[String: Any]])?.last
                #expect(lastRecord?["outcome"] as? String == "retryRequested")
                #expect(lastRecord?["actor"] as? String == "bob")
                #expect(lastRecord?["reason"] as? String == "confirmation service fixed")
                confirmFixed.turnOn()
                #expect(try await manager.outcome(of: stuck, timeout: .seconds(60)).status == .completed)
                let stuckDone = try await cli.succeed(["show", stuck])
                #expect(
                    stuckDone.contains("retry requested by bob at ") && stuckDone.contains(": \"confirmation service fixed\""),
                    "\(stuckDone)")
                #expect(stuckDone.contains("next\n  finished: every step completed."), "\(stuckDone)")
                #expect(try await cli.listIDs(["--stuck-retrying", "1"]).isEmpty)

                // list --json carries the whole state.
                let listed = try await cli.json(["list", "--name", "trip", "--version", "1"]) as? [[String: Any]]
                #expect(listed?.count == 1)
                #expect(listed?.first?["status"] as? String == "completed")
                #expect((listed?.first?["context"] as? [String: String])?[SagaState.definitionVersionKey] == "1")

                // definitions: both versions, with their sagas.
                let definitions = try await cli.json(["definitions"]) as? [[String: Any]] ?? []
                let byVersion = Dictionary(
                    definitions.filter { $0["name"] as? String == "trip" }.map { ($0["version"] as? Int ?? 0, $0) },
                    uniquingKeysWith: { first, _ in first })
                #expect(byVersion[1]?["sagas"] as? Int == 1)
                #expect(byVersion[2]?["sagas"] as? Int == 3)
                #expect(byVersion[2]?["hash"] as? String == Self.trip.contentHash)
                #expect(byVersion[2]?["source"] as? String == "store")

                // Without --by, the actor is $SAGAKIT_OPERATOR.
                let another = try await manager.start("trip", payload: ["flightDown": true], id: "trip-retried")
                try await Self.waitUntil("the flight has been tried") { try await store.load(another).attempt >= 2 }
                let byEnvironment =
                    try await cli.json(["retry", another], environment: ["SAGAKIT_OPERATOR": "carol", "SAGAKIT_REDACT": "flightDown"])
                    as? [String: Any]
                // The state the command prints is redacted too.
                #expect((byEnvironment?["payload"] as? [String: Any])?["flightDown"] as? String == "••••", "\(byEnvironment ?? [:])")
                let carolRecord = (byEnvironment?["history"] as? [[String: Any]])?.last
                #expect(carolRecord?["actor"] as? String == "carol", "\(String(describing: carolRecord))")
                #expect(carolRecord?["reason"] == nil)
                #expect(try await cli.succeed(["show", another]).contains("retry requested by carol at "))

                // dlq: list and a requeue of nothing, as JSON.
                let letters = try await cli.json(["dlq", "list", "--limit", "5"]) as? [[String: Any]]
                #expect(letters != nil)
                // An id no dead letter has: said (JSON `missing`) and exit status 1.
                let requeue = try await cli.run(["dlq", "requeue", "--id", "no-such-message", "--limit", "5", "--json"])
                #expect(requeue.status == 1, "\(requeue)")
                let requeued = try JSONSerialization.jsonObject(with: Data(requeue.stdout.utf8)) as? [String: Any]
                #expect((requeued?["requeued"] as? [Any])?.isEmpty == true, "\(requeue)")
                #expect((requeued?["failed"] as? [Any])?.isEmpty == true)
                #expect(requeued?["missing"] as? [String] == ["no-such-message"], "\(requeue)")
                let drop = try await cli.run(["dlq", "drop", "--id", "no-such-message", "--limit", "5"])
                #expect(drop.status == 1 && drop.stderr.contains("not found in the first 5 dead letters: no-such-message"), "\(drop)")
                // A prefix no services ran with: said, and nothing is declared under it.
                let typo = try await SagaCLI(store: storeURL, amqp: amqp, prefix: topology.prefix + "-typo").run(["dlq", "list"])
                #expect(typo.status != 0 && typo.stderr.contains("no queue '\(topology.prefix)-typo.dead-letters'"), "\(typo)")
                // resolve: a hotel cancellation that keeps failing was done by phone.
                var stopped = SagaStateMachine(definition: Self.trip).start(
                    id: "trip-stuck-cancel", payload: [:], context: [SagaTopology.contextKey: topology.prefix], now: Date()
                ).0
                let machine = SagaStateMachine(definition: Self.trip)
                for event in [
                    SagaEvent.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: Date()),
                    .stepFailed(step: 1, attempt: 1, error: "no seats", retryable: false, startedAt: Date()),
                ] {
                    stopped = try #require(machine.apply(event, to: stopped, now: Date()).state)
                }
                while stopped.status == .compensating {
                    stopped = try #require(
                        machine.apply(
                            .compensationFailed(step: 0, attempt: stopped.attempt, error: "hotel API down", startedAt: Date()), to: stopped,
                            now: Date()
                        ).state)
                }
                _ = try await store.create(stopped, outbox: [])
                let stoppedShown = try await cli.succeed(["show", stopped.id])
                #expect(
                    stoppedShown.contains(
                        "`saga resolve \(stopped.id) --reason …` records that you did 'trip-cli.hotels.cancel' by hand (it will not run); the earlier compensations run next"
                    ), "\(stoppedShown)")
                let resolved =
                    try await cli.json([
                        "resolve", stopped.id, "--reason", "cancelled by phone", "--by", "dora", "--data", #"{"cancellation": "C-9"}"#,
                    ]) as? [String: Any]
                #expect(resolved?["status"] as? String == "compensated", "\(resolved ?? [:])")
                #expect((resolved?["payload"] as? [String: Any])?["cancellation"] as? String == "C-9")
                let byHand = (resolved?["history"] as? [[String: Any]])?.last
                #expect(byHand?["actor"] as? String == "dora" && byHand?["reason"] as? String == "resolved by hand: cancelled by phone")
                let resolvedShown = try await cli.succeed(["show", stopped.id])
                #expect(
                    resolvedShown.contains("resolved by hand by dora at ") && resolvedShown.contains(": \"cancelled by phone\""),
                    "\(resolvedShown)")
                let again = try await cli.run(["resolve", stopped.id, "--reason", "twice"])
                #expect(again.status == 1 && again.stderr.contains("only a saga that needs attention can be resolved by hand"), "\(again)")

                // Several sagas at once: each retried, the unknown one named, exit status 1.
                let several = try await cli.run(["retry", another, "no-such-saga", "--reason", "bulk"])
                #expect(several.status == 1 && several.stdout.contains("saga \(another) is"), "\(several)")
                #expect(several.stderr.contains("1 of 2 failed: no-such-saga"), "\(several)")
                // The ids from `list --ids`, one per line, through standard input (`-`).
                let listedIDs = try await cli.succeed(["list", "--ids", "--limit", "1000"])
                #expect(listedIDs.split(separator: "\n").map(String.init).contains(another), "\(listedIDs)")
                #expect(!listedIDs.contains(" "), "ids only: \(listedIDs)")
                let piped = try await cli.run(["retry", "-", "--reason", "piped"], input: "\n\(another)\n  \n")
                #expect(piped.status == 0 && piped.stdout.contains("saga \(another) is"), "\(piped)")
                #expect(try await cli.succeed(["show", another]).contains(": \"piped\""))
                // A long run says how far it got, on standard error, at each tenth.
                let many = (1...120).map { "no-such-saga-\($0)" }.joined(separator: "\n")
                let bulk = try await cli.run(["retry", "-", "--json"], input: many)
                let progressLines = bulk.stderr.split(separator: "\n").filter { $0.hasPrefix("progress: ") }
                #expect(progressLines.count == 9, "\(bulk.stderr)")
                #expect(progressLines.first == "progress: 12 of 120 sagas (10 %), 12 failed", "\(progressLines)")
                #expect(progressLines.last == "progress: 108 of 120 sagas (90 %), 108 failed", "\(progressLines)")
                #expect(bulk.status == 1 && bulk.stderr.contains("120 of 120 failed"), "\(bulk)")
                let nothing = try await cli.run(["compensate", "-"], input: "")
                #expect(nothing.status != 0 && nothing.stderr.contains("no saga ids on standard input"), "\(nothing)")

                // An unknown saga: an error on standard error, nothing on standard output.
                let unknown = try await cli.run(["show", "no-such-saga", "--json"])
                #expect(unknown.status != 0 && unknown.stdout.isEmpty, "\(unknown)")
                #expect(unknown.stderr.contains("no-such-saga"), "\(unknown)")
            }
        }
        await bus.shutdown()
    }

    /// `saga reap` re-sends the stalled sagas it can and lists every one it leaves alone with
    /// why: another topology prefix, an unknown definition, a lease held by another reaper.
    /// A tool a team builds with `SagaOperatorTool.main` is called by its own name in its help
    /// and in the commands its hints suggest, not `saga` (here: the `saga` executable started
    /// through a link named `travel-tool`).
    @Test func aToolCallsItselfByTheNameItWasStartedBy() async throws {
        let link = NSTemporaryDirectory() + "sagakit-cli-\(UUID().uuidString)/travel-tool"
        try FileManager.default.createDirectory(
            atPath: (link as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: (link as NSString).deletingLastPathComponent) }
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: SagaCLI.executable.path)
        let help = try await SagaCLI(store: "sqlite:///nonexistent.db", amqp: "", prefix: "unused", executable: URL(fileURLWithPath: link))
            .run(["list", "--help"])
        #expect(help.stdout.contains("USAGE: travel-tool list"), "\(help)")
        #expect(help.stdout.contains("Examples: travel-tool list --status needs-attention"), "\(help)")
        #expect(!help.stdout.contains("saga list"), "\(help)")
        // A mistyped command: the closest one, by the tool's name.
        let typo = try await SagaCLI(store: "sqlite:///nonexistent.db", amqp: "", prefix: "unused", executable: URL(fileURLWithPath: link))
            .run(["lsit"])
        #expect(typo.status == 64 && typo.stdout.isEmpty, "\(typo)")
        #expect(
            typo.stderr.hasPrefix("Error: 'lsit' is not a command of travel-tool (did you mean 'list'?); its commands: list, show"),
            "\(typo)")
    }

    /// The participants' records in the store say which service runs a saga's next step: `saga
    /// show` and `saga services` name a service whose processes stopped reporting, and the
    /// commands no live process handles (`--check` fails on them).
    @Test func showAndServicesNameTheSilentAndTheMissingServices() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let prefix = "cli-\(UUID().uuidString.prefix(8).lowercased())"
        let cli = SagaCLI(store: "sqlite://\(path)", amqp: amqp, prefix: prefix)
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await store.register(Self.trip)
            let now = Date()
            // The hotels service was killed ten minutes ago; flights runs, without its cancellation
            // handler; trips never ran.
            try await store.recordParticipant(
                ParticipantInstance(
                    topology: prefix, service: "hotels", instance: "host:1:a",
                    commands: ["trip-cli.hotels.book", "trip-cli.hotels.cancel"],
                    startedAt: now.addingTimeInterval(-3600), lastSeen: now.addingTimeInterval(-600), reportInterval: .seconds(15)))
            try await store.recordParticipant(
                ParticipantInstance(
                    topology: prefix, service: "flights", instance: "host:2:b", commands: ["trip-cli.flights.book"],
                    startedAt: now.addingTimeInterval(-60), lastSeen: now, reportInterval: .seconds(15)))
            // Another deployment's hotels service runs: it does not handle this topology's commands.
            try await store.recordParticipant(
                ParticipantInstance(
                    topology: prefix + "-other", service: "hotels", instance: "host:3:c", commands: ["trip-cli.hotels.book"],
                    startedAt: now, lastSeen: now, reportInterval: .seconds(15)))
            let saga = SagaStateMachine(definition: Self.trip).start(
                id: "trip-waits", payload: [:], context: [SagaTopology.contextKey: prefix, SagaState.definitionVersionKey: "2"], now: now
            ).0
            _ = try await store.create(saga, outbox: [])

            let shown = try await cli.json(["show", saga.id]) as? [String: Any]
            let handledBy = (shown?["nextStep"] as? [String: Any])?["handledBy"] as? [String: Any]
            #expect(handledBy?["services"] as? [String] == ["hotels"], "\(String(describing: shown))")
            #expect(handledBy?["live"] as? Int == 0 && handledBy?["silent"] as? Int == 1)
            let text = try await cli.succeed(["show", saga.id])
            print("saga show:\n\(text)")
            #expect(
                text.contains("handled by service 'hotels', but none of its 1 process(es) reported in lately (last report 10 min ago)"),
                "\(text)")

            let checked = try await cli.run(["services", "--check"])
            print("saga services --check:\n\(checked.stdout)")
            #expect(checked.status == 1, "\(checked)")
            #expect(checked.stdout.contains("4 command(s) with no live handler on topology '\(prefix)'"), "\(checked)")
            #expect(
                checked.stdout.contains(
                    "trip-cli.hotels.book: handled by hotels, all silent; used by trip v2 step 'hotel' (action)"),
                "\(checked)")
            #expect(checked.stdout.contains("trip-cli.flights.cancel: no service handles it; used by trip v2 step 'flight' (compensation)"))
            #expect(checked.stdout.contains("trip-cli.trips.confirm: no service handles it"))
            #expect(!checked.stdout.contains("trip-cli.flights.book:"), "\(checked)")
            let table = checked.stdout.split(separator: "\n").map(String.init)
            #expect(
                table.contains { $0.hasPrefix("hotels ") && $0.contains("0 live, 1 silent") && $0.contains("10 min ago") }, "\(checked)")
            #expect(table.contains { $0.hasPrefix("flights ") && $0.contains("1 live") }, "\(checked)")

            let all = try await cli.json(["services", "--all-topologies"]) as? [String: Any]
            let topologies = ((all?["services"] as? [[String: Any]]) ?? []).map { "\($0["topology"] ?? "")/\($0["service"] ?? "")" }
            #expect(topologies == ["\(prefix)/flights", "\(prefix)/hotels", "\(prefix)-other/hotels"], "\(String(describing: all))")

            // The console says the same: its Services page, a saga's next step, and /metrics
            // for the alert SagaCommandWithoutHandler.
            let console = try ProductProcess(
                "saga", ["console", "--port", "0", "--store-url", "sqlite://\(path)", "--amqp-url", amqp, "--prefix", prefix],
                environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil, "SAGA_CONSOLE_TOKEN": nil, "SAGAKIT_CONSOLE_TOKEN": nil])
            defer { console.process.terminate() }
            #expect(try await console.waitForOutput(containing: "listening on http://", timeout: .seconds(60)), "\(console.output)")
            let base = try #require(
                console.output.split(separator: " ").first { $0.hasPrefix("http://127.0.0.1:") }.map { String($0) }, "\(console.output)")
            let page = try await OperatorParallelGroupTests.get(base + "services")
            #expect(page.contains("<span class=\"svc dead\">0 live, 1 silent</span>"), "\(page)")
            #expect(page.contains("<span class=\"svc ok\">1 live</span>"), "\(page)")
            #expect(
                page.contains("Commands no live process handles") && page.contains("trip-cli.trips.confirm</span>: no service handles it"))
            let sagaPage = try await OperatorParallelGroupTests.get(base + "sagas/\(saga.id)")
            #expect(
                sagaPage.contains("handled by service &#39;hotels&#39;, but none of its 1 process(es) reported in lately"), "\(sagaPage)")
            let metrics = try await OperatorParallelGroupTests.get(base + "metrics")
            #expect(metrics.contains("sagakit_store_participants{service=\"hotels\",state=\"silent\"} 1"), "\(metrics)")
            #expect(metrics.contains("sagakit_store_participants{service=\"flights\",state=\"live\"} 1"), "\(metrics)")
            #expect(metrics.contains("sagakit_store_command_live_handlers{command=\"trip-cli.hotels.book\"} 0"), "\(metrics)")
            #expect(metrics.contains("sagakit_store_command_live_handlers{command=\"trip-cli.flights.book\"} 1"), "\(metrics)")
            // Its own probes: live, and ready while its store answers (`get` expects a 200).
            #expect(try await OperatorParallelGroupTests.get(base + "health/live") == "live\n")
            let ready = try await OperatorParallelGroupTests.get(base + "health/ready")
            #expect(ready.contains("\"status\":\"ready\"") && ready.contains("\"name\":\"saga store (sqlite://"), "\(ready)")
            #expect(ready.contains("\"detail\":\"answers\""), "\(ready)")
        }
    }

    @Test func reapSaysWhichStalledSagasItLeavesAloneAndWhy() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let prefix = "cli-\(UUID().uuidString.prefix(8).lowercased())"
        let topology = SagaTopology(prefix: prefix, delayLevels: [1])
        let otherTopology = SagaTopology(prefix: prefix + "-other", delayLevels: [1])
        let cli = SagaCLI(store: "sqlite://\(path)", amqp: amqp, prefix: prefix)
        let bus = try await RabbitMQBus.connect(url: amqp)
        try await SQLiteSagaStore(path: path).withRunning { store in
            let definitions = try SagaDefinitionRegistry([Self.trip])
            let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
            let other = SagaManager(definitions: definitions, bus: bus, store: store, topology: otherTopology, logger: quietTestLogger)
            for (manager, topology) in [(manager, topology), (other, otherTopology)] {
                try await manager.declareTopology()
                // Nobody consumes: the sagas stall at their first step.
                try await bus.declare(topology.topology(forService: "hotels", commands: ["trip-cli.hotels.book"]))
            }
            let leased = try await manager.start("trip", payload: [:], id: "trip-leased")
            try await Task.sleep(for: .milliseconds(50))
            let stalled = try await manager.start("trip", payload: ["card": "4111-0000-SECRET"], id: "trip-stalled")
            let elsewhere = try await other.start("trip", payload: [:], id: "trip-elsewhere")
            var ghost = try await store.load(stalled)
            ghost.id = "ghost-1"
            ghost.name = "ghost"
            _ = try await store.create(ghost, outbox: [])
            try await Task.sleep(for: .milliseconds(1500))
            let claimed = try await store.claimStalled(
                updatedBefore: Date().addingTimeInterval(-1), now: Date(), owner: "another-reaper", lease: .seconds(300), limit: 1)
            #expect(claimed.map(\.id) == [leased])

            // Its own topology's stalled sagas; every topology's with --all-topologies.
            #expect(Set(try await cli.listIDs(["--stalled", "1"])) == [leased, stalled, "ghost-1"])
            #expect(Set(try await cli.listIDs(["--stalled", "1", "--all-topologies"])) == [leased, stalled, elsewhere, "ghost-1"])
            let reaped = try await cli.succeed(["reap", "--stalled-seconds", "1"])
            let reapLines = reaped.split(separator: "\n").map { String($0) }
            print("saga reap:\n\(reaped)")
            #expect(reapLines.contains { $0.hasPrefix(stalled) && $0.contains("running") && $0.contains("hotel (action #1)") }, "\(reaped)")
            #expect(reaped.contains("3 stalled saga(s) left alone:"), "\(reaped)")
            func line(_ id: String) -> String { reapLines.first { $0.hasPrefix(id + " ") } ?? "" }
            #expect(line(elsewhere).contains("started on topology prefix '\(prefix)-other'"), "\(reaped)")
            #expect(line("ghost-1").contains("neither this tool nor the store knows the definition 'ghost'"), "\(reaped)")
            #expect(line(leased).contains("another reaper holds its lease"), "\(reaped)")
            #expect(try await store.load(stalled).reapAttempts == 1)
            #expect(try await store.load(leased).reapAttempts == 0)

            // Again, as JSON, once the re-sent saga is stalled again.
            try await Task.sleep(for: .milliseconds(1200))
            // The states it prints are masked like every other command's (SAGAKIT_REDACT).
            let json =
                try await cli.json(["reap", "--stalled-seconds", "1"], environment: ["SAGAKIT_REDACT": "card"]) as? [String: Any]
            #expect(!"\(String(describing: json))".contains("SECRET"), "\(String(describing: json))")
            #expect(json?["stalledSeconds"] as? Int == 1)
            let changed = json?["changed"] as? [[String: Any]] ?? []
            #expect(changed.map { $0["id"] as? String } == [stalled], "\(String(describing: json))")
            #expect(changed.first?["reapAttempts"] as? Int == 2)
            #expect((changed.first?["payload"] as? [String: Any])?["card"] as? String == "••••")
            let leftAlone = json?["leftAlone"] as? [[String: Any]] ?? []
            let codes = Dictionary(leftAlone.map { ($0["id"] as? String ?? "", $0["code"] as? String ?? "") }, uniquingKeysWith: { $1 })
            #expect(codes == [elsewhere: "other-topology", "ghost-1": "unknown-definition", leased: "lease-held"], "\(leftAlone)")
            #expect(leftAlone.allSatisfy { ($0["reason"] as? String)?.isEmpty == false })
        }
        await bus.shutdown()
    }

    // MARK: - Helpers

    /// Runs the three services on `bus` and `store` (no reaper: the tests reap by hand) while
    /// `body` runs with a manager of `trip` version 2.
    static func withServices(
        _ handlers: [String: SagaHandlerRegistry], bus: RabbitMQBus, store: any SagaStore, topology: SagaTopology,
        body: @Sendable (SagaManager) async throws -> Void
    ) async throws {
        let definitions = try SagaDefinitionRegistry([trip])
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        for (service, registry) in handlers {
            try await bus.declare(topology.topology(forService: service, commands: registry.commands))
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in handlers {
                var configuration = ParticipantConfiguration(
                    service: service, topology: topology, outboxPollInterval: .milliseconds(200),
                    outboxGracePeriod: .milliseconds(500), reaper: nil)
                // Named, as `show` names the process that recorded each step.
                configuration.instanceName = "\(service)-1"
                let participant = SagaParticipant(
                    configuration: configuration, definitions: definitions, handlers: registry, bus: bus, store: store,
                    logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            do {
                try await body(manager)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    }

    static func waitUntil(_ what: String, _ condition: @Sendable () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(60))
        while try await !condition() {
            if ContinuousClock.now > deadline { throw TestFailure("\(what): not within 60 s") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// The words of a timeline line.
    static func columns(_ line: String) -> [String] {
        line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    }
}

/// Runs the `saga` executable built next to the test binary against one store and broker.
struct SagaCLI {
    var store: String
    var amqp: String
    var prefix: String
    /// The executable run (the `saga` built next to the test binary, unless named).
    var executable: URL = SagaCLI.executable

    /// The `saga` executable built next to the test binary.
    static var executable: URL {
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = testBinary.deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
        return directory.appendingPathComponent("saga")
    }

    struct Result: CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String
        var description: String { "exit \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }
    }

    /// Runs `saga <arguments> --store-url … --amqp-url … --prefix …`.
    func run(_ arguments: [String], environment extra: [String: String] = [:], input: String? = nil) async throws -> Result {
        var environment: [String: String?] = [:]
        for key in ["SAGAKIT_STORE_URL", "SAGAKIT_PREFIX", "SAGA_OPERATOR", "SAGAKIT_OPERATOR", "SAGAKIT_LOG_LEVEL", "SAGAKIT_REDACT"] {
            environment[key] = .some(nil)
        }
        for (key, value) in extra { environment[key] = value }
        let run = await CommandRun.run(
            executable.path, arguments + ["--store-url", store, "--amqp-url", amqp, "--prefix", prefix],
            environment: Self.merged(environment), input: input)
        return Result(status: run.status, stdout: run.stdout, stderr: run.stderr)
    }

    /// The test's environment with `changes` applied (a `nil` value removes the variable).
    private static func merged(_ changes: [String: String?]) -> [String: String] {
        var merged = ProcessInfo.processInfo.environment
        for (key, value) in changes { merged[key] = value }
        return merged
    }

    /// Standard output of a run that must succeed.
    func succeed(_ arguments: [String], environment: [String: String] = [:]) async throws -> String {
        let result = try await run(arguments, environment: environment)
        guard result.status == 0 else { throw TestFailure("saga \(arguments.joined(separator: " ")) failed: \(result)") }
        return result.stdout
    }

    /// The one JSON document a `--json` run prints on standard output.
    func json(_ arguments: [String], environment: [String: String] = [:]) async throws -> Any {
        let output = try await succeed(arguments + ["--json"], environment: environment)
        do {
            return try JSONSerialization.jsonObject(with: Data(output.utf8))
        } catch {
            throw TestFailure("saga \(arguments.joined(separator: " ")) --json printed no single JSON document: \(error)\n\(output)")
        }
    }

    /// The ids `saga list <filters> --json` prints, in order.
    func listIDs(_ filters: [String]) async throws -> [String] {
        guard let sagas = try await json(["list"] + filters) as? [[String: Any]] else {
            throw TestFailure("saga list \(filters.joined(separator: " ")) --json did not print an array")
        }
        return sagas.compactMap { $0["id"] as? String }
    }
}
