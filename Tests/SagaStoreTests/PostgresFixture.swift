/// PostgreSQL is not wired yet.
func makePostgresStore() async throws -> StoreUnderTest? { nil }
