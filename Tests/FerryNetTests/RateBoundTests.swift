import Testing

@testable import FerryNet

/// The minimum average rate of a download, on a simulated waiting clock (no network, no sleeps).
@Suite struct RateBoundTests {
    @Test func aSteadyRateAboveTheMinimumNeverGivesUp() {
        var bound = RateBound(minimum: 1000, window: 5)
        for _ in 0..<600 {
            bound.record(waited: 0.1, bytes: 150)
            #expect(!bound.isTooSlow)
        }
    }

    @Test func aTrickleGivesUpOnceTheWindowHoldsTooLittle() {
        var bound = RateBound(minimum: 1000, window: 5)
        // 1 MB at once, then 10 bytes a second: the megabyte leaves the window 5 s later.
        bound.record(waited: 0.2, bytes: 1_000_000)
        var seconds = 0.2
        while !bound.isTooSlow {
            bound.record(waited: 0.1, bytes: 1)
            seconds += 0.1
            #expect(seconds < 10, "never gave up")
            if seconds >= 10 { return }
        }
        // Given up between window - 1 and window seconds after the megabyte.
        #expect(seconds - 0.2 >= 4 - 0.01 && seconds - 0.2 <= 5 + 0.01, "gave up after \(seconds) s")
    }

    @Test func theFirstWindowIsAGracePeriod() {
        var bound = RateBound(minimum: 1000, window: 5)
        bound.record(waited: 4.9, bytes: 0)
        #expect(!bound.isTooSlow)
        bound.record(waited: 0.2, bytes: 0)
        #expect(bound.isTooSlow)
    }

    /// `secondsLeft` says how long a wait may last with no byte: waiting exactly that long makes
    /// the bound hold, and a little less does not.
    @Test func secondsLeftIsWhenTheBoundWouldHold() throws {
        var bound = RateBound(minimum: 100, window: 10)
        bound.record(waited: 1.5, bytes: 700)
        bound.record(waited: 3.0, bytes: 700)
        let left = try #require(bound.secondsLeft)
        var shorter = bound
        shorter.record(waited: max(0, left - 0.6), bytes: 0)
        #expect(!shorter.isTooSlow, "left \(left)")
        var exact = bound
        exact.record(waited: left, bytes: 0)
        #expect(exact.isTooSlow, "left \(left)")
    }

    @Test func aMinimumOfZeroTurnsTheBoundOff() {
        var bound = RateBound(minimum: 0, window: 1)
        bound.record(waited: 1000, bytes: 0)
        #expect(!bound.isTooSlow && bound.secondsLeft == nil)
    }

    @Test func memoryStaysBoundedByTheWindow() {
        var bound = RateBound(minimum: 1, window: 3)
        for _ in 0..<100_000 { bound.record(waited: 0.5, bytes: 10) }
        #expect(bound.bytesInWindow <= 70 && !bound.isTooSlow)
    }
}
