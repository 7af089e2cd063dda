import Foundation
import Logging
import Metrics
import SagaCore

/// What a connection is used for (see ``RabbitMQBus`` for why publishing and consuming are separated).
enum ConnectionRole: String, Sendable {
    case publisher
    case consumer
}

/// What a connection thread tells the bus while it starts.
enum StartupReport: Sendable {
    /// The thread's first connection is open.
    case connected
    /// An attempt failed; the thread tries again after a backoff.
    case attemptFailed(BusError)
    /// Fail-fast: every endpoint failed once; the thread ends.
    case gaveUp(BusError)
}

/// Starts connection threads.
enum ConnectionThread {
    /// Starts a thread that connects (reporting progress through `report`) and then serves `mailbox`.
    static func start(
        role: ConnectionRole, configuration: RabbitMQConfiguration, registry: TopologyRegistry, mailbox: Mailbox,
        failFast: Bool, report: @escaping @Sendable (StartupReport) -> Void
    ) {
        let name = "amqp-\(role.rawValue)"
        let thread = Thread {
            ThreadName.setCurrent(name)
            let worker = ConnectionWorker(
                role: role, configuration: configuration, mailbox: mailbox, registry: registry, failFast: failFast,
                report: report)
            worker.run()
        }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Owns one AMQP connection and runs on its own dedicated OS thread, never on Swift's cooperative pool.
///
/// The loop: take the mailbox's commands; send queued publishes while fewer than `confirmWindow` confirms are
/// outstanding; read whatever frames the socket has (deliveries, confirms, returns, closes) without blocking;
/// then sleep in poll() on the socket and the mailbox's eventfd, at most a second (heartbeats are serviced
/// inside library calls, so the thread calls into the library at least every heartbeat/2).
///
/// Channels: 1 carries declarations (a failed declaration closes only it), 2 is the confirm-mode publish channel,
/// 3 and up carry one consumer each (a per-consumer prefetch is a per-channel `basic.qos`).
///
/// The decisions (connection states, backoff and endpoint rotation, parking, consumer restarts, shutdown deadline)
/// are taken by a ``ConnectionStateMachine``; this class does the I/O and feeds it events.
///
/// Not `Sendable`: created on its thread and never leaves it.
final class ConnectionWorker {
    private static let controlChannel: UInt16 = 1
    private static let publishChannel: UInt16 = 2
    private static let firstConsumerChannel: UInt16 = 3

    private struct ActiveConsumer {
        var registration: ConsumerRegistration
        /// `nil` while disconnected.
        var channel: UInt16?
        var epoch: UInt64 = 0
        var consumerTag = ""
        /// Deliveries handed to the stream and not yet settled.
        var unsettled = 0
        /// Acks waiting to be sent, coalesced.
        var acks = AckCoalescer()
        /// Cancelled by shutdown: the stream is finished, settlements are still accepted.
        var stopping = false
        /// Cancelled by its stream's end while deliveries were unsettled: the channel is closed
        /// once the last one is settled (see ``ConnectionWorker/cancelConsumer(_:)``).
        var closeWhenSettled = false
    }

    private struct PartialContent {
        enum Kind {
            case delivery(tag: UInt64, redelivered: Bool)
            case returned(code: UInt16, text: String)
        }
        var kind: Kind
        var exchange: String
        var routingKey: String
        var bodySize: UInt64 = 0
        var properties = ContentProperties()
        var body: [UInt8] = []
    }

    private let role: ConnectionRole
    private let configuration: RabbitMQConfiguration
    private let mailbox: Mailbox
    private let registry: TopologyRegistry
    private var logger: Logger
    /// `saga_broker_connected{connection}`: 1 while connected, 0 otherwise.
    private let connectedGauge: Gauge
    /// This connection's entry in the health registry (readiness probes).
    private let health: SagaHealth.Component
    private let clock = ContinuousClock()
    private var place: String
    private var machine: ConnectionStateMachine<Command>
    private let report: @Sendable (StartupReport) -> Void

    private var connection: AMQPConnection?
    private var controlChannelOpen = false
    private var publishChannelOpen = false
    private var nextChannel = firstConsumerChannel
    private var freeChannels: [UInt16] = []
    private var epochCounter: UInt64 = 0
    private var blocked = false
    /// Why the recorded topology must be declared again before the next publishes go out (the
    /// broker lost part of it while connected: an operator deleted an exchange or a queue).
    private var pendingRepair: String?
    /// When the recorded topology was last declared again for that reason.
    private var lastTopologyRepair: ContinuousClock.Instant?

    private var queued = FIFO<PublishRequest>()
    private var tracker = ConfirmTracker<PublishRequest>()

    private var consumers: [UInt64: ActiveConsumer] = [:]
    /// Consumers withdrawn before they started (``cancelConsumer(_:)``); their parked starts are skipped.
    private var withdrawnConsumers: Set<UInt64> = []
    private var channelConsumers: [UInt16: UInt64] = [:]
    private var partials: [UInt16: PartialContent] = [:]
    /// Channels with acks waiting for ``flushAcks()`` (at the end of each mailbox drain).
    private var channelsWithAcks: [UInt16] = []

    private var shutdownWaiters: [CheckedContinuation<Void, Never>] = []

    private var lastHeard: ContinuousClock.Instant
    private var lastServiced: ContinuousClock.Instant

    init(
        role: ConnectionRole, configuration: RabbitMQConfiguration, mailbox: Mailbox, registry: TopologyRegistry,
        failFast: Bool, report: @escaping @Sendable (StartupReport) -> Void
    ) {
        self.role = role
        self.configuration = configuration
        self.mailbox = mailbox
        self.registry = registry
        self.report = report
        self.place = configuration.endpoints[0].description
        self.machine = ConnectionStateMachine(
            policy: .init(
                endpointCount: configuration.endpoints.count,
                reconnectDelayMin: configuration.reconnectDelayMin,
                reconnectDelayMax: configuration.reconnectDelayMax,
                publishRecoveryTimeout: configuration.publishRecoveryTimeout,
                shutdownTimeout: configuration.shutdownTimeout,
                failFastOnStartup: failFast))
        // 1 while this connection is up (`saga_broker_connected{connection}`): a process that runs
        // but cannot reach the broker shows it on its metrics endpoint.
        connectedGauge = Gauge(label: "saga_broker_connected", dimensions: [("connection", role.rawValue)])
        connectedGauge.record(0)
        health = configuration.health.register(
            "broker connection (\(role.rawValue))", detail: "not connected yet (\(configuration.endpoints[0]))")
        var logger = configuration.logger
        logger[metadataKey: "amqp.connection"] = "\(role.rawValue)"
        logger[metadataKey: "amqp.broker"] = "\(place)"
        self.logger = logger
        lastHeard = clock.now
        lastServiced = clock.now
    }

    // MARK: The loop

    /// Connects, serves, reconnects, as the state machine says, until it says to finish.
    func run() {
        var next = machine.start()
        while true {
            switch next {
            case .finish:
                finish()
                return
            case .wait(let until):
                waitServingMailbox(until: until)
                next = machine.tick(now: clock.now)
            case .connect(let endpoint):
                next = connect(endpoint: endpoint)
            }
        }
    }

    /// Serves an open connection until it is lost (then returns the state machine's next step) or the shutdown is
    /// complete.
    private func serve() -> ConnectionStateMachine<Command>.ConnectAction {
        var socketReadable = false
        while true {
            guard let current = connection else { return machine.tick(now: clock.now) }
            for command in mailbox.takeAll() { execute(command) }
            guard connection === current else { continue }
            do {
                try sendAcksAndPublishes(current)
                let now = clock.now
                if heartbeatInterval > .zero, now - lastServiced >= heartbeatInterval / 2 {
                    socketReadable = true
                    lastServiced = now
                }
                if socketReadable || current.hasBufferedInput { try readFrames(current) }
                socketReadable = false
                guard connection === current else { continue }
                if machine.isShuttingDown, shutdownFinished() { return .finish }
                if heartbeatInterval > .zero, now - lastHeard > heartbeatInterval * 2 {
                    throw AMQPFailure.connectionLost(reason: "no data and no heartbeat from the broker", code: nil)
                }
            } catch let failure as AMQPFailure {
                connectionLost(failure)
                continue
            } catch {
                connectionLost(.connectionLost(reason: "\(error)", code: nil))
                continue
            }
            let busy = current.hasBufferedInput || (!queued.isEmpty && tracker.count < window && !blocked)
            if busy || !mailbox.prepareToSleep() {
                // More work is waiting: only look whether the socket has something (confirms must be read even
                // while callers keep the mailbox full, or a full window would never open again).
                let (readable, woken) = current.wait(wake: mailbox.wake, timeoutMilliseconds: 0)
                if woken { mailbox.wake.drain() }
                socketReadable = readable
            } else {
                let timeout: Int32 = machine.isShuttingDown ? 20 : idleTimeoutMilliseconds
                let (readable, woken) = current.wait(wake: mailbox.wake, timeoutMilliseconds: timeout)
                mailbox.awake()
                if woken { mailbox.wake.drain() }
                socketReadable = readable
            }
            if socketReadable { lastHeard = clock.now }
        }
    }

    private var window: Int { max(1, configuration.confirmWindow) }
    private var heartbeatInterval: Duration { configuration.heartbeat }
    private var idleTimeoutMilliseconds: Int32 {
        guard heartbeatInterval > .zero else { return 1000 }
        return Int32(min(1000, max(10, (heartbeatInterval / 2).milliseconds)))
    }

    // MARK: Connecting

    /// Tries endpoint number `endpoint` once; when it opens, re-declares the recorded topology, resumes consumers,
    /// runs parked commands and serves the connection.
    private func connect(endpoint: Int) -> ConnectionStateMachine<Command>.ConnectAction {
        let parameters = configuration.connectParameters(role: role.rawValue, endpoint: endpoint)
        place = "\(RabbitMQConfiguration.Endpoint(host: parameters.host, port: parameters.port))"
        logger[metadataKey: "amqp.broker"] = "\(place)"
        if let tls = parameters.tls, !tls.verifyPeer || !tls.verifyHostname {
            logger.warning(
                "TLS certificate verification is turned off: the broker's identity is not checked",
                metadata: ["amqp.tls.verify_peer": "\(tls.verifyPeer)", "amqp.tls.verify_hostname": "\(tls.verifyHostname)"])
        }
        let opened: AMQPConnection
        do {
            opened = try AMQPConnection.open(parameters)
        } catch {
            return connectFailed(error)
        }
        connection = opened
        controlChannelOpen = false
        publishChannelOpen = false
        blocked = false
        nextChannel = Self.firstConsumerChannel
        freeChannels.removeAll()
        lastHeard = clock.now
        lastServiced = clock.now

        let action = machine.connectSucceeded(now: clock.now)
        connectedGauge.record(1)
        health.ready("connected to \(place)")
        if action.isFirstConnection {
            logger.debug("connected", metadata: ["amqp.failed_attempts": "\(action.failedAttempts)"])
            if action.failedAttempts > 0 {
                logger.info("connected to the broker", metadata: ["amqp.failed_attempts": "\(action.failedAttempts)"])
            }
            report(.connected)
        } else {
            logger.info("reconnected", metadata: ["amqp.attempts": "\(action.failedAttempts + 1)"])
        }
        if action.redeclareTopology { redeclareTopology() }
        for id in action.restartConsumers where connection === opened {
            guard let consumer = consumers[id], !consumer.stopping else { continue }
            startConsumer(consumer.registration, reply: nil)
        }
        for command in action.runParked { execute(command) }
        return serve()
    }

    /// Tells the state machine an attempt failed, logs it, and returns the next step.
    private func connectFailed(_ error: BusError) -> ConnectionStateMachine<Command>.ConnectAction {
        // Settings no retry mends: the broker refused the login, the vhost or the access; the
        // broker's certificate does not verify against the CA given, or does not name the host;
        // a CA or client certificate file that cannot be loaded.
        let refused = [BusError.Code.authenticationFailed, .vhostNotFound, .accessRefused, .tlsVerificationFailed, .invalidArgument]
            .contains(error.code)
        health.notReady("\(error)")
        switch machine.connectFailed(now: clock.now, jitter: Double.random(in: 0.8...1.0), refused: refused) {
        case .connect(let next):
            logger.warning(
                "connecting failed; trying the next broker",
                metadata: ["amqp.error": "\(error)", "amqp.next": "\(configuration.endpoints[next])"])
            report(.attemptFailed(error))
            return .connect(endpoint: next)
        case .backOff(let until, let failures, let logAsWarning):
            // The first failure and then every tenth are warnings; the rest would only repeat them.
            let delay = until - clock.now
            logger.log(
                level: logAsWarning ? .warning : .debug,
                "cannot connect to the broker; trying again in \(max(0, delay.milliseconds)) ms",
                metadata: ["amqp.error": "\(error)", "amqp.attempt": "\(failures)"])
            report(.attemptFailed(error))
            return .wait(until: until)
        case .failStartup:
            if refused {
                logger.error(
                    "this service's connection to the broker cannot succeed with these settings; not trying again",
                    metadata: ["amqp.error": "\(error)"])
            }
            report(.gaveUp(error))
            return .finish
        case .finish:
            return .finish
        }
    }

    private func redeclareTopology() {
        let topology = registry.current
        guard let current = connection,
            !(topology.exchanges.isEmpty && topology.queues.isEmpty && topology.bindings.isEmpty)
        else { return }
        var failures = 0
        for item in topology.operations {
            do throws(AMQPFailure) {
                try ensureControlChannel(current)
                try item.run(current, Self.controlChannel)
            } catch .channelClosed(_, let code, let text) {
                controlChannelOpen = false
                failures += 1
                logger.warning(
                    "declaring the recorded topology again failed",
                    metadata: ["amqp.operation": "\(item.description)", "amqp.reply": "\(code) \(text)"])
            } catch {
                connectionLost(error)
                return
            }
        }
        logger.debug("topology re-declared", metadata: ["amqp.failures": "\(failures)"])
    }

    /// Waits (still taking commands, failing publishes that waited too long) until `until` or a shutdown.
    private func waitServingMailbox(until: ContinuousClock.Instant) {
        while clock.now < until {
            for command in mailbox.takeAll() { execute(command) }
            if machine.isShuttingDown { return }
            failExpiredPublishes()
            if mailbox.prepareToSleep() {
                let remaining = max(.milliseconds(1), until - clock.now)
                mailbox.wake.wait(timeoutMilliseconds: Int32(min(remaining.milliseconds + 1, 1000)))
                mailbox.awake()
            }
        }
    }

    /// Tears the connection down after a failure and prepares for a reconnect: unconfirmed publishes go back to
    /// the front of the queue (they are sent again), consumers will be restarted, and settlements of deliveries
    /// from this connection become no-ops (the broker requeues those messages).
    private func connectionLost(_ failure: AMQPFailure) {
        guard let lost = connection else { return }
        lost.destroy()
        connection = nil
        connectedGauge.record(0)
        let why =
            switch failure {
            case .connectionLost(let reason, _): reason
            case .channelClosed(_, let code, let text): "channel closed by the broker (\(code) \(text))"
            }
        health.notReady("connection to \(place) lost, reconnecting: \(why)")
        _ = machine.connectionLost(now: clock.now, jitter: Double.random(in: 0.8...1.0))
        switch failure {
        case .connectionLost(let reason, let code):
            logger.warning(
                "connection lost; reconnecting",
                metadata: ["amqp.reason": "\(reason)", "amqp.reply_code": "\(code.map(String.init) ?? "none")"])
        case .channelClosed(let channel, let code, let text):
            logger.warning(
                "unexpected channel close; reconnecting",
                metadata: ["amqp.channel": "\(channel)", "amqp.reply": "\(code) \(text)"])
        }
        partials.removeAll()
        channelsWithAcks.removeAll()
        requeueOutstandingPublishes()
        channelConsumers.removeAll()
        for (id, consumer) in consumers {
            // Its deliveries are the broker's again.
            consumer.registration.liveEpoch.set(0)
            if consumer.stopping {
                consumers[id] = nil
            } else {
                consumers[id]?.channel = nil
                consumers[id]?.unsettled = 0
            }
        }
    }

    private func requeueOutstandingPublishes() {
        let (resend, unroutable) = ConnectionStateMachine<Command>.afterLoss(tracker.removeAll())
        for request in unroutable { request.continuation.resume(throwing: self.unroutable(request.message)) }
        if !resend.isEmpty {
            logger.info("re-sending unconfirmed publishes after reconnect", metadata: ["amqp.count": "\(resend.count)"])
        }
        queued.prepend(contentsOf: resend)
    }

    private func failExpiredPublishes() {
        let machine = self.machine
        let now = clock.now
        let expired = queued.removeAll { machine.publishExpired(enqueued: $0.enqueued, now: now) }
        for request in expired {
            request.continuation.resume(throwing: connectionLostError(request.message))
        }
    }

    // MARK: Commands

    private func execute(_ command: Command) {
        switch command {
        case .publish(let request):
            queued.append(request)
        case .declare(let topology, let reply):
            runControl(command, reply: reply, operations: topology.operations) { registry.record(topology) }
        case .deleteQueue(let name, let reply):
            runControl(command, reply: reply, operations: [.deleteQueue(name)]) { registry.forgetQueue(name) }
        case .deleteExchange(let name, let reply):
            runControl(command, reply: reply, operations: [.deleteExchange(name)]) { registry.forgetExchange(name) }
        case .consume(let registration, let reply):
            switch machine.disposition(of: command, isConsume: true) {
            case .run where connection != nil: startConsumer(registration, reply: reply)
            case .run: machine.repark(command)
            case .park: break
            case .refuse:
                registration.continuation.finish()
                reply.resume(throwing: closedError())
            }
        case .cancelConsumer(let id):
            cancelConsumer(id)
        case .settle(let channel, let epoch, let tag, let settlement):
            settle(channel: channel, epoch: epoch, tag: tag, settlement)
        case .shutdown(let reply):
            if let reply { shutdownWaiters.append(reply) }
            if case .drain(_, let cancel) = machine.shutdownRequested(now: clock.now) { beginShutdown(cancel) }
        }
    }

    /// Runs declarations on the control channel; a channel error fails `reply` with a `BusError` naming the
    /// queue/exchange/argument, a connection loss parks the command until the connection is back.
    private func runControl(
        _ command: Command, reply: ControlReply, operations: [TopologyOperation],
        onSuccess: () -> Void
    ) {
        switch machine.disposition(of: command, isConsume: false) {
        case .run: break
        case .park: return
        case .refuse:
            reply.resume(throwing: closedError())
            return
        }
        guard let current = connection else {
            machine.repark(command)
            return
        }
        for operation in operations {
            do throws(AMQPFailure) {
                try ensureControlChannel(current)
                try operation.run(current, Self.controlChannel)
            } catch .channelClosed(_, let code, let text) {
                controlChannelOpen = false
                reply.resume(
                    throwing: BrokerErrorText.channelError(code: code, text: text, operation: operation.description))
                return
            } catch {
                machine.repark(command)
                connectionLost(error)
                return
            }
        }
        onSuccess()
        reply.resume()
    }

    private func ensureControlChannel(_ current: AMQPConnection) throws(AMQPFailure) {
        guard !controlChannelOpen else { return }
        try current.openChannel(Self.controlChannel)
        controlChannelOpen = true
    }

    // MARK: Publishing

    /// Sends the acks collected while draining the mailbox and the publishes the confirm window
    /// lets out; when that may be more than one write (several acks may still go out as one
    /// `multiple` ack), batched into full TCP segments (``AMQPConnection/batchingWrites(_:)``).
    private func sendAcksAndPublishes(_ current: AMQPConnection) throws(AMQPFailure) {
        if let reason = pendingRepair {
            pendingRepair = nil
            logger.warning(
                "the broker lost part of this service's topology while connected (\(reason)); declaring it again and sending the publishes that needed it once more"
            )
            redeclareTopology()
        }
        let publishable = blocked ? 0 : min(queued.count, max(0, window - tracker.count))
        if publishable > 0, !publishChannelOpen {
            // channel.open and confirm.select wait for their replies: never batched.
            try current.openChannel(Self.publishChannel)
            try current.confirmSelect(Self.publishChannel)
            publishChannelOpen = true
        }
        if channelsWithAcks.count + publishable > 1 {
            try current.batchingWrites { () throws(AMQPFailure) in
                try flushAcks(current)
                try pumpPublishes(current)
            }
        } else {
            try flushAcks(current)
            try pumpPublishes(current)
        }
    }

    private func pumpPublishes(_ current: AMQPConnection) throws(AMQPFailure) {
        guard !queued.isEmpty, !blocked, tracker.count < window, publishChannelOpen else { return }
        while tracker.count < window, let request = queued.popFirst() {
            tracker.add(request)
            try current.publish(Self.publishChannel, request.message)
        }
    }

    private func confirmed(tag: UInt64, multiple: Bool, ack: Bool) {
        tracker.confirm(tag: tag, multiple: multiple) { entry in
            let message = entry.item.message
            if !ack {
                entry.item.continuation.resume(
                    throwing: BusError(
                        .nacked,
                        "The broker refused the message to exchange '\(message.exchange)' with routing key "
                            + "'\(message.routingKey)' (basic.nack)",
                        recoverySuggestion: "the broker could not store it (queue limits, disk or memory alarm); "
                            + "publish it again later",
                        isRetryable: true))
            } else if entry.returned != nil {
                var request = entry.item
                if registry.current.declaresRoute(exchange: message.exchange, routingKey: message.routingKey),
                    resendAfterRepair(
                        &request,
                        because: "no queue bound to exchange '\(message.exchange)' for routing key '\(message.routingKey)'")
                {
                    queued.prepend(contentsOf: [request])
                } else {
                    entry.item.continuation.resume(throwing: unroutable(message))
                }
            } else {
                entry.item.continuation.resume()
            }
        }
    }

    /// Whether a publish that failed because the broker lost part of the topology this bus
    /// declared (an exchange, a queue or a binding deleted while the service runs) is sent again:
    /// once per publish, after the recorded topology is declared again (at most every 5 s, before
    /// the next publishes go out).
    private func resendAfterRepair(_ request: inout PublishRequest, because reason: String) -> Bool {
        guard !request.resentAfterRepair else { return false }
        let now = clock.now
        if pendingRepair == nil, lastTopologyRepair.map({ now - $0 >= .seconds(5) }) ?? true {
            pendingRepair = reason
            lastTopologyRepair = now
        }
        request.resentAfterRepair = true
        return true
    }

    private func returned(_ content: PartialContent, code: UInt16, text: String) {
        let info = ConfirmTracker<PublishRequest>.ReturnedInfo(replyCode: code, replyText: text)
        let matched = tracker.markReturned(info) { request in
            request.message.exchange == content.exchange && request.message.routingKey == content.routingKey
                && request.message.messageId == content.properties.messageId && request.message.body == content.body
        }
        if !matched {
            logger.debug("a returned message matched no outstanding publish", metadata: ["amqp.reply": "\(text)"])
        }
    }

    /// The broker closed the publish channel (for example: publishing to an exchange that does not exist).
    /// The publishes it names fail; the others are sent again on a new channel.
    private func publishChannelClosed(code: UInt16, text: String) {
        publishChannelOpen = false
        let outstanding = tracker.removeAll()
        let missingExchange = code == 404 ? BrokerErrorText.quoted(in: text, after: "no exchange '") : nil
        var resend: [PublishRequest] = []
        var failedOne = false
        // An exchange this bus declared: the broker lost it (an operator deleted it); declare
        // the topology again and send its publishes once more.
        let recorded = missingExchange.map { name in registry.current.exchanges.contains { $0.name == name } } ?? false
        let reason = "exchange '\(missingExchange ?? "")' does not exist"
        for entry in outstanding {
            let message = entry.item.message
            if let missingExchange, message.exchange == missingExchange {
                var request = entry.item
                if recorded, resendAfterRepair(&request, because: reason) {
                    resend.append(request)
                } else {
                    entry.item.continuation.resume(
                        throwing: BrokerErrorText.channelError(
                            code: code, text: text, operation: "publishing to exchange '\(message.exchange)'"))
                }
            } else if entry.returned != nil {
                entry.item.continuation.resume(throwing: unroutable(message))
            } else if missingExchange == nil, !failedOne {
                // The broker does not say which publish it refused; the oldest unconfirmed one is the likeliest.
                failedOne = true
                entry.item.continuation.resume(
                    throwing: BrokerErrorText.channelError(
                        code: code, text: text, operation: "publishing to exchange '\(message.exchange)'"))
            } else {
                resend.append(entry.item)
            }
        }
        if let missingExchange, !recorded {
            for request in queued.removeAll(where: { $0.message.exchange == missingExchange }) {
                request.continuation.resume(
                    throwing: BrokerErrorText.channelError(
                        code: code, text: text, operation: "publishing to exchange '\(missingExchange)'"))
            }
        }
        queued.prepend(contentsOf: resend)
    }

    private func unroutable(_ message: OutgoingMessage) -> BusError {
        let exchange = message.exchange.isEmpty ? "(default exchange)" : "'\(message.exchange)'"
        return BusError(
            .unroutable,
            "No queue is bound to exchange \(exchange) for routing key '\(message.routingKey)'; "
                + "the mandatory message was returned",
            recoverySuggestion: "declare the queue and its binding before publishing")
    }

    private func connectionLostError(_ message: OutgoingMessage) -> BusError {
        BusError(
            .connectionLost,
            "The connection to \(place) was lost and the message to exchange '\(message.exchange)' with routing "
                + "key '\(message.routingKey)' could not be confirmed",
            recoverySuggestion: "publish it again when the broker is reachable; it may have been delivered "
                + "already, so deduplicate by message id",
            isRetryable: true)
    }

    private func closedError() -> BusError {
        BusError(.closed, "The RabbitMQ bus has been shut down", recoverySuggestion: "connect a new bus")
    }

    // MARK: Consuming

    private func startConsumer(
        _ registration: ConsumerRegistration, reply: ControlReply?,
        describe: (BusError) -> BusError = { $0 }
    ) {
        guard let current = connection else { return }
        if withdrawnConsumers.remove(registration.id) != nil {
            reply?.resume(throwing: CancellationError())
            return
        }
        let channel = freeChannels.popLast() ?? nextChannel
        if channel == nextChannel { nextChannel += 1 }
        epochCounter += 1
        var consumer = consumers[registration.id] ?? ActiveConsumer(registration: registration)
        do throws(AMQPFailure) {
            try current.openChannel(channel)
            try current.qos(channel, prefetch: registration.prefetch)
            consumer.consumerTag = try current.consume(channel, queue: registration.queue)
            consumer.channel = channel
            consumer.epoch = epochCounter
            consumer.registration.liveEpoch.set(epochCounter)
            consumer.unsettled = 0
            consumer.acks = AckCoalescer()
            consumers[registration.id] = consumer
            machine.consumerRegistered(registration.id)
            channelConsumers[channel] = registration.id
            reply?.resume()
        } catch .channelClosed(_, let code, let text) {
            freeChannels.append(channel)
            let error = describe(
                BrokerErrorText.channelError(
                    code: code, text: text, operation: "consuming from queue '\(registration.queue)'"))
            consumers[registration.id] = nil
            machine.consumerRemoved(registration.id)
            if let reply {
                reply.resume(throwing: error)
            } else {
                logger.error(
                    "a consumer could not be resumed; its delivery stream ends with an error",
                    metadata: ["amqp.queue": "\(registration.queue)", "amqp.error": "\(error)"])
            }
            registration.continuation.finish(throwing: error)
        } catch {
            // Connection lost while starting: it starts again after the reconnect.
            if let reply {
                machine.repark(.consume(registration, reply))
            } else {
                consumer.channel = nil
                consumers[registration.id] = consumer
            }
            connectionLost(error)
        }
    }

    private func cancelConsumer(_ id: UInt64) {
        guard let consumer = consumers[id] else {
            // Withdrawn before it started (its caller was cancelled while the connection was down):
            // the parked start must not open a consumer nobody reads.
            withdrawnConsumers.insert(id)
            return
        }
        guard !consumer.stopping else { return }
        machine.consumerRemoved(id)
        guard let channel = consumer.channel, let current = connection else {
            consumers[id] = nil
            return
        }
        guard consumer.unsettled > 0 else {
            closeConsumerChannel(id, channel: channel, current)
            return
        }
        // Deliveries are still held (a handler runs on one): closing the channel now would requeue
        // them while they run, and another instance would run them a second time, concurrently
        // (seen on every graceful stop of a slow service). So: no new deliveries (basic.cancel),
        // let go of the stream (each delivery it still buffered is released unsettled, and its
        // settler hands it back), and close the channel once the last one is settled (`settle`).
        consumers[id]?.stopping = true
        consumers[id]?.closeWhenSettled = true
        // Holding the stream's continuation would keep its buffered deliveries alive: a finished
        // stand-in takes its place (deliveries still arriving find it finished and go back).
        let standIn = DeliveryStream.makeStream().continuation
        standIn.finish()
        consumers[id]?.registration.continuation = standIn
        do throws(AMQPFailure) {
            try current.cancel(channel, consumerTag: consumer.consumerTag)
        } catch .channelClosed {
        } catch {
            connectionLost(error)
        }
    }

    /// Closes a consumer's channel (after sending its pending acks) and forgets the consumer; the
    /// broker requeues whatever it had not settled.
    private func closeConsumerChannel(_ id: UInt64, channel: UInt16, _ current: AMQPConnection) {
        do throws(AMQPFailure) {
            try flushAcks(channel: channel, current)
            consumers[id] = nil
            channelConsumers[channel] = nil
            try current.closeChannel(channel)
            freeChannels.append(channel)
        } catch .channelClosed {
            freeChannels.append(channel)
        } catch {
            consumers[id] = nil
            connectionLost(error)
        }
    }

    private func settle(channel: UInt16, epoch: UInt64, tag: UInt64, _ settlement: Settlement) {
        guard let current = connection, let id = channelConsumers[channel], let consumer = consumers[id],
            consumer.epoch == epoch
        else { return }
        consumers[id]?.unsettled -= 1
        defer {
            // A cancelled consumer's last delivery is settled: its channel can go.
            if let drained = consumers[id], drained.closeWhenSettled, drained.unsettled <= 0, let current = connection {
                closeConsumerChannel(id, channel: channel, current)
            }
        }
        if case .ack = settlement {
            consumers[id]?.acks.ack(tag)
            channelsWithAcks.append(channel)
            return
        }
        do throws(AMQPFailure) {
            try flushAcks(channel: channel, current)
            switch settlement {
            case .ack: break
            case .nack(let requeue): try current.nack(channel, tag: tag, requeue: requeue)
            case .reject: try current.reject(channel, tag: tag)
            }
            consumers[id]?.acks.settledOtherwise(tag)
        } catch {
            connectionLost(error)
        }
    }

    /// Sends the acks collected while draining the mailbox (coalesced per channel).
    private func flushAcks(_ current: AMQPConnection) throws(AMQPFailure) {
        guard !channelsWithAcks.isEmpty else { return }
        let channels = channelsWithAcks
        channelsWithAcks.removeAll(keepingCapacity: true)
        for channel in channels { try flushAcks(channel: channel, current) }
    }

    private func flushAcks(channel: UInt16, _ current: AMQPConnection) throws(AMQPFailure) {
        guard let id = channelConsumers[channel], consumers[id]?.acks.hasPending == true,
            let (multipleUpTo, singles) = consumers[id]?.acks.flush()
        else { return }
        if let multipleUpTo { try current.ack(channel, tag: multipleUpTo, multiple: true) }
        for tag in singles { try current.ack(channel, tag: tag, multiple: false) }
    }

    private func deliver(_ content: PartialContent, channel: UInt16, tag: UInt64, redelivered: Bool)
        throws(AMQPFailure)
    {
        guard let id = channelConsumers[channel], let consumer = consumers[id] else { return }
        let settler = RabbitMQSettler(
            mailbox: mailbox, channel: channel, epoch: consumer.epoch, tag: tag, liveEpoch: consumer.registration.liveEpoch)
        let delivery = Delivery(
            exchange: content.exchange,
            routingKey: content.routingKey,
            queue: consumer.registration.queue,
            body: content.body,
            headers: content.properties.headers,
            messageId: content.properties.messageId,
            contentType: content.properties.contentType,
            type: content.properties.type,
            correlationId: content.properties.correlationId,
            contentEncoding: content.properties.contentEncoding,
            replyTo: content.properties.replyTo,
            appId: content.properties.appId,
            userId: content.properties.userId,
            priority: content.properties.priority,
            timestamp: content.properties.timestamp,
            expiration: content.properties.expiration,
            persistent: content.properties.persistent,
            redelivered: redelivered,
            settler: settler
        )
        if case .terminated = consumer.registration.continuation.yield(delivery) {
            // Nobody reads this stream any more: hand the message back at once.
            settler.markSettled()
            guard let current = connection else { return }
            try flushAcks(channel: channel, current)
            try current.nack(channel, tag: tag, requeue: true)
            consumers[id]?.acks.settledOtherwise(tag)
        } else {
            consumers[id]?.unsettled += 1
        }
    }

    private func consumerChannelClosed(_ channel: UInt16, code: UInt16, text: String) {
        guard let id = channelConsumers.removeValue(forKey: channel), let consumer = consumers[id] else { return }
        freeChannels.append(channel)
        logger.warning(
            "the broker closed a consumer's channel; restarting the consumer",
            metadata: ["amqp.queue": "\(consumer.registration.queue)", "amqp.reply": "\(code) \(text)"])
        consumers[id]?.channel = nil
        if consumer.stopping {
            consumers[id] = nil
            machine.consumerRemoved(id)
        } else {
            startConsumer(consumer.registration, reply: nil)
        }
    }

    /// The broker cancelled a consumer (`basic.cancel`, sent because the client announced
    /// `consumer_cancel_notify`): its queue was deleted, or the broker could no longer serve it. Declares the queue
    /// again from the recorded topology (with its bindings) and consumes again on a new channel; when that fails, the
    /// delivery stream ends with the error. Never silent.
    private func brokerCancelled(_ channel: UInt16) {
        guard let id = channelConsumers.removeValue(forKey: channel), let consumer = consumers[id] else { return }
        let queue = consumer.registration.queue
        consumer.registration.liveEpoch.set(0)
        consumers[id]?.channel = nil
        partials[channel] = nil
        if let current = connection {
            do throws(AMQPFailure) {
                // Unsettled deliveries of the cancelled consumer die with this channel; the new epoch makes
                // settling them a no-op.
                try current.closeChannel(channel)
            } catch .channelClosed {
            } catch {
                freeChannels.append(channel)
                connectionLost(error)
                return
            }
        }
        freeChannels.append(channel)
        if consumer.stopping || registry.wasDeleted(queue) {
            // Shutting down, or this bus deleted the queue itself: the stream ends normally.
            if !consumer.stopping {
                logger.info("the queue was deleted through this bus; its consumer ends", metadata: ["amqp.queue": "\(queue)"])
                consumer.registration.continuation.finish()
            }
            consumers[id] = nil
            machine.consumerRemoved(id)
            return
        }
        let redeclare = registry.current.operations(forQueue: queue)
        let what = redeclare.isEmpty ? "consuming again" : "declaring the queue again and consuming again"
        logger.warning(
            "the broker cancelled the consumer (queue deleted?); \(what)",
            metadata: ["amqp.queue": "\(queue)"])
        guard let current = connection else { return }
        for operation in redeclare {
            do throws(AMQPFailure) {
                try ensureControlChannel(current)
                try operation.run(current, Self.controlChannel)
            } catch .channelClosed(_, let code, let text) {
                controlChannelOpen = false
                failCancelledConsumer(
                    id,
                    BrokerErrorText.channelError(
                        code: code, text: text,
                        operation: "re-declaring after the broker cancelled the consumer of queue '\(queue)' "
                            + "(\(operation.description))"))
                return
            } catch {
                connectionLost(error)
                return
            }
        }
        startConsumer(consumer.registration, reply: nil) { error in
            BusError(
                error.code,
                "The broker cancelled the consumer of queue '\(queue)' (deleted?) and consuming again failed: "
                    + error.message,
                recoverySuggestion: redeclare.isEmpty
                    ? "declare the queue through this bus (declare(_:)) so that it is declared again, or start a "
                        + "new consumer once the queue exists"
                    : error.recoverySuggestion)
        }
    }

    /// Ends a consumer's stream with `error` (logged at `error`).
    private func failCancelledConsumer(_ id: UInt64, _ error: BusError) {
        guard let consumer = consumers.removeValue(forKey: id) else { return }
        machine.consumerRemoved(id)
        logger.error(
            "a cancelled consumer cannot be resumed; its delivery stream ends with an error",
            metadata: ["amqp.queue": "\(consumer.registration.queue)", "amqp.error": "\(error)"])
        consumer.registration.continuation.finish(throwing: error)
    }

    // MARK: Reading

    private func readFrames(_ current: AMQPConnection) throws(AMQPFailure) {
        var budget = 4096
        repeat {
            guard let frame = try current.nextFrame() else { break }
            try handle(frame)
            guard connection === current else { return }
            budget -= 1
        } while budget > 0 && current.hasBufferedInput
        current.releaseBuffers()
    }

    private func handle(_ frame: IncomingFrame) throws(AMQPFailure) {
        switch frame {
        case .deliver(let channel, let tag, let redelivered, let exchange, let routingKey):
            partials[channel] = PartialContent(
                kind: .delivery(tag: tag, redelivered: redelivered), exchange: exchange, routingKey: routingKey)
        case .returned(let channel, let code, let text, let exchange, let routingKey):
            partials[channel] = PartialContent(
                kind: .returned(code: code, text: text), exchange: exchange, routingKey: routingKey)
        case .header(let channel, let bodySize, let properties):
            guard partials[channel] != nil else { return }
            partials[channel]!.properties = properties
            partials[channel]!.bodySize = bodySize
            if bodySize == 0 { try complete(channel) }
        case .body(let channel, let bytes):
            guard partials[channel] != nil else { return }
            if partials[channel]!.body.isEmpty {
                partials[channel]!.body = bytes
            } else {
                partials[channel]!.body.append(contentsOf: bytes)
            }
            if UInt64(partials[channel]!.body.count) >= partials[channel]!.bodySize { try complete(channel) }
        case .confirm(let channel, let tag, let multiple, let ack):
            if channel == Self.publishChannel { confirmed(tag: tag, multiple: multiple, ack: ack) }
        case .brokerCancel(let channel):
            brokerCancelled(channel)
        case .channelClose(let channel, let code, let text):
            partials[channel] = nil
            if channel == Self.publishChannel {
                publishChannelClosed(code: code, text: text)
            } else if channel == Self.controlChannel {
                controlChannelOpen = false
            } else {
                consumerChannelClosed(channel, code: code, text: text)
            }
        case .blocked(let isBlocked):
            blocked = isBlocked
            logger.warning(isBlocked ? "the broker blocked publishing (resource alarm)" : "publishing unblocked")
        case .other:
            break
        }
    }

    private func complete(_ channel: UInt16) throws(AMQPFailure) {
        guard let content = partials.removeValue(forKey: channel) else { return }
        switch content.kind {
        case .delivery(let tag, let redelivered):
            try deliver(content, channel: channel, tag: tag, redelivered: redelivered)
        case .returned(let code, let text):
            returned(content, code: code, text: text)
        }
    }

    // MARK: Shutdown

    /// Stops the consumers the state machine names (basic.cancel, the stream ends after what it buffered) but keeps
    /// accepting settlements and confirms until ``shutdownFinished()``.
    private func beginShutdown(_ cancel: [UInt64]) {
        for id in cancel {
            guard var consumer = consumers[id] else { continue }
            consumer.stopping = true
            consumers[id] = consumer
            if let channel = consumer.channel, let current = connection {
                do throws(AMQPFailure) {
                    try current.cancel(channel, consumerTag: consumer.consumerTag)
                } catch .channelClosed {
                } catch {
                    connectionLost(error)
                }
            }
            consumer.registration.continuation.finish()
        }
    }

    private func shutdownFinished() -> Bool {
        let settled = consumers.values.allSatisfy { $0.unsettled <= 0 }
        switch machine.drainVerdict(now: clock.now, allSettled: settled, unconfirmed: tracker.count + queued.count) {
        case .keepDraining:
            return false
        case .finish:
            return true
        case .finishTimedOut:
            logger.warning(
                "shutdown timed out",
                metadata: [
                    "amqp.unconfirmed": "\(tracker.count + queued.count)",
                    "amqp.unsettled": "\(consumers.values.reduce(0) { $0 + $1.unsettled })",
                ])
            return true
        }
    }

    /// Ends the thread's work: refuses new commands, fails whatever is left, closes the connection.
    private func finish() {
        health.remove()
        let leftovers = mailbox.close()
        for command in leftovers + machine.finish() { refuse(command) }
        for entry in tracker.removeAll() {
            entry.item.continuation.resume(throwing: connectionLostError(entry.item.message))
        }
        while let request = queued.popFirst() {
            request.continuation.resume(throwing: connectionLostError(request.message))
        }
        for consumer in consumers.values where !consumer.stopping {
            consumer.registration.continuation.finish()
        }
        consumers.removeAll()
        if let current = connection {
            current.close()
            connection = nil
        }
        for waiter in shutdownWaiters { waiter.resume() }
        shutdownWaiters.removeAll()
        logger.debug("connection thread finished")
    }

    private func refuse(_ command: Command) {
        switch command {
        case .publish(let request): request.continuation.resume(throwing: closedError())
        case .declare(_, let reply), .deleteQueue(_, let reply), .deleteExchange(_, let reply):
            reply.resume(throwing: closedError())
        case .consume(let registration, let reply):
            registration.continuation.finish()
            reply.resume(throwing: closedError())
        case .cancelConsumer, .settle: break
        case .shutdown(let reply): if let reply { shutdownWaiters.append(reply) }
        }
    }
}

/// One broker operation on the control channel.
enum TopologyOperation: CustomStringConvertible {
    case exchange(ExchangeSpec)
    case queue(QueueSpec)
    case binding(BindingSpec)
    case deleteQueue(String)
    case deleteExchange(String)

    func run(_ connection: AMQPConnection, _ channel: UInt16) throws(AMQPFailure) {
        switch self {
        case .exchange(let spec): try connection.declareExchange(channel, spec)
        case .queue(let spec): try connection.declareQueue(channel, spec)
        case .binding(let spec): try connection.bind(channel, spec)
        case .deleteQueue(let name): try connection.deleteQueue(channel, name)
        case .deleteExchange(let name): try connection.deleteExchange(channel, name)
        }
    }

    var description: String {
        switch self {
        case .exchange(let spec): "declaring exchange '\(spec.name)'"
        case .queue(let spec): "declaring queue '\(spec.name)'"
        case .binding(let spec):
            "binding queue '\(spec.queue)' to exchange '\(spec.exchange)' with key '\(spec.routingKey)'"
        case .deleteQueue(let name): "deleting queue '\(name)'"
        case .deleteExchange(let name): "deleting exchange '\(name)'"
        }
    }
}

extension Topology {
    /// Whether a binding of this topology routes `routingKey` from `exchange`: a mandatory
    /// publish returned from there means the broker lost the queue or the binding.
    func declaresRoute(exchange: String, routingKey: String) -> Bool {
        guard let spec = exchanges.first(where: { $0.name == exchange }) else { return false }
        return bindings.contains { binding in
            guard binding.exchange == exchange else { return false }
            switch spec.kind {
            case .fanout: return true
            case .direct: return binding.routingKey == routingKey
            case .topic: return Self.topic(binding.routingKey, matches: routingKey)
            }
        }
    }

    /// AMQP topic matching: `*` is one word, `#` zero or more.
    static func topic(_ pattern: String, matches key: String) -> Bool {
        func match(_ pattern: ArraySlice<Substring>, _ words: ArraySlice<Substring>) -> Bool {
            guard let first = pattern.first else { return words.isEmpty }
            if first == "#" {
                return match(pattern.dropFirst(), words) || (!words.isEmpty && match(pattern, words.dropFirst()))
            }
            guard let word = words.first, first == "*" || first == word else { return false }
            return match(pattern.dropFirst(), words.dropFirst())
        }
        return match(
            ArraySlice(pattern.split(separator: ".", omittingEmptySubsequences: false)),
            ArraySlice(key.split(separator: ".", omittingEmptySubsequences: false)))
    }

    /// What declares `queue` again: the queue, its bindings and the exchanges they name (empty when the queue is
    /// not part of this topology).
    func operations(forQueue queue: String) -> [TopologyOperation] {
        guard let spec = queues.first(where: { $0.name == queue }) else { return [] }
        let bindings = self.bindings.filter { $0.queue == queue }
        let names = Set(bindings.map(\.exchange))
        return exchanges.filter { names.contains($0.name) }.map(TopologyOperation.exchange) + [.queue(spec)]
            + bindings.map(TopologyOperation.binding)
    }

    /// Exchanges, then queues, then bindings.
    var operations: [TopologyOperation] {
        exchanges.map(TopologyOperation.exchange) + queues.map(TopologyOperation.queue)
            + bindings.map(TopologyOperation.binding)
    }
}

/// A first-in first-out queue with cheap removal at the front.
struct FIFO<Element> {
    private var items: [Element] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }

    mutating func append(_ element: Element) { items.append(element) }

    mutating func popFirst() -> Element? {
        guard head < items.count else { return nil }
        let element = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024, head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return element
    }

    mutating func prepend(contentsOf elements: [Element]) {
        guard !elements.isEmpty else { return }
        items = elements + items[head...]
        head = 0
    }

    mutating func removeAll(where shouldRemove: (Element) -> Bool) -> [Element] {
        var removed: [Element] = []
        var kept: [Element] = []
        for element in items[head...] {
            if shouldRemove(element) { removed.append(element) } else { kept.append(element) }
        }
        if !removed.isEmpty {
            items = kept
            head = 0
        }
        return removed
    }
}
