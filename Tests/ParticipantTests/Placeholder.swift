import Testing

@Test func placeholder_ParticipantTests() {}
