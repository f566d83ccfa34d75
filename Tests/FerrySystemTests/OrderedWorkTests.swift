import FerrySystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `inOrder`: results come back in order whatever order the workers finish in, no item starts
/// more than the window ahead of the one handed over, and an error from the consumer stops it.
@Suite struct OrderedWorkTests {
    /// Counts started items and the furthest any item got ahead of the consumer.
    final class Probe: @unchecked Sendable {
        private var mutex = pthread_mutex_t()
        private(set) var started = 0
        private(set) var taken = 0
        private(set) var furthestAhead = 0

        init() { pthread_mutex_init(&mutex, nil) }

        func start(_ item: Int) {
            pthread_mutex_lock(&mutex)
            started += 1
            furthestAhead = max(furthestAhead, item - taken)
            pthread_mutex_unlock(&mutex)
        }

        func take() {
            pthread_mutex_lock(&mutex)
            taken += 1
            pthread_mutex_unlock(&mutex)
        }
    }

    @Test(arguments: [1, 2, 3])
    func resultsComeInOrderWithinTheWindow(threads: Int) throws {
        let probe = Probe()
        var results: [Int] = []
        try inOrder(
            count: 200, threads: threads, window: 4,
            work: { item in
                probe.start(item)
                // Uneven work: every seventh item is slow, so later ones finish first.
                usleep(item % 7 == 0 ? 3000 : 100)
                return item * item
            }
        ) { (value) throws(FerryError) in
            probe.take()
            results.append(value)
        }
        #expect(results == (0..<200).map { $0 * $0 })
        #expect(probe.started == 200)
        #expect(probe.furthestAhead <= 4)
    }

    @Test func anErrorFromTheConsumerStopsTheWork() {
        let probe = Probe()
        var handed = 0
        #expect(throws: FerryError.self) {
            try inOrder(
                count: 1000, threads: 2, window: 3,
                work: { item in
                    probe.start(item)
                    usleep(200)
                    return item
                }
            ) { (value) throws(FerryError) in
                handed += 1
                if value == 10 { throw FerryError(code: .io, message: "stop at 10") }
            }
        }
        #expect(handed == 11)
        // Items 0...10 were taken; at most the window's worth more were started.
        #expect(probe.started <= 11 + 3)
    }

    @Test func noItems() throws {
        var called = false
        try inOrder(count: 0, threads: 2, window: 2, work: { $0 }) { (_: Int) throws(FerryError) in called = true }
        #expect(!called)
    }
}
