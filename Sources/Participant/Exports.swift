// `import Participant` is all a service needs to run on RabbitMQ: the saga model, the RabbitMQ
// bus, swift-log and swift-service-lifecycle come with it. Stores are products of their own
// (`SagaSQLite`, `SagaPostgres`): import the one the service uses.
@_exported public import Logging
@_exported public import SagaCore
@_exported public import SagaRabbitMQ
@_exported public import ServiceLifecycle
