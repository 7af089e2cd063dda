import Testing

@Test func placeholder_SagaStoreTests() {}
