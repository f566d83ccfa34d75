import CFerryShims

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
        // Four digits, as parseISO8601 reads them: years 0–999 too (a parsed time may be in them).
        let year = parts.tm_year + 1900
        let yearText = (0..<1000).contains(year) ? String("000\(year)".suffix(4)) : "\(year)"
        return
            "\(yearText)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}

extension WallClock {
    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC; fractional seconds and `+00:00` accepted) into seconds
    /// since the epoch; nil for anything else.
    public static func parseISO8601(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
            bytes[10] == UInt8(ascii: "T") || bytes[10] == UInt8(ascii: " "), bytes[13] == UInt8(ascii: ":"),
            bytes[16] == UInt8(ascii: ":")
        else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for byte in bytes[range] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
            let minute = number(14..<16), let second = number(17..<19), (1...12).contains(month),
            (1...31).contains(day),
            hour < 24, minute < 60, second < 61
        else { return nil }
        var rest = bytes[19...]
        if rest.first == UInt8(ascii: ".") {
            rest = rest.dropFirst()
            let digits = rest.prefix { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
            guard !digits.isEmpty else { return nil }
            rest = rest.dropFirst(digits.count)
        }
        let zone = String(decoding: rest, as: UTF8.self)
        guard zone == "Z" || zone == "+00:00" || zone == "+0000" else { return nil }
        // Days from the civil date (proleptic Gregorian), independent of the C library's time zone.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = Int64(era * 146_097 + dayOfEra - 719_468)
        return days * 86_400 + Int64(hour * 3600 + minute * 60 + second)
    }
}

extension WallClock {
    /// When this binary was built (from the C compiler's `__DATE__`/`__TIME__`), in seconds since
    /// the epoch: the trusted time is never earlier than this.
    public static var buildTime: Int64 {
        parseCDate(String(cString: CFerryShims_build_date()), time: String(cString: CFerryShims_build_time())) ?? 0
    }

    /// Parses C's `__DATE__` ("Nov 25 2026" / "Nov  5 2026") and `__TIME__` ("14:20:00") as UTC.
    public static func parseCDate(_ date: String, time: String) -> Int64? {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let parts = date.split(separator: " ")
        guard parts.count == 3, let month = months.firstIndex(of: String(parts[0])), let day = Int(parts[1]),
            let year = Int(parts[2])
        else { return nil }
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return parseISO8601("\(year)-\(two(month + 1))-\(two(day))T\(time)Z")
    }
}

extension WallClock {
    /// Seconds on the monotonic clock (for rates and timeouts; unaffected by clock changes).
    public static func monotonicSeconds() -> Double { ChildProcess.monotonicSeconds() }

    /// Sleeps for `seconds` (restarted after signals).
    public static func sleep(seconds: Double) {
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
    }
}
