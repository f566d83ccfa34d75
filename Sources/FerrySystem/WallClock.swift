#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Wall-clock time as Ferry records it in state files: UTC, ISO 8601, seconds.
public enum WallClock {
    /// Seconds since the epoch.
    public static func now() -> Int64 { Int64(time(nil)) }

    /// `2026-11-25T13:43:30Z` for `seconds` since the epoch (now by default).
    public static func iso8601(_ seconds: Int64 = now()) -> String {
        var value = time_t(seconds)
        var parts = tm()
        gmtime_r(&value, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
