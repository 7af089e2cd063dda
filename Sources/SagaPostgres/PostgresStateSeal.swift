import Crypto
import SagaCore
import Synchronization

/// Seals the copies of saga states that commands carry (``SagaCore/SagaStateSeal``) with
/// HMAC-SHA-256 under a random 256-bit key kept in the store's schema (`sagakit_keys`, made by the
/// first process that opens the store), so that every process of the store shares it and nobody
/// without access to the database can make a copy that verifies.
///
/// Until ``PostgresSagaStore/run()`` has read the key it seals nothing and verifies nothing:
/// commands then carry no copy, and participants load their sagas.
final class PostgresStateSeal: SagaStateSeal {
    /// The HMAC already keyed (its inner and outer pads hashed): each seal and check copies it
    /// and hashes only the message, instead of deriving the pads from the key every time (which
    /// was about as much work as hashing a state copy).
    private let keyed = Mutex<HMAC<SHA256>?>(nil)

    /// Sets the key read from the store (an empty one, which only a changed table holds, is not
    /// used: nothing is sealed).
    func use(key bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let mac = HMAC<SHA256>(key: SymmetricKey(data: bytes))
        keyed.withLock { $0 = mac }
    }

    /// A fresh random key, for the first process that opens the store.
    static func newKey() -> [UInt8] {
        SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
    }

    func seal(_ bytes: [UInt8]) -> String? {
        code(of: bytes).map { Hex.text($0) }
    }

    func verifies(_ seal: String, of bytes: [UInt8]) -> Bool {
        guard seal.utf8.count == 64, let expected = Hex.bytes(seal), let actual = code(of: bytes) else { return false }
        // swift-crypto's comparison of a code with bytes takes the same time wherever they differ.
        return actual == expected
    }

    /// The message's code under the store's key; `nil` before the key is known.
    private func code(of bytes: [UInt8]) -> HashedAuthenticationCode<SHA256>? {
        guard var mac = keyed.withLock({ $0 }) else { return nil }
        mac.update(data: bytes)
        return mac.finalize()
    }
}
