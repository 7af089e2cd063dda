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
    private let key = Mutex<SymmetricKey?>(nil)

    /// Sets the key read from the store (an empty one, which only a changed table holds, is not
    /// used: nothing is sealed).
    func use(key bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let symmetric = SymmetricKey(data: bytes)
        key.withLock { $0 = symmetric }
    }

    /// A fresh random key, for the first process that opens the store.
    static func newKey() -> [UInt8] {
        SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
    }

    func seal(_ bytes: [UInt8]) -> String? {
        guard let key = key.withLock({ $0 }) else { return nil }
        return Hex.text(HMAC<SHA256>.authenticationCode(for: bytes, using: key))
    }

    func verifies(_ seal: String, of bytes: [UInt8]) -> Bool {
        guard let key = key.withLock({ $0 }), seal.utf8.count == 64, let code = Hex.bytes(seal) else {
            return false
        }
        return HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: bytes, using: key)
    }
}
