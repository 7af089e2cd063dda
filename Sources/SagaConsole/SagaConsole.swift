import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
public import Participant

/// The SagaKit web console: an overview of the sagas in a store, a searchable list, each saga's
/// timeline drawn as a Gantt chart, definitions drawn as graphs, the dead-letter queue, live
/// updates from the saga lifecycle events (server-sent events), and — with an operator token —
/// retry, compensate and requeue.
///
/// A `Service`: ``run()`` serves until cancelled or gracefully shut down.
///
/// ```swift
/// let console = SagaConsole(configuration: SagaConsoleConfiguration(port: 8080), backend: backend, logger: logger)
/// try await ServiceGroup(services: [console], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger).run()
/// ```
public struct SagaConsole: Service {
    /// How it serves.
    public let configuration: SagaConsoleConfiguration
    let backend: SagaConsoleBackend
    let logger: Logger
    let onListening: @Sendable (String) -> Void

    /// Creates a console. `onListening` receives the URL once the server listens (with the port
    /// it got when the configuration's port is 0).
    public init(
        configuration: SagaConsoleConfiguration, backend: SagaConsoleBackend, logger: Logger,
        onListening: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.backend = backend
        self.logger = logger
        self.onListening = onListening
    }

    /// Serves until cancelled or gracefully shut down.
    public func run() async throws {
        try configuration.validate()
        if configuration.readAccess == .anyone, !configuration.listensOnLoopbackOnly {
            logger.warning(
                "the console shows every saga's data to anyone who can reach it (read access 'anyone' on \(configuration.host)): keep it behind a proxy that authenticates its users, or use read access 'operators'"
            )
        }
        let broadcaster = EventBroadcaster()
        let security = ConsoleSecurity(configuration: configuration)
        let pages = Pages(
            configuration: configuration, backend: backend, security: security,
            redactor: Redactor(keys: configuration.redactedKeys, masksSecretLookingKeys: configuration.redactsSecretLookingKeys))
        let router = Router()
        router.add(middleware: SecurityHeaders(security: security))
        ConsoleRoutes(
            pages: pages, security: security, broadcaster: broadcaster, backend: backend, logger: logger,
            health: ConsoleHealth(storeDescription: configuration.storeDescription)
        ).register(on: router)
        let host = configuration.host
        let onListening = onListening
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: configuration.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                let shownHost = host.contains(":") ? "[\(host)]" : host
                onListening("http://\(shownHost):\(port)/")
            },
            logger: logger
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.run() }
            group.addTask { await Self.pumpEvents(backend: backend, into: broadcaster, logger: logger) }
            // Either ends (shutdown, or the server failed): stop the other.
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// Feeds the broadcaster from a lifecycle-event subscription, subscribing again after a
    /// failure, with a heartbeat for the open streams; closes every stream on shutdown (so the
    /// server can finish its connections).
    static func pumpEvents(backend: SagaConsoleBackend, into broadcaster: EventBroadcaster, logger: Logger) async {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(15))
                        broadcaster.publish(.heartbeat)
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        do {
                            let events = try await backend.subscribe()
                            broadcaster.publish(.connected(true))
                            logger.info("console receives saga lifecycle events", metadata: ["queue": "\(events.queue)"])
                            for try await event in events { broadcaster.publish(.event(event)) }
                        } catch is CancellationError {
                            break
                        } catch {
                            logger.warning(
                                "console cannot receive saga lifecycle events (live updates paused; retrying in 5 s)",
                                metadata: ["error": "\(error)"])
                        }
                        broadcaster.publish(.connected(false))
                        try? await Task.sleep(for: .seconds(5))
                    }
                }
                await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            broadcaster.close()
        }
        broadcaster.close()
    }
}

/// Security headers on every response, and the `Host` check against DNS rebinding.
struct SecurityHeaders<Context: RequestContext>: RouterMiddleware {
    let security: ConsoleSecurity

    static var policy: String {
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        if security.hostAllowed(request), security.mayRead(request) {
            response = try await next(request, context)
        } else if security.hostAllowed(request) {
            // Read access 'operators', no session: pages send the browser to the login page (and
            // back after it); the live updates and anything else get a plain 401.
            if request.method == .get, request.uri.path != "/events" {
                let back = request.uri.path + (request.uri.query.map { "?" + $0 } ?? "")
                response = Response(status: .seeOther, headers: [.location: "/login?next=" + HTML.urlComponent(back)])
            } else {
                response = Response(
                    status: .unauthorized, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: ResponseBody(
                        byteBuffer: ByteBuffer(string: "log in at /login first: this console shows sagas to operators only\n")))
            }
        } else {
            response = Response(
                status: .misdirectedRequest, headers: [.contentType: "text/plain; charset=utf-8"],
                body: ResponseBody(
                    byteBuffer: ByteBuffer(string: "this console listens on a loopback address: open it as http://127.0.0.1:<port>/\n")))
        }
        response.headers[HTTPField.Name("Content-Security-Policy")!] = Self.policy
        response.headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        response.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        response.headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }
}
