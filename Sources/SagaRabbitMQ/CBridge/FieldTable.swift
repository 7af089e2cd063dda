// AMQP field tables (message headers) between librabbitmq's `amqp_table_t` and SagaCore's `MessageHeaders`.
// Decoding copies everything out (the decoded frame's memory belongs to the connection's pool); encoding
// allocates from a pool that the caller empties after the C call that uses the table.

import CRabbitMQ
import SagaCore

/// A librabbitmq memory pool for building field tables: every allocation lives until ``recycle()``.
///
/// Not `Sendable`: owned by one ``AMQPConnection``, used on its thread only.
final class FieldTablePool {
    private let pool: UnsafeMutablePointer<amqp_pool_t>

    init() {
        pool = .allocate(capacity: 1)
        init_amqp_pool(pool, 16 * 1024)
    }

    deinit {
        empty_amqp_pool(pool)
        pool.deallocate()
    }

    /// Frees everything allocated since the last recycle (keeps the first page for reuse).
    func recycle() { recycle_amqp_pool(pool) }

    /// An `amqp_table_t` for `headers`, valid until ``recycle()``.
    func table(_ headers: MessageHeaders) -> amqp_table_t {
        let count = headers.count
        guard count > 0 else { return amqp_table_t(num_entries: 0, entries: nil) }
        let entries = allocate(amqp_table_entry_t.self, count)
        // Sorted, so that the same headers always make the same bytes on the wire.
        for (index, (key, value)) in headers.fields.sorted(by: { $0.key < $1.key }).enumerated() {
            var entry = amqp_table_entry_t()
            entry.key = bytes(Array(key.utf8))
            entry.value = field(value)
            entries[index] = entry
        }
        return amqp_table_t(num_entries: Int32(count), entries: entries)
    }

    /// An `amqp_bytes_t` copy of `content`, valid until ``recycle()``.
    func bytes(_ content: [UInt8]) -> amqp_bytes_t {
        guard !content.isEmpty else { return amqp_bytes_t(len: 0, bytes: nil) }
        let memory = UnsafeMutableRawPointer(allocate(UInt8.self, content.count))
        content.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: content.count) }
        return amqp_bytes_t(len: content.count, bytes: memory)
    }

    private func field(_ value: HeaderValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        func kind(_ k: amqp_field_value_kind_t) { field.kind = UInt8(k.rawValue) }
        switch value {
        case .string(let text):
            kind(AMQP_FIELD_KIND_UTF8)
            field.value.bytes = bytes(Array(text.utf8))
        case .bytes(let content):
            kind(AMQP_FIELD_KIND_BYTES)
            field.value.bytes = bytes(content)
        case .bool(let flag):
            kind(AMQP_FIELD_KIND_BOOLEAN)
            field.value.boolean = flag ? 1 : 0
        case .int8(let v):
            kind(AMQP_FIELD_KIND_I8)
            field.value.i8 = v
        case .uint8(let v):
            kind(AMQP_FIELD_KIND_U8)
            field.value.u8 = v
        case .int16(let v):
            kind(AMQP_FIELD_KIND_I16)
            field.value.i16 = v
        case .uint16(let v):
            kind(AMQP_FIELD_KIND_U16)
            field.value.u16 = v
        case .int32(let v):
            kind(AMQP_FIELD_KIND_I32)
            field.value.i32 = v
        case .uint32(let v):
            kind(AMQP_FIELD_KIND_U32)
            field.value.u32 = v
        case .int64(let v):
            kind(AMQP_FIELD_KIND_I64)
            field.value.i64 = v
        case .uint64(let v):
            kind(AMQP_FIELD_KIND_U64)
            field.value.u64 = v
        case .float(let v):
            kind(AMQP_FIELD_KIND_F32)
            field.value.f32 = v
        case .double(let v):
            kind(AMQP_FIELD_KIND_F64)
            field.value.f64 = v
        case .decimal(let scale, let v):
            kind(AMQP_FIELD_KIND_DECIMAL)
            field.value.decimal = amqp_decimal_t(decimals: scale, value: v)
        case .timestamp(let seconds):
            kind(AMQP_FIELD_KIND_TIMESTAMP)
            field.value.u64 = seconds
        case .void:
            kind(AMQP_FIELD_KIND_VOID)
        case .array(let values):
            kind(AMQP_FIELD_KIND_ARRAY)
            if values.isEmpty {
                field.value.array = amqp_array_t(num_entries: 0, entries: nil)
            } else {
                let entries = allocate(amqp_field_value_t.self, values.count)
                for (index, element) in values.enumerated() { entries[index] = self.field(element) }
                field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: entries)
            }
        case .table(let nested):
            kind(AMQP_FIELD_KIND_TABLE)
            field.value.table = table(nested)
        }
        return field
    }

    private func allocate<T>(_ type: T.Type, _ count: Int) -> UnsafeMutablePointer<T> {
        let size = MemoryLayout<T>.stride * count
        // The pool aligns its allocations to 8 bytes, enough for every librabbitmq type used here.
        guard let raw = amqp_pool_alloc(pool, size) else { fatalError("librabbitmq: out of memory (\(size) bytes)") }
        return raw.bindMemory(to: T.self, capacity: count)
    }
}

