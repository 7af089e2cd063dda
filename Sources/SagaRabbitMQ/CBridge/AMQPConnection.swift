// The only place in SagaKit that touches librabbitmq. Everything here is confined to the connection's own
// thread (see ConnectionWorker); values leave this file as Swift copies (String, [UInt8], Swift enums).

import CRabbitMQ
import Dispatch
import SagaCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A failure reported by librabbitmq or the broker, already in words. ``ConnectionWorker`` turns it into a
/// ``BusError`` with the context it knows (queue names, host:port).
enum AMQPFailure: Error {
    /// The connection is unusable: socket error or EOF, missed heartbeats, or `connection.close` from the
    /// broker (then `code` and `text` are the broker's).
    case connectionLost(reason: String, code: UInt16?)
    /// The broker closed one channel (`channel.close`); `close-ok` has already been sent.
    case channelClosed(channel: UInt16, code: UInt16, text: String)
}

/// Message properties copied out of a content header frame (every basic property but `cluster-id`).
struct ContentProperties {
    var headers = MessageHeaders()
    var messageId: String?
    var contentType: String?
    var contentEncoding: String?
    var type: String?
    var correlationId: String?
    var replyTo: String?
    var appId: String?
    var userId: String?
    var priority: UInt8?
    var timestamp: UInt64?
    /// The `expiration` property, in milliseconds as the broker sent it (a decimal string).
    var expiration: Duration?
    /// `delivery-mode` 2 (persistent) or not; `nil` when absent.
    var persistent: Bool?
}

/// One frame read from the connection, copied into Swift values.
enum IncomingFrame {
    case deliver(channel: UInt16, deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String)
    case returned(channel: UInt16, replyCode: UInt16, replyText: String, exchange: String, routingKey: String)
    case confirm(channel: UInt16, tag: UInt64, multiple: Bool, ack: Bool)
    /// The broker cancelled a consumer (its queue was deleted).
    case brokerCancel(channel: UInt16)
    /// The broker closed a channel; `close-ok` has already been sent.
    case channelClose(channel: UInt16, code: UInt16, text: String)
    case header(channel: UInt16, bodySize: UInt64, properties: ContentProperties)
    case body(channel: UInt16, bytes: [UInt8])
    case blocked(Bool)
    case other
}

/// AMQP 0-9-1 method ids (the header's macros are casts, which Swift does not import reliably).
private enum Method {
    static let connectionClose: amqp_method_number_t = 0x000A_0032
    static let connectionCloseOk: amqp_method_number_t = 0x000A_0033
    static let connectionBlocked: amqp_method_number_t = 0x000A_003C
    static let connectionUnblocked: amqp_method_number_t = 0x000A_003D
    static let channelClose: amqp_method_number_t = 0x0014_0028
    static let channelCloseOk: amqp_method_number_t = 0x0014_0029
    static let basicDeliver: amqp_method_number_t = 0x003C_003C
    static let basicReturn: amqp_method_number_t = 0x003C_0032
    static let basicAck: amqp_method_number_t = 0x003C_0050
    static let basicNack: amqp_method_number_t = 0x003C_0078
    static let basicCancel: amqp_method_number_t = 0x003C_001E
}

/// The address and credentials needed to open a connection.
struct ConnectParameters: Sendable {
    var host: String
    var port: Int
    var user: String
    var password: String
    var vhost: String
    var connectTimeout: Duration
    var heartbeatSeconds: Int32
    var rpcTimeout: Duration
    var connectionName: String
    /// TLS settings; `nil` for a plain TCP connection.
    var tls: TLSParameters?
}

/// What a TLS connection needs (see ``RabbitMQConfiguration/TLS``).
struct TLSParameters: Sendable {
    var caCertificateFile: String?
    var clientCertificateFile: String?
    var clientKeyFile: String?
    var verifyPeer: Bool
    var verifyHostname: Bool
}

/// Owns one `amqp_connection_state_t`. Not `Sendable`: created, used and destroyed on one thread.
final class AMQPConnection {
    private let state: amqp_connection_state_t
    private var destroyed = false
    /// Memory for the header tables of outgoing messages, recycled after each publish.
    private let tables = FieldTablePool()
    /// The TCP socket, for poll().
    let socketFD: Int32

