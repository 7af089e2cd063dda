import Testing

@Test func placeholder_SagaCoreTests() {}
