public import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
public import Prometheus
public import SagaCore
public import ServiceLifecycle

/// A tiny HTTP server that serves a Prometheus registry at `GET /metrics` in the text exposition
/// format (version 0.0.4), and the process's health for orchestrators' probes:
///
/// - `GET /health/live`: 200 while the process answers at all (a liveness probe);
/// - `GET /health/ready`: 200 when every part registered in the ``SagaCore/SagaHealth`` registry
///   is ready (the broker connections are up, the participant consumes its queue and its commands
///   are processed), 503 otherwise; the body says which part is not and why, as JSON
///   (``SagaCore/SagaHealthReport/json()``).
///
/// Any other path gets 404, any other method 405.
///
/// A `Service`: add it to the process's `ServiceGroup` (or pass it to
/// `SagaApplication.runParticipant(handlers:store:configuration:services:)`). It binds when
/// ``run()`` starts and closes its socket on graceful shutdown or cancellation. It binds to
/// 127.0.0.1 unless told otherwise: metrics are not secrets, but an endpoint on every interface
/// is an operator's decision, not a default.
///
/// Usually made by ``SagaPrometheus/bootstrap(reader:logger:)``, which also makes the registry the
/// process's swift-metrics backend.
public struct PrometheusMetricsService: Service {
    /// The port to listen on (0: any free port; the log line says which).
    public let port: Int
    /// The address to bind.
    public let host: String
    /// The registry served.
    public let registry: PrometheusCollectorRegistry
    /// The health registry served at `/health/ready`.
    public let health: SagaHealth
    let logger: Logger

    /// Creates the service; binds nothing until ``run()``.
    /// - Parameters:
    ///   - port: the port to listen on (0: any free port).
    ///   - host: the address to bind (`127.0.0.1` by default; `0.0.0.0` for every interface).
    ///   - registry: the registry to serve (``SagaPrometheus/registry`` by default, the one
    ///     ``SagaPrometheus/bootstrap(reader:logger:)`` makes the metrics backend).
    ///   - health: the health registry served at `/health/ready` (the process's by default, the
    ///     one SagaKit's parts report to).
    ///   - logger: where the bound address and serving errors are logged.
    public init(
        port: Int,
        host: String = "127.0.0.1",
        registry: PrometheusCollectorRegistry = SagaPrometheus.registry,
        health: SagaHealth = .process,
        logger: Logger = Logger(label: "sagakit.metrics")
    ) {
        self.port = port
        self.host = host
        self.registry = registry
        self.health = health
        self.logger = logger
    }

    /// Serves until graceful shutdown or cancellation.
    /// - Throws: when the address cannot be bound (the port is taken, or the host is not an
    ///   address of this machine); the error names the address.
    public func run() async throws {
        let registry = self.registry
        let health = self.health
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry, health: health))
                    }
                }
                .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: host, port: port)
                .get()
        } catch {
            throw PrometheusEndpointError(
                message: "cannot serve metrics on \(host):\(port): \(error)",
                recoverySuggestion:
                    "choose a free port with sagakit.metrics.port (SAGAKIT_METRICS_PORT), or an address of this machine with sagakit.metrics.host"
            )
        }
        let bound = channel.localAddress?.port ?? port
        logger.info(
            "serving Prometheus metrics on http://\(host):\(bound)/metrics (health: /health/live, /health/ready)",
            metadata: ["metrics.host": "\(host)", "metrics.port": "\(bound)"])
        await withTaskCancellationOrGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onCancelOrGracefulShutdown: {
            channel.close(promise: nil)
        }
        logger.debug("metrics endpoint closed")
    }
}

/// Why the metrics endpoint could not start, and what to do.
public struct PrometheusEndpointError: Error, Sendable, CustomStringConvertible {
    /// What happened.
    public var message: String
    /// What to do about it.
    public var recoverySuggestion: String

    /// A readable description: the message and what to do.
    public var description: String { "\(message) (\(recoverySuggestion))" }
}

/// Answers each HTTP request on one connection: the registry's text for `GET /metrics`, 404 or
/// 405 otherwise. Lives on the connection's event loop only (NIO handlers need not be Sendable).
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let health: SagaHealth
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, health: SagaHealth) {
        self.registry = registry
        self.health = health
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break  // a scrape has no body; anything sent is ignored
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        var body = context.channel.allocator.buffer(capacity: 0)
        switch (head.method, path) {
        case (.GET, "/metrics"):
            status = .ok
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body.writeBytes(registry.emitToBuffer())
        case (.GET, "/health/live"):
            status = .ok
            contentType = "text/plain; charset=utf-8"
            body.writeString("live\n")
        case (.GET, "/health/ready"):
            let report = health.report()
            status = report.isReady ? .ok : .serviceUnavailable
            contentType = "application/json"
            body.writeString(report.json() + "\n")
        case (_, "/metrics"), (_, "/health/live"), (_, "/health/ready"):
            status = .methodNotAllowed
            contentType = "text/plain; charset=utf-8"
            body.writeString("only GET is served here\n")
        default:
            status = .notFound
            contentType = "text/plain; charset=utf-8"
            body.writeString("not found: metrics are at /metrics, health at /health/live and /health/ready\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET") }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let response = HTTPResponseHead(version: head.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
