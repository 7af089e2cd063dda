import Testing

@Test func placeholder_SagaBusTests() {}