    private init(state: amqp_connection_state_t) {
        self.state = state
        self.socketFD = amqp_get_sockfd(state)
    }

    deinit { destroy() }

    // MARK: Connect

    /// Opens a TCP (or TLS) connection, logs in and opens the virtual host, all within `connectTimeout` (a peer
    /// that accepts the TCP connection but never speaks AMQP is given up on when it expires).
    static func open(_ p: ConnectParameters) throws(BusError) -> AMQPConnection {
        guard let state = amqp_new_connection() else {
            throw BusError(.protocolError, "librabbitmq could not allocate a connection (out of memory?)")
        }
        let place = RabbitMQConfiguration.Endpoint(host: p.host, port: p.port).description
        let socket: OpaquePointer
        do {
            socket = try makeSocket(state, p, place: place)
        } catch {
            amqp_destroy_connection(state)
            throw error
        }
        var connectTV = p.connectTimeout.timeval
        let opened = p.host.withCString { amqp_socket_open_noblock(socket, $0, Int32(p.port), &connectTV) }
        if opened != AMQP_STATUS_OK.rawValue {
            amqp_destroy_connection(state)
            throw openError(opened, p, place: place)
        }
        var handshakeTV = p.connectTimeout.timeval
        _ = amqp_set_handshake_timeout(state, &handshakeTV)
        var rpcTV = p.rpcTimeout.timeval
        _ = amqp_set_rpc_timeout(state, &rpcTV)

        // librabbitmq 0.11 does not bound the whole login by the handshake timeout; a watchdog shuts the socket
        // down when the deadline passes, which makes the blocked call return.
        let watchdog = LoginWatchdog(fd: amqp_get_sockfd(state), timeout: p.connectTimeout)
        let pool = FieldTablePool()
        // The table's memory belongs to `pool`, which must outlive the login call.
        let reply = withExtendedLifetime(pool) {
            var properties = clientProperties(p.connectionName, pool)
            return p.vhost.withCString { vhost in
                p.user.withCString { user in
                    p.password.withCString { password in
                        sagakit_amqp_login_plain(
                            state, vhost, 0, 131_072, p.heartbeatSeconds, &properties, user, password)
                    }
                }
            }
        }
        let timedOut = watchdog.finish()
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            let error =
                timedOut
                ? BusError(
                    .unreachable,
                    "The peer at \(place) accepted the connection but did not complete the AMQP handshake within "
                        + "\(p.connectTimeout)",
                    recoverySuggestion: "check that \(place) is a RabbitMQ AMQP port"
                        + (p.tls == nil ? " (an amqps:// TLS port needs an amqps:// URL)" : "")
                        + " and that the broker is healthy",
                    isRetryable: true)
                : loginError(reply, p)
            amqp_destroy_connection(state)
            throw error
        }
        return AMQPConnection(state: state)
    }

    /// A TCP socket, or a TLS socket configured from `p.tls`.
    private static func makeSocket(_ state: amqp_connection_state_t, _ p: ConnectParameters, place: String)
        throws(BusError) -> OpaquePointer
    {
        guard let tls = p.tls else {
            guard let socket = amqp_tcp_socket_new(state) else {
                throw BusError(.protocolError, "librabbitmq could not create a TCP socket")
            }
            return socket
        }
        guard let socket = amqp_ssl_socket_new(state) else {
            throw BusError(.protocolError, "librabbitmq could not create a TLS socket (OpenSSL initialisation failed)")
        }
        amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
        amqp_ssl_socket_set_verify_hostname(socket, tls.verifyHostname ? 1 : 0)
        if let ca = tls.caCertificateFile {
            let status = ca.withCString { amqp_ssl_socket_set_cacert(socket, $0) }
            guard status == AMQP_STATUS_OK.rawValue else {
                throw BusError(
                    .invalidArgument,
                    "Cannot load the CA certificate file '\(ca)' for the TLS connection to \(place)",
                    recoverySuggestion: "check that the file exists, is readable and holds PEM certificates")
            }
        }
        if let certificate = tls.clientCertificateFile, let key = tls.clientKeyFile {
            let status = certificate.withCString { c in key.withCString { k in amqp_ssl_socket_set_key(socket, c, k) } }
            guard status == AMQP_STATUS_OK.rawValue else {
                // The key file's name only: never its content.
                throw BusError(
                    .invalidArgument,
                    "Cannot load the client certificate '\(certificate)' with the key file '\(key)' for the TLS "
                        + "connection to \(place)",
                    recoverySuggestion: "check that both files exist, are readable PEM, and that the key matches "
                        + "the certificate")
            }
        }
        return socket
    }

    /// Why `amqp_socket_open_noblock` failed, in words.
    private static func openError(_ status: Int32, _ p: ConnectParameters, place: String) -> BusError {
        let suggestion = "check that the broker runs and listens there (locally: scripts/rabbitmq.sh start)"
        switch status {
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue:
            return BusError(
                .unreachable, "Cannot reach the RabbitMQ broker: cannot resolve host '\(p.host)'",
                recoverySuggestion: "check the host name in the AMQP URL and the DNS configuration", isRetryable: true)
        case AMQP_STATUS_TIMEOUT.rawValue:
            return BusError(
                .unreachable,
                "Cannot reach the RabbitMQ broker at \(place) (no answer within \(p.connectTimeout))",
                recoverySuggestion: suggestion, isRetryable: true)
        case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue, AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
            let what =
                status == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue
                ? "its certificate does not name host '\(p.host)'"
                : "its certificate does not verify: not signed by the CA"
                    + (p.tls?.caCertificateFile.map { " in '\($0)'" } ?? " (no CA file given: the system's CAs)")
                    + ", or expired or not valid yet"
            return BusError(
                .tlsVerificationFailed, "The TLS connection to \(place) was refused: \(what)",
                recoverySuggestion: "give the CA that signed the broker's certificate (cacertfile), check the certificate's "
                    + "dates (openssl x509 -noout -dates -in …), or connect with the host name the certificate names",
                isRetryable: false)
        case AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue:
            return BusError(
                .unreachable, "The TLS handshake with \(place) failed (\(describe(status)))",
                recoverySuggestion: "check that \(place) is a TLS (amqps) port, and the TLS settings", isRetryable: true)
        default:
            let why = status == AMQP_STATUS_SOCKET_ERROR.rawValue ? "connection refused" : describe(status)
            return BusError(
                .unreachable, "Cannot reach the RabbitMQ broker at \(place) (\(why))", recoverySuggestion: suggestion,
                isRetryable: true)
        }
    }

    /// The client properties sent at login: the connection name and the capabilities SagaKit handles (librabbitmq
    /// merges them with its own). `consumer_cancel_notify` makes the broker send `basic.cancel` when a consumer's
    /// queue is deleted; `connection.blocked` makes it say when it blocks publishing (resource alarms).
    private static func clientProperties(_ name: String, _ pool: FieldTablePool) -> amqp_table_t {
        pool.table([
            "connection_name": .string(name),
            "capabilities": .table([
                "consumer_cancel_notify": true, "connection.blocked": true, "publisher_confirms": true,
                "basic.nack": true, "authentication_failure_close": true,
            ]),
        ])
    }

    private static func loginError(_ reply: amqp_rpc_reply_t, _ p: ConnectParameters) -> BusError {
        let place = "\(p.host):\(p.port)"
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == Method.connectionClose,
            let decoded = reply.reply.decoded
        {
            let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let text = close.reply_text.string
            return BrokerErrorText.connectionRefusal(
                code: close.reply_code, text: text, user: p.user, vhost: p.vhost, place: place)
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            let status = reply.library_error
            if status == AMQP_STATUS_CONNECTION_CLOSED.rawValue || status == AMQP_STATUS_SOCKET_CLOSED.rawValue {
                // The client announces `authentication_failure_close`, so RabbitMQ answers a failed login with
                // connection.close (ACCESS_REFUSED), handled above. A bare close means the peer did not speak AMQP
                // with us: not an AMQP port, or a TLS port reached without TLS.
                return BusError(
                    .unreachable,
                    "The peer at \(place) closed the connection during the AMQP handshake (login of user "
                        + "'\(p.user)' to vhost '\(p.vhost)')",
                    recoverySuggestion: "check that \(place) is a RabbitMQ AMQP port"
                        + (p.tls == nil ? "; a TLS port needs an amqps:// URL" : " that speaks TLS"),
                    isRetryable: true
                )
            }
            if status == AMQP_STATUS_TIMEOUT.rawValue || status == AMQP_STATUS_SOCKET_ERROR.rawValue {
                return BusError(
                    .unreachable,
                    "The broker at \(place) did not complete the AMQP handshake (\(describe(status)))",
                    recoverySuggestion: "check that \(place) is a RabbitMQ AMQP port"
                        + (p.tls == nil ? " (a TLS port needs an amqps:// URL)" : "")
                        + " and that the broker is healthy",
                    isRetryable: true
                )
            }
            return BusError(
                .protocolError, "Login to \(place) failed: \(describe(status))", isRetryable: true)
        }
        return BusError(.protocolError, "Login to \(place) failed: the broker sent an unexpected reply")
    }

    // MARK: Channels and topology (synchronous RPCs on this thread)

    func openChannel(_ channel: UInt16) throws(AMQPFailure) {
        _ = amqp_channel_open(state, channel)
        try checkReply(channel: channel)
    }

    /// Closes a channel; the broker requeues its unacknowledged deliveries.
    func closeChannel(_ channel: UInt16) throws(AMQPFailure) {
        let reply = amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS)
        try check(reply, channel: channel)
    }

    func confirmSelect(_ channel: UInt16) throws(AMQPFailure) {
        _ = amqp_confirm_select(state, channel)
        try checkReply(channel: channel)
    }

    func declareExchange(_ channel: UInt16, _ spec: ExchangeSpec) throws(AMQPFailure) {
        withBytes(spec.name, spec.kind.rawValue) { name, kind in
            _ = amqp_exchange_declare(
                state, channel, name, kind, 0, spec.durable ? 1 : 0, 0, 0, amqp_empty_table)
        }
        try checkReply(channel: channel)
    }

    func deleteExchange(_ channel: UInt16, _ name: String) throws(AMQPFailure) {
        withBytes(name, "") { name, _ in _ = amqp_exchange_delete(state, channel, name, 0) }
        try checkReply(channel: channel)
    }

    func declareQueue(_ channel: UInt16, _ spec: QueueSpec) throws(AMQPFailure) {
        var arguments = ArgumentTable()
        if spec.kind == .quorum { arguments.string("x-queue-type", "quorum") }
        if let dlx = spec.deadLetterExchange { arguments.string("x-dead-letter-exchange", dlx) }
        if let key = spec.deadLetterRoutingKey { arguments.string("x-dead-letter-routing-key", key) }
        if let ttl = spec.messageTTL { arguments.integer("x-message-ttl", ttl.milliseconds) }
        if let max = spec.maxLength { arguments.integer("x-max-length", Int64(max)) }
        if let expires = spec.expires { arguments.integer("x-expires", expires.milliseconds) }
        let durable: amqp_boolean_t = spec.durable || spec.kind == .quorum ? 1 : 0
        arguments.withTable { table in
            withBytes(spec.name, "") { name, _ in
                _ = amqp_queue_declare(state, channel, name, 0, durable, 0, 0, table)
            }
        }
        try checkReply(channel: channel)
    }

    func deleteQueue(_ channel: UInt16, _ name: String) throws(AMQPFailure) {
        withBytes(name, "") { name, _ in _ = amqp_queue_delete(state, channel, name, 0, 0) }
        try checkReply(channel: channel)
    }

    func bind(_ channel: UInt16, _ spec: BindingSpec) throws(AMQPFailure) {
        withBytes(spec.queue, spec.exchange) { queue, exchange in
            withBytes(spec.routingKey, "") { key, _ in
                _ = amqp_queue_bind(state, channel, queue, exchange, key, amqp_empty_table)
            }
        }
        try checkReply(channel: channel)
    }

    // MARK: Consuming

    func qos(_ channel: UInt16, prefetch: UInt16) throws(AMQPFailure) {
        _ = amqp_basic_qos(state, channel, 0, prefetch, 0)
        try checkReply(channel: channel)
    }

    /// Starts a consumer (manual acknowledgements) and returns its consumer tag.
    func consume(_ channel: UInt16, queue: String) throws(AMQPFailure) -> String {
        let ok = withBytes(queue, "") { queue, tag in
            amqp_basic_consume(state, channel, queue, tag, 0, 0, 0, amqp_empty_table)
        }
        try checkReply(channel: channel)
        return ok?.pointee.consumer_tag.string ?? ""
    }

    func cancel(_ channel: UInt16, consumerTag: String) throws(AMQPFailure) {
        withBytes(consumerTag, "") { tag, _ in _ = amqp_basic_cancel(state, channel, tag) }
        try checkReply(channel: channel)
    }

    func ack(_ channel: UInt16, tag: UInt64, multiple: Bool) throws(AMQPFailure) {
        try checkStatus(amqp_basic_ack(state, channel, tag, multiple ? 1 : 0))
    }

    func nack(_ channel: UInt16, tag: UInt64, requeue: Bool) throws(AMQPFailure) {
        try checkStatus(amqp_basic_nack(state, channel, tag, 0, requeue ? 1 : 0))
    }

    func reject(_ channel: UInt16, tag: UInt64) throws(AMQPFailure) {
        try checkStatus(amqp_basic_reject(state, channel, tag, 0))
    }

    // MARK: Publishing

    /// Sends one message (method, header and body frames). Does not wait for anything from the broker.
    func publish(_ channel: UInt16, _ message: OutgoingMessage) throws(AMQPFailure) {
        var strings = StringArena()
        let exchange = strings.add(message.exchange)
        let routingKey = strings.add(message.routingKey)
        let messageId = message.messageId.map { strings.add($0) }
        let contentType = message.contentType.map { strings.add($0) }
        let contentEncoding = message.contentEncoding.map { strings.add($0) }
        let type = message.type.map { strings.add($0) }
        let correlationId = message.correlationId.map { strings.add($0) }
        let replyTo = message.replyTo.map { strings.add($0) }
        let appId = message.appId.map { strings.add($0) }
        let userId = message.userId.map { strings.add($0) }
        let expiration = message.expiration.map { strings.add(String(max(0, $0.milliseconds))) }
        defer { tables.recycle() }
        let headers = message.headers.isEmpty ? nil : tables.table(message.headers)

        let status: Int32 = strings.withBytes { bytes in
            var properties = amqp_basic_properties_t()
            var flags: UInt32 = UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
            properties.delivery_mode = message.persistent ? 2 : 1
            func set(_ range: Range<Int>?, _ flag: Int32, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>) {
                guard let range else { return }
                flags |= UInt32(flag)
                properties[keyPath: field] = bytes(range)
            }
            if let headers {
                flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
                properties.headers = headers
            }
            set(messageId, AMQP_BASIC_MESSAGE_ID_FLAG, \.message_id)
            set(contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, \.content_type)
            set(contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG, \.content_encoding)
            set(type, AMQP_BASIC_TYPE_FLAG, \.type)
            set(correlationId, AMQP_BASIC_CORRELATION_ID_FLAG, \.correlation_id)
            set(replyTo, AMQP_BASIC_REPLY_TO_FLAG, \.reply_to)
            set(appId, AMQP_BASIC_APP_ID_FLAG, \.app_id)
            set(userId, AMQP_BASIC_USER_ID_FLAG, \.user_id)
            set(expiration, AMQP_BASIC_EXPIRATION_FLAG, \.expiration)
            if let priority = message.priority {
                flags |= UInt32(AMQP_BASIC_PRIORITY_FLAG)
                properties.priority = priority
            }
            if let timestamp = message.timestamp {
                flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
                properties.timestamp = timestamp
            }
            properties._flags = flags
            return message.body.withUnsafeBytes { body in
                amqp_basic_publish(
                    state, channel, bytes(exchange), bytes(routingKey), message.mandatory ? 1 : 0, 0,
                    &properties,
                    amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                )
            }
        }
        try checkStatus(status)
    }

    // MARK: Reading

    /// `true` when frames can be read without touching the socket.
    var hasBufferedInput: Bool { amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0 }

    /// Reads one frame if one is available without blocking; `nil` when none is. Also sends a heartbeat when
    /// one is due. Answers `connection.close` and `channel.close` with their `close-ok`.
    func nextFrame() throws(AMQPFailure) -> IncomingFrame? {
        var frame = amqp_frame_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        try checkStatus(status)
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            return try decodeMethod(frame.channel, frame.payload.method)
        case AMQP_FRAME_HEADER:
            var properties = ContentProperties()
            if let decoded = frame.payload.properties.decoded {
                properties = Self.copyProperties(decoded.assumingMemoryBound(to: amqp_basic_properties_t.self))
            }
            return .header(
                channel: frame.channel, bodySize: frame.payload.properties.body_size, properties: properties)
        case AMQP_FRAME_BODY:
            let fragment = frame.payload.body_fragment
            let bytes = [UInt8](UnsafeRawBufferPointer(start: fragment.bytes, count: fragment.len))
            return .body(channel: frame.channel, bytes: bytes)
        default:
            return .other
        }
    }

    /// Frees the memory of frames already handled (everything read has been copied out).
    func releaseBuffers() { amqp_maybe_release_buffers(state) }

    private func decodeMethod(_ channel: UInt16, _ method: amqp_method_t) throws(AMQPFailure) -> IncomingFrame {
        guard let decoded = method.decoded else { return .other }
        switch method.id {
        case Method.basicDeliver:
            let m = decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            return .deliver(
                channel: channel, deliveryTag: m.delivery_tag, redelivered: m.redelivered != 0,
                exchange: m.exchange.string, routingKey: m.routing_key.string)
        case Method.basicAck:
            let m = decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .confirm(channel: channel, tag: m.delivery_tag, multiple: m.multiple != 0, ack: true)
        case Method.basicNack:
            let m = decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .confirm(channel: channel, tag: m.delivery_tag, multiple: m.multiple != 0, ack: false)
        case Method.basicReturn:
            let m = decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            return .returned(
                channel: channel, replyCode: m.reply_code, replyText: m.reply_text.string,
                exchange: m.exchange.string, routingKey: m.routing_key.string)
        case Method.basicCancel:
            return .brokerCancel(channel: channel)
        case Method.channelClose:
            let m = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let text = m.reply_text.string
            sendChannelCloseOk(channel)
            return .channelClose(channel: channel, code: m.reply_code, text: text)
        case Method.connectionClose:
            let m = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let text = m.reply_text.string
            sendConnectionCloseOk()
            throw .connectionLost(reason: text, code: m.reply_code)
        case Method.connectionBlocked:
            return .blocked(true)
        case Method.connectionUnblocked:
            return .blocked(false)
        default:
            return .other
        }
    }

    // MARK: Waiting

    /// Runs `body`, whose frames (publishes, acks: writes that wait for no reply) leave in as few
    /// TCP segments as they fill (`TCP_CORK`, released when `body` ends), instead of one segment per
    /// publish or ack. The broker then reads a run of them at once: fewer reads and wake-ups in
    /// its connection process for the same messages. Never wrap a call that waits for a reply
    /// (a declaration, `channel.open`): its request would be held up to 200 ms.
    func batchingWrites<T>(_ body: () throws(AMQPFailure) -> T) throws(AMQPFailure) -> T {
        _ = sagakit_set_cork(socketFD, 1)
        defer { _ = sagakit_set_cork(socketFD, 0) }
        return try body()
    }

    /// Waits until the socket is readable or `wake` is signalled, at most `timeoutMilliseconds`.
    func wait(wake: WakeSignal, timeoutMilliseconds: Int32) -> (readable: Bool, woken: Bool) {
        let result = sagakit_poll2(socketFD, wake.fd, timeoutMilliseconds)
        if result < 0 { return (false, false) }
        return (result & 1 != 0, result & 2 != 0)
    }

    // MARK: Closing

    /// Sends `connection.close` and waits (bounded by the RPC timeout) for `close-ok`, then frees the connection.
    func close() {
        guard !destroyed else { return }
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        destroy()
    }

    /// Frees the connection without a handshake (after a failure).
    func destroy() {
        guard !destroyed else { return }
        destroyed = true
        amqp_destroy_connection(state)
    }

    // MARK: Replies

    private func sendChannelCloseOk(_ channel: UInt16) {
        var ok = amqp_channel_close_ok_t()
        _ = amqp_send_method(state, channel, Method.channelCloseOk, &ok)
    }

    private func sendConnectionCloseOk() {
        var ok = amqp_connection_close_ok_t()
        _ = amqp_send_method(state, 0, Method.connectionCloseOk, &ok)
    }

    private func checkStatus(_ status: Int32) throws(AMQPFailure) {
        guard status != AMQP_STATUS_OK.rawValue else { return }
        throw .connectionLost(reason: Self.describe(status), code: nil)
    }

    private func checkReply(channel: UInt16) throws(AMQPFailure) {
        try check(amqp_get_rpc_reply(state), channel: channel)
    }

    private func check(_ reply: amqp_rpc_reply_t, channel: UInt16) throws(AMQPFailure) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw .connectionLost(reason: Self.describe(reply.library_error), code: nil)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            guard let decoded = reply.reply.decoded else { break }
            if reply.reply.id == Method.connectionClose {
                let m = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                let text = m.reply_text.string
                sendConnectionCloseOk()
                throw .connectionLost(reason: text, code: m.reply_code)
            }
            if reply.reply.id == Method.channelClose {
                let m = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = m.reply_text.string
                sendChannelCloseOk(channel)
                throw .channelClosed(channel: channel, code: m.reply_code, text: text)
            }
        default:
            break
        }
        throw .connectionLost(reason: "the broker sent an unexpected reply", code: nil)
    }

    static func describe(_ status: Int32) -> String {
        if status == AMQP_STATUS_CONNECTION_CLOSED.rawValue || status == AMQP_STATUS_SOCKET_CLOSED.rawValue {
            return "the broker closed the socket"
        }
        if status == AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue { return "no heartbeat from the broker" }
        if status == AMQP_STATUS_TIMEOUT.rawValue { return "the broker did not answer in time" }
        guard let text = amqp_error_string2(status) else { return "network error" }
        return String(cString: text)
    }

    // MARK: Copying out

    private static func copyProperties(_ p: UnsafePointer<amqp_basic_properties_t>) -> ContentProperties {
        let flags = p.pointee._flags
        var result = ContentProperties()
        func has(_ flag: Int32) -> Bool { flags & UInt32(flag) != 0 }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { result.messageId = p.pointee.message_id.string }
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { result.contentType = p.pointee.content_type.string }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { result.contentEncoding = p.pointee.content_encoding.string }
        if has(AMQP_BASIC_TYPE_FLAG) { result.type = p.pointee.type.string }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { result.correlationId = p.pointee.correlation_id.string }
        if has(AMQP_BASIC_REPLY_TO_FLAG) { result.replyTo = p.pointee.reply_to.string }
        if has(AMQP_BASIC_APP_ID_FLAG) { result.appId = p.pointee.app_id.string }
        if has(AMQP_BASIC_USER_ID_FLAG) { result.userId = p.pointee.user_id.string }
        if has(AMQP_BASIC_PRIORITY_FLAG) { result.priority = p.pointee.priority }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { result.timestamp = p.pointee.timestamp }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { result.persistent = p.pointee.delivery_mode == 2 }
        if has(AMQP_BASIC_EXPIRATION_FLAG), let milliseconds = Int64(p.pointee.expiration.string) {
            // RabbitMQ accepts only a non-negative integer here (it refuses anything else at publish).
            result.expiration = .milliseconds(milliseconds)
        }
        if has(AMQP_BASIC_HEADERS_FLAG) { result.headers = FieldTableDecoder.headers(p.pointee.headers) }
        return result
    }

    // MARK: Building amqp_bytes_t for the duration of a call

    private func withBytes<R>(_ a: String, _ b: String, _ body: (amqp_bytes_t, amqp_bytes_t) -> R) -> R {
        var arena = StringArena()
        let ra = arena.add(a)
        let rb = arena.add(b)
        return arena.withBytes { bytes in body(bytes(ra), bytes(rb)) }
    }
}

