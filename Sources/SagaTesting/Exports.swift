// `import SagaTesting` is all a test of handlers needs: the handler registry, `SagaContext` and
// the saga model come with it, as they do with `import Participant` in the service.
@_exported public import Participant
