import FerrySystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The generators' pool of large tables: blocks are huge-page aligned, given back blocks are
/// reused by requests they fit (but not by much smaller ones), and the pool keeps no more blocks
/// and bytes than it was told.
@Suite struct HugePageMemoryTests {
    static let page = HugePageMemory.pageSize

    @Test func blocksAreAlignedAndAGivenBackBlockIsReused() throws {
        let pool = HugePageMemory(keep: 4, keepBytes: 64 << 20)
        let first = try #require(pool.allocate(byteCount: 3 << 20))
        #expect(Int(bitPattern: first) % Self.page == 0)
        // The whole rounded-up block is usable.
        memset(first, 0xA5, 4 << 20)
        #expect(pool.release(first))
        #expect(pool.keptBytes == 4 << 20)
        // A request it fits gets it back; the pool then keeps nothing.
        let second = try #require(pool.allocate(byteCount: 4 << 20))
        #expect(second == first)
        #expect(pool.keptBytes == 0)
        #expect(pool.release(second))
    }

    @Test func aMuchSmallerRequestDoesNotTakeABigBlock() throws {
        let pool = HugePageMemory(keep: 4, keepBytes: 64 << 20)
        let big = try #require(pool.allocate(byteCount: 16 << 20))
        #expect(pool.release(big))
        let small = try #require(pool.allocate(byteCount: 2 << 20))
        #expect(small != big)
        #expect(pool.keptBytes == 16 << 20)
        #expect(pool.release(small))
    }

    @Test func thePoolKeepsAtMostItsCountAndBytes() throws {
        let pool = HugePageMemory(keep: 2, keepBytes: 10 << 20)
        let blocks = try (1...3).map { _ in try #require(pool.allocate(byteCount: 4 << 20)) }
        for block in blocks { #expect(pool.release(block)) }
        // Three 4 MiB blocks given back: two fit the count, and 8 MiB the byte bound.
        #expect(pool.keptBytes == 8 << 20)
        let fourth = try #require(pool.allocate(byteCount: 8 << 20))
        #expect(pool.release(fourth))
        // 8 MiB plus any 4 MiB block is over 10 MiB: only the biggest stays.
        #expect(pool.keptBytes == 8 << 20)
    }

    @Test func aPointerItDidNotHandOutIsLeftAlone() throws {
        let pool = HugePageMemory(keep: 2, keepBytes: 10 << 20)
        let other = try #require(malloc(64))
        #expect(!pool.release(other))
        free(other)
        let block = try #require(pool.allocate(byteCount: 1))
        #expect(pool.release(block))
        // Given back twice: the second time it is not the pool's to take.
        #expect(!pool.release(block))
    }

    @Test(arguments: [1, 1000, 3 << 20])
    func aTableIsFilledWithItsValue(count: Int) {
        let table = HugePageTable(count: count, filledWith: -1)
        #expect(table.elements.count == count)
        #expect(table.elements.allSatisfy { $0 == -1 })
    }
}