/// Decoding tables read from the connection.
enum FieldTableDecoder {
    /// A Swift copy of a decoded table.
    static func headers(_ table: amqp_table_t) -> MessageHeaders {
        var headers = MessageHeaders()
        guard table.num_entries > 0, let entries = table.entries else { return headers }
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            headers[field: entry.key.text] = value(entry.value)
        }
        return headers
    }

    /// A Swift copy of one decoded value.
    static func value(_ v: amqp_field_value_t) -> HeaderValue {
        switch UInt32(v.kind) {
        case AMQP_FIELD_KIND_UTF8.rawValue: return .string(v.value.bytes.text)
        case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes(v.value.bytes.array)
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(v.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: return .int8(v.value.i8)
        case AMQP_FIELD_KIND_U8.rawValue: return .uint8(v.value.u8)
        case AMQP_FIELD_KIND_I16.rawValue: return .int16(v.value.i16)
        case AMQP_FIELD_KIND_U16.rawValue: return .uint16(v.value.u16)
        case AMQP_FIELD_KIND_I32.rawValue: return .int32(v.value.i32)
        case AMQP_FIELD_KIND_U32.rawValue: return .uint32(v.value.u32)
        case AMQP_FIELD_KIND_I64.rawValue: return .int64(v.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue: return .uint64(v.value.u64)
        case AMQP_FIELD_KIND_F32.rawValue: return .float(v.value.f32)
        case AMQP_FIELD_KIND_F64.rawValue: return .double(v.value.f64)
        case AMQP_FIELD_KIND_DECIMAL.rawValue:
            return .decimal(scale: v.value.decimal.decimals, value: v.value.decimal.value)
        case AMQP_FIELD_KIND_TIMESTAMP.rawValue: return .timestamp(v.value.u64)
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = v.value.array
            guard array.num_entries > 0, let entries = array.entries else { return .array([]) }
            return .array((0..<Int(array.num_entries)).map { value(entries[$0]) })
        case AMQP_FIELD_KIND_TABLE.rawValue: return .table(headers(v.value.table))
        default: return .void  // AMQP_FIELD_KIND_VOID (librabbitmq refuses to decode unknown kinds)
        }
    }
}

extension amqp_bytes_t {
    /// A Swift copy of the bytes as UTF-8 text (invalid sequences repaired).
    var text: String {
        guard len > 0, let bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: len), as: UTF8.self)
    }

    /// A Swift copy of the bytes.
    var array: [UInt8] {
        guard len > 0, let bytes else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: bytes, count: len))
    }
}
