import Synchronization

/// Short tags unique within a process and, with overwhelming likelihood, across processes: a
/// random start drawn once per process, then a counter. Cheaper than `UUID()`, which on Linux
/// opens, reads and closes `/dev/urandom` on every call (three system calls per outbox message
/// on the hot path).
package enum UniqueTag {
    private static let counter = Atomic<UInt64>(UInt64.random(in: .min ... .max))

    /// The next tag: 16 lowercase hexadecimal digits.
    package static func next() -> String {
        let value = counter.add(1, ordering: .relaxed).newValue
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The next tag's last `length` hexadecimal digits (at most 16).
    package static func next(length: Int) -> String {
        String(next().suffix(max(1, min(16, length))))
    }
}