/// Strings laid out in one byte buffer, so that `amqp_bytes_t` values pointing into it stay valid for the
/// duration of one C call (`withBytes`).
private struct StringArena {
    private var storage: [UInt8] = []

    init() { storage.reserveCapacity(256) }

    mutating func add(_ string: String) -> Range<Int> {
        let start = storage.count
        storage.append(contentsOf: string.utf8)
        return start..<storage.count
    }

    mutating func withBytes<R>(_ body: ((Range<Int>) -> amqp_bytes_t) -> R) -> R {
        if storage.isEmpty { storage.append(0) }  // a valid base address even when every string is empty
        return storage.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress!
            return body { range in amqp_bytes_t(len: range.count, bytes: base + range.lowerBound) }
        }
    }
}

/// A queue.declare arguments table with string and integer values.
private struct ArgumentTable {
    private enum Value {
        case string(Range<Int>)
        case integer(Int64)
    }
    private var arena = StringArena()
    private var entries: [(Range<Int>, Value)] = []

    mutating func string(_ key: String, _ value: String) {
        entries.append((arena.add(key), .string(arena.add(value))))
    }

    mutating func integer(_ key: String, _ value: Int64) {
        entries.append((arena.add(key), .integer(value)))
    }

    mutating func withTable<R>(_ body: (amqp_table_t) -> R) -> R {
        let entries = self.entries
        return arena.withBytes { bytes in
            var table = entries.map { key, value in
                var entry = amqp_table_entry_t()
                entry.key = bytes(key)
                switch value {
                case .string(let range):
                    entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                    entry.value.value.bytes = bytes(range)
                case .integer(let number):
                    entry.value.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
                    entry.value.value.i64 = number
                }
                return entry
            }
            return table.withUnsafeMutableBufferPointer { buffer in
                body(amqp_table_t(num_entries: Int32(buffer.count), entries: buffer.baseAddress))
            }
        }
    }
}

