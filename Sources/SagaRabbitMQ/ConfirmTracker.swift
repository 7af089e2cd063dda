/// The publishes sent on a confirm-mode channel whose `basic.ack` / `basic.nack` has not arrived yet.
///
/// After `confirm.select` the broker numbers the channel's publishes 1, 2, 3 … and confirms them by that
/// number, possibly several at once (`multiple`). A mandatory message that matched no queue comes back as
/// `basic.return` *before* its confirm; the return carries no sequence number, so it is matched to the oldest
/// outstanding, not yet returned publish with the same exchange, routing key and content (identical messages are
/// interchangeable, so matching the oldest is exact enough).
///
/// A value type with no I/O, unit-tested on its own.
struct ConfirmTracker<Item> {
    struct Entry {
        var item: Item
        /// Set when a `basic.return` was matched to this publish.
        var returned: ReturnedInfo?
    }

    struct ReturnedInfo: Equatable {
        var replyCode: UInt16
        var replyText: String
    }

    /// The sequence number the next publish gets.
    private(set) var nextSequence: UInt64 = 1
    /// Outstanding publishes.
    private(set) var count = 0
    /// `entries[i]` belongs to sequence number `base + i`; `nil` once confirmed.
    private var entries: [Entry?] = []
    private var base: UInt64 = 1
    /// Index of the first entry that may still be outstanding.
    private var head = 0

    init() {}

    var isEmpty: Bool { count == 0 }

    /// Records a publish about to be sent; returns its sequence number.
    @discardableResult
    mutating func add(_ item: Item) -> UInt64 {
        let sequence = nextSequence
        nextSequence += 1
        entries.append(Entry(item: item))
        count += 1
        return sequence
    }

    /// Removes the publishes confirmed by a `basic.ack`/`basic.nack` with `tag` and `multiple` and hands each
    /// to `body` in sequence order. Unknown tags are ignored.
    mutating func confirm(tag: UInt64, multiple: Bool, _ body: (Entry) -> Void) {
        guard tag >= base, tag < nextSequence else { return }
        let last = Int(tag - base)
        let first = multiple ? head : last
        if first <= last {
            for index in first...last {
                if let entry = entries[index] {
                    entries[index] = nil
                    count -= 1
                    body(entry)
                }
            }
        }
        compact()
    }

    /// Marks the oldest outstanding, not yet returned publish that `matches` as returned.
    /// - Returns: `false` when none matches.
    @discardableResult
    mutating func markReturned(_ info: ReturnedInfo, where matches: (Item) -> Bool) -> Bool {
        var index = head
        while index < entries.count {
            if let entry = entries[index], entry.returned == nil, matches(entry.item) {
                entries[index]!.returned = info
                return true
            }
            index += 1
        }
        return false
    }

    /// Removes every outstanding publish (the channel or connection is gone) in sequence order, and starts
    /// numbering at 1 again for the next channel.
    mutating func removeAll() -> [Entry] {
        let outstanding = entries[head...].compactMap { $0 }
        entries.removeAll(keepingCapacity: true)
        count = 0
        head = 0
        base = 1
        nextSequence = 1
        return outstanding
    }

    private mutating func compact() {
        while head < entries.count, entries[head] == nil { head += 1 }
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            base = nextSequence
            head = 0
        } else if head >= 1024, head * 2 >= entries.count {
            entries.removeFirst(head)
            base += UInt64(head)
            head = 0
        }
    }
}

/// The settled delivery tags of one consumer channel, so that a run of acks can go out as a single
/// `basic.ack(multiple: true)` instead of one frame each.
///
/// The broker numbers a channel's deliveries 1, 2, 3 … Acks handed over together (one mailbox drain) are held
/// in `pending`; ``flush()`` then acknowledges, with one `multiple` ack, everything below the lowest tag that is
/// still unsettled — only tags the application has settled are ever covered — and sends the tags above a gap
/// one by one. Nacks and rejects are sent at once (after a flush) and recorded with ``settledOtherwise(_:)``.
/// A value type with no I/O, unit-tested on its own.
struct AckCoalescer {
    /// Every tag below this one is settled.
    private(set) var lowestUnsettled: UInt64 = 1
    private var settledAbove: Set<UInt64> = []
    private var pending: [UInt64] = []

    init() {}

    var hasPending: Bool { !pending.isEmpty }

    /// Records an ack to send at the next flush.
    mutating func ack(_ tag: UInt64) { pending.append(tag) }

    /// Records a tag settled by a nack or reject that was sent already.
    mutating func settledOtherwise(_ tag: UInt64) { markSettled(tag) }

    /// The frames that acknowledge the pending acks: one `multiple` ack up to `multipleUpTo`, then `singles`.
    mutating func flush() -> (multipleUpTo: UInt64?, singles: [UInt64]) {
        guard !pending.isEmpty else { return (nil, []) }
        for tag in pending { markSettled(tag) }
        let boundary = lowestUnsettled
        // The multiple ack ends at the highest tag of *this* batch below the boundary: a tag below
        // it that was settled earlier (acked alone, nacked, rejected) is no longer outstanding,
        // which the broker ignores inside the range but refuses as its end ("unknown delivery tag").
        var highestCovered: UInt64?
        var singles: [UInt64] = []
        for tag in pending {
            if tag < boundary {
                highestCovered = max(highestCovered ?? tag, tag)
            } else {
                singles.append(tag)
            }
        }
        pending.removeAll(keepingCapacity: true)
        return (highestCovered, singles)
    }

    private mutating func markSettled(_ tag: UInt64) {
        if tag == lowestUnsettled {
            lowestUnsettled += 1
            while settledAbove.remove(lowestUnsettled) != nil { lowestUnsettled += 1 }
        } else if tag > lowestUnsettled {
            settledAbove.insert(tag)
        }
    }
}
