/// The minimum average rate of a download (`network.minimumBytesPerSecond` over
/// `network.rateWindowSeconds`): what makes a server that trickles a few bytes a second, on every
/// connection, give up the device instead of holding it (and the global lock) forever.
///
/// Time counts only while the reader waits for the network (connecting, waiting for bytes,
/// pausing before a retry): a device busy decoding or writing does not make its server look
/// slow. Over any `window` seconds of such waiting, at least `minimum × window` bytes must arrive;
/// the first `window` seconds are a grace period. The clock is kept in whole-second buckets, so
/// memory is bounded by the window, whatever the download's size.
struct RateBound {
    let minimum: Int64
    let window: Int
    /// Seconds waited so far.
    private(set) var waited: Double = 0
    /// Bytes received per second of waiting, for the last `window + 1` seconds: bucket k holds the
    /// bytes of second `first + k`.
    private var buckets: [Int64] = []
    private var first = 0

    /// - Parameters:
    ///   - minimum: bytes per second; 0 turns the bound off.
    ///   - window: seconds (at least 1).
    init(minimum: Int64, window: Int) {
        self.minimum = minimum
        self.window = max(1, window)
    }

    var isEnabled: Bool { minimum > 0 }

    /// Records `seconds` more of waiting, at the end of which `bytes` arrived.
    mutating func record(waited seconds: Double, bytes: Int64) {
        waited += max(0, seconds)
        let second = Int(waited)
        if buckets.isEmpty { first = second }
        while first + buckets.count <= second { buckets.append(0) }
        buckets[second - first] += bytes
        // Keep only what a window can still reach.
        let keepFrom = second - window
        if keepFrom > first {
            buckets.removeFirst(min(keepFrom - first, buckets.count))
            first = keepFrom
        }
    }

    /// Bytes received in the last `window` seconds of waiting.
    var bytesInWindow: Int64 {
        let from = Int(waited) - window + 1
        var total: Int64 = 0
        for (offset, bytes) in buckets.enumerated() where first + offset >= from { total += bytes }
        return total
    }

    /// Whether the download is too slow now: past the grace period, and fewer than
    /// `minimum × window` bytes in the last window.
    var isTooSlow: Bool {
        isEnabled && waited >= Double(window) && bytesInWindow < minimum * Int64(window)
    }

    /// How many more seconds the reader may wait with no byte arriving before ``isTooSlow``
    /// holds (0 when it holds now); nil when the bound is off.
    var secondsLeft: Double? {
        guard isEnabled else { return nil }
        let needed = minimum * Int64(window)
        // Walk forward second by second: at waiting time t, the window holds the buckets of
        // seconds t - window + 1 … t; with no new bytes, old buckets leave it one by one.
        var t = max(Int(waited), window)
        while true {
            let from = t - window + 1
            var total: Int64 = 0
            for (offset, bytes) in buckets.enumerated() where first + offset >= from { total += bytes }
            if total < needed { return max(0, Double(t) - waited) }
            t += 1
            if from > first + buckets.count { return max(0, Double(t) - waited) }
        }
    }
}