extension amqp_bytes_t {
    /// A Swift copy of the bytes as UTF-8 text (invalid sequences repaired).
    fileprivate var string: String { text }
}

/// Bounds a login by a deadline: when it passes before ``finish()``, the socket is shut down (not closed: the
/// descriptor stays valid until the connection is destroyed), which makes the blocked librabbitmq call fail.
///
/// `Sendable`: the only state is behind a `Mutex`; the descriptor is shut down under that lock and only while the
/// login has not finished, so never after the owning thread went on to destroy the connection.
private final class LoginWatchdog: Sendable {
    private struct State {
        var finished = false
        var fired = false
    }
    private let state = Mutex(State())

    init(fd: Int32, timeout: Duration) {
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
            state.withLock { state in
                guard !state.finished else { return }
                state.fired = true
                _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
            }
        }
    }

    /// Ends the watch; `true` when the deadline had passed (the socket was shut down).
    func finish() -> Bool {
        state.withLock { state in
            state.finished = true
            return state.fired
        }
    }
}

extension Duration {
    fileprivate var timeval: timeval {
        let (seconds, attoseconds) = components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }

    /// Whole milliseconds.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// An eventfd that wakes a connection thread waiting in poll(). `Sendable`: the descriptor is written from any
/// thread (eventfd writes are atomic) and closed once, by the owning worker, after no one can signal any more.
final class WakeSignal: Sendable {
    let fd: Int32

    init() throws(BusError) {
        let fd = sagakit_eventfd_create()
        guard fd >= 0 else { throw BusError(.protocolError, "cannot create an eventfd for the connection thread") }
        self.fd = fd
    }

    func signal() { sagakit_eventfd_signal(fd) }
    func drain() { sagakit_eventfd_drain(fd) }

    /// Waits for a signal only (no socket), at most `timeoutMilliseconds`.
    func wait(timeoutMilliseconds: Int32) {
        if sagakit_poll2(-1, fd, timeoutMilliseconds) & 2 != 0 { drain() }
    }

    deinit { _ = Glibc.close(fd) }
}

/// The name of the calling OS thread, as `top -H`, `perf` and debuggers show it.
enum ThreadName {
    /// Names the calling thread (Linux keeps at most 15 bytes; a longer name is refused and the
    /// thread keeps its creator's). Foundation's `Thread.name` does not reach the OS thread on
    /// this platform.
    static func setCurrent(_ name: String) {
        _ = sagakit_name_current_thread(name)
    }
}
