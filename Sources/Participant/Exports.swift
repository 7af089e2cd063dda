// `import Participant` is all a service needs: the saga model, the RabbitMQ bus, the embedded
// SQLite store and swift-log come with it.
@_exported public import Logging
@_exported public import SagaCore
@_exported public import SagaRabbitMQ
@_exported public import SagaSQLite
@_exported public import ServiceLifecycle
