import Testing

@testable import SagaCore

@Suite("UniqueTag")
struct UniqueTagTests {
    @Test("tags are distinct lowercase hexadecimal of the asked length, also across tasks")
    func tagsAreDistinctHexadecimal() async {
        let tags = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<4 { group.addTask { (0..<2_000).map { _ in UniqueTag.next() } } }
            return await group.reduce(into: []) { $0 += $1 }
        }
        #expect(Set(tags).count == 8_000)
        #expect(tags.allSatisfy { $0.count == 16 && $0.allSatisfy { "0123456789abcdef".contains($0) } })
        let short = (0..<1_000).map { _ in UniqueTag.next(length: 8) }
        #expect(Set(short).count == 1_000 && short.allSatisfy { $0.count == 8 })
    }
}
