/// An error from a ``MessageBus``: what happened, and what to do about it.
///
/// `description` is safe to log (no message bodies, no passwords).
public struct BusError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case unreachable, authenticationFailed, vhostNotFound, accessRefused
            case preconditionFailed, notFound, unroutable, nacked, messageTooLarge
            case connectionLost, closed, protocolError, invalidURL, invalidArgument, tlsVerificationFailed
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The broker cannot be reached (host:port).
        public static let unreachable = Code(.unreachable)
        /// Wrong user name or password.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The virtual host does not exist.
        public static let vhostNotFound = Code(.vhostNotFound)
        /// The user may not access a resource (vhost, queue, exchange).
        public static let accessRefused = Code(.accessRefused)
        /// A declaration conflicts with an existing one (for example a queue redeclared with other
        /// arguments).
        public static let preconditionFailed = Code(.preconditionFailed)
        /// A queue or exchange does not exist.
        public static let notFound = Code(.notFound)
        /// A mandatory message matched no queue.
        public static let unroutable = Code(.unroutable)
        /// The broker refused to take responsibility for a message.
        public static let nacked = Code(.nacked)
        /// The body is larger than the configured limit.
        public static let messageTooLarge = Code(.messageTooLarge)
        /// The connection was lost before the operation completed.
        public static let connectionLost = Code(.connectionLost)
        /// The bus has been shut down.
        public static let closed = Code(.closed)
        /// The broker or the client broke the protocol.
        public static let protocolError = Code(.protocolError)
        /// The connection URL cannot be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// An argument is invalid.
        public static let invalidArgument = Code(.invalidArgument)
        /// The broker's TLS certificate could not be verified (unknown CA, or it does not name the host).
        public static let tlsVerificationFailed = Code(.tlsVerificationFailed)

        /// The code's name.
        public var description: String { base.rawValue }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened, in words.
    public var message: String
    /// What to do about it, when there is something to do.
    public var recoverySuggestion: String?
    /// Whether retrying the same operation later may succeed.
    public var isRetryable: Bool

    /// Creates an error.
    public init(_ code: Code, _ message: String, recoverySuggestion: String? = nil, isRetryable: Bool = false) {
        self.code = code
        self.message = message
        self.recoverySuggestion = recoverySuggestion
        self.isRetryable = isRetryable
    }

    /// The message followed by the recovery suggestion.
    public var description: String {
        if let recoverySuggestion { return "\(message) (\(recoverySuggestion))" }
        return message
    }
}
