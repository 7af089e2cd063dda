// The only place in SagaKit that touches librabbitmq. Everything here is confined to the connection's own
// thread (see ConnectionWorker); values leave this file as Swift copies (String, [UInt8], Swift enums).

import CRabbitMQ
import SagaCore

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

/// Message properties copied out of a content header frame.
struct ContentProperties {
    var headers: [String: String] = [:]
    var messageId: String?
    var contentType: String?
    var type: String?
    var correlationId: String?
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
}

/// Owns one `amqp_connection_state_t`. Not `Sendable`: created, used and destroyed on one thread.
final class AMQPConnection {
    private let state: amqp_connection_state_t
    private var destroyed = false
    /// The TCP socket, for poll().
    let socketFD: Int32

    private init(state: amqp_connection_state_t) {
        self.state = state
        self.socketFD = amqp_get_sockfd(state)
    }

    deinit { destroy() }

    // MARK: Connect

    /// Opens a TCP connection, logs in and opens the virtual host.
    static func open(_ p: ConnectParameters) throws(BusError) -> AMQPConnection {
        guard let state = amqp_new_connection() else {
            throw BusError(.protocolError, "librabbitmq could not allocate a connection (out of memory?)")
        }
        guard let socket = amqp_tcp_socket_new(state) else {
            amqp_destroy_connection(state)
            throw BusError(.protocolError, "librabbitmq could not create a TCP socket")
        }
        var connectTV = p.connectTimeout.timeval
        let opened = p.host.withCString { amqp_socket_open_noblock(socket, $0, Int32(p.port), &connectTV) }
        if opened != AMQP_STATUS_OK.rawValue {
            amqp_destroy_connection(state)
            let why = opened == AMQP_STATUS_TIMEOUT.rawValue ? "timed out after \(p.connectTimeout)" : "refused"
            throw BusError(
                .unreachable,
                "Cannot reach the RabbitMQ broker at \(p.host):\(p.port) (connection \(why))",
                recoverySuggestion: "check that the broker runs and listens there (locally: scripts/rabbitmq.sh start)",
                isRetryable: true
            )
        }
        var handshakeTV = p.connectTimeout.timeval
        _ = amqp_set_handshake_timeout(state, &handshakeTV)
        var rpcTV = p.rpcTimeout.timeval
        _ = amqp_set_rpc_timeout(state, &rpcTV)

        let reply = withConnectionName(p.connectionName) { properties in
            p.vhost.withCString { vhost in
                p.user.withCString { user in
                    p.password.withCString { password in
                        sagakit_amqp_login_plain(
                            state, vhost, 0, 131_072, p.heartbeatSeconds, properties, user, password)
                    }
                }
            }
        }
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            let error = loginError(reply, p)
            amqp_destroy_connection(state)
            throw error
        }
        return AMQPConnection(state: state)
    }

    private static func withConnectionName<R>(_ name: String, _ body: (UnsafePointer<amqp_table_t>) -> R) -> R {
        var key = Array("connection_name".utf8)
        var value = Array(name.utf8)
        return key.withUnsafeMutableBytes { k in
            value.withUnsafeMutableBytes { v in
                var entry = amqp_table_entry_t()
                entry.key = amqp_bytes_t(len: k.count, bytes: k.baseAddress)
                entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                entry.value.value.bytes = amqp_bytes_t(len: v.count, bytes: v.baseAddress)
                return withUnsafeMutablePointer(to: &entry) { e in
                    var table = amqp_table_t(num_entries: 1, entries: e)
                    return withUnsafePointer(to: &table) { body($0) }
                }
            }
        }
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
                // RabbitMQ closes the socket without a reason when authentication fails for clients that do
                // not ask for `authentication_failure_close`.
                return BusError(
                    .authenticationFailed,
                    "The broker at \(place) closed the connection during login of user '\(p.user)' "
                        + "to vhost '\(p.vhost)'",
                    recoverySuggestion: "check the user name and password in the AMQP URL"
                )
            }
            if status == AMQP_STATUS_TIMEOUT.rawValue || status == AMQP_STATUS_SOCKET_ERROR.rawValue {
                return BusError(
                    .unreachable,
                    "The broker at \(place) did not complete the AMQP handshake (\(describe(status)))",
                    recoverySuggestion: "check that \(place) is a RabbitMQ AMQP port and that the broker is healthy",
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
        let type = message.type.map { strings.add($0) }
        let correlationId = message.correlationId.map { strings.add($0) }
        let expiration = message.expiration.map { strings.add(String(max(0, $0.milliseconds))) }
        let headers = message.headers.map { (strings.add($0.key), strings.add($0.value)) }

        let status: Int32 = strings.withBytes { bytes in
            var entries = headers.map { key, value in
                var entry = amqp_table_entry_t()
                entry.key = bytes(key)
                entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                entry.value.value.bytes = bytes(value)
                return entry
            }
            return entries.withUnsafeMutableBufferPointer { entries in
                var properties = amqp_basic_properties_t()
                var flags: UInt32 = UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
                properties.delivery_mode = message.persistent ? 2 : 1
                if !headers.isEmpty {
                    flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
                    properties.headers = amqp_table_t(
                        num_entries: Int32(entries.count), entries: entries.baseAddress)
                }
                if let messageId {
                    flags |= UInt32(AMQP_BASIC_MESSAGE_ID_FLAG)
                    properties.message_id = bytes(messageId)
                }
                if let contentType {
                    flags |= UInt32(AMQP_BASIC_CONTENT_TYPE_FLAG)
                    properties.content_type = bytes(contentType)
                }
                if let type {
                    flags |= UInt32(AMQP_BASIC_TYPE_FLAG)
                    properties.type = bytes(type)
                }
                if let correlationId {
                    flags |= UInt32(AMQP_BASIC_CORRELATION_ID_FLAG)
                    properties.correlation_id = bytes(correlationId)
                }
                if let expiration {
                    flags |= UInt32(AMQP_BASIC_EXPIRATION_FLAG)
                    properties._flags = flags
                    properties.expiration = bytes(expiration)
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
        if has(AMQP_BASIC_TYPE_FLAG) { result.type = p.pointee.type.string }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { result.correlationId = p.pointee.correlation_id.string }
        if has(AMQP_BASIC_HEADERS_FLAG), let entries = p.pointee.headers.entries {
            let count = Int(p.pointee.headers.num_entries)
            result.headers.reserveCapacity(count)
            for i in 0..<count {
                let entry = entries[i]
                if let value = render(entry.value) { result.headers[entry.key.string] = value }
            }
        }
        return result
    }

    /// Renders a header value as a string; nested tables and arrays are left out.
    private static func render(_ v: amqp_field_value_t) -> String? {
        switch UInt32(v.kind) {
        case AMQP_FIELD_KIND_UTF8.rawValue, AMQP_FIELD_KIND_BYTES.rawValue: return v.value.bytes.string
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return v.value.boolean != 0 ? "true" : "false"
        case AMQP_FIELD_KIND_I8.rawValue: return String(v.value.i8)
        case AMQP_FIELD_KIND_U8.rawValue: return String(v.value.u8)
        case AMQP_FIELD_KIND_I16.rawValue: return String(v.value.i16)
        case AMQP_FIELD_KIND_U16.rawValue: return String(v.value.u16)
        case AMQP_FIELD_KIND_I32.rawValue: return String(v.value.i32)
        case AMQP_FIELD_KIND_U32.rawValue: return String(v.value.u32)
        case AMQP_FIELD_KIND_I64.rawValue: return String(v.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue, AMQP_FIELD_KIND_TIMESTAMP.rawValue: return String(v.value.u64)
        case AMQP_FIELD_KIND_F32.rawValue: return String(v.value.f32)
        case AMQP_FIELD_KIND_F64.rawValue: return String(v.value.f64)
        case AMQP_FIELD_KIND_VOID.rawValue: return ""
        default: return nil
        }
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
    fileprivate var string: String {
        guard len > 0, let bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: len), as: UTF8.self)
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
