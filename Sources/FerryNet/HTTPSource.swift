internal import CCurl
import FerrySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A bundle (or any file) read over HTTPS with pinned TLS, as a sequential ``ByteSource``.
///
/// Nothing is stored: bytes go from the socket to the reader. A connection that breaks or
/// stalls is reopened with a `Range` request from where it stopped (bounded retries with a
/// doubling pause); ``skip(_:)`` over more than 1 MiB also reopens with a `Range` request,
/// which is how an install resumed after a power cut avoids downloading what it already wrote.
/// Every reopened response must show the first response's `ETag`, `Last-Modified` and size:
/// a file replaced on the server fails with `.contentChanged` instead of mixing two files
/// (and the signed chunk hashes would catch a server that lies about them).
public final class HTTPSource: ByteSource {
    public let url: String
    public let sourceName: String
    /// The size of the file on the server, once the first response said it.
    public private(set) var totalBytes: Int64?
    /// The offset of the next byte ``read(into:)`` returns.
    public private(set) var position: Int64 = 0
    /// Connections reopened after failures (for tests and logs).
    public private(set) var reconnections = 0
    /// Requests sent, including redirects and range requests.
    public private(set) var requests = 0

    private let options: TransportOptions
    private let logger: Logger
    private var transfer: CurlTransfer?
    /// The offset of the next byte the open transfer delivers (it may be behind ``position``).
    private var transferOffset: Int64 = 0
    private var validators: (etag: String?, lastModified: String?)?
    /// The HTTP status of the last response (0 before the first).
    public private(set) var lastStatus = 0
    /// The size the file must have (the update index's entry): a response that says otherwise is
    /// refused as soon as its headers arrive.
    public let expectedSize: Int64?
    /// The minimum average rate (``TransportOptions/minimumBytesPerSecond``).
    private var rate: RateBound

    /// The first request asks only for this much (the manifest and signatures are at the start), so
    /// that a resumed install that jumps ahead has not already pulled megabytes into socket buffers.
    static let firstWindow: Int64 = 256 << 10
    /// The end of the range the open transfer asked for, when it asked for a bounded one.
    private var windowEnd: Int64?

    /// Skips shorter than this read through the open connection instead of reopening it.
    /// (A new connection costs a handshake and a round trip; reading through 1 MiB on a slow link costs more.)
    static let reopenThreshold: Int64 = 1 << 20

    /// - Parameter expectedSize: the size the file must have, when known (an update index entry).
    /// - Throws: `.insecureURL` unless `url` is https://; `.pinMismatch` if no pin is configured for its host.
    public init(url: String, options: TransportOptions, logger: Logger, expectedSize: Int64? = nil) throws(FerryError) {
        let host = try HTTPSURL.host(of: url)
        guard !options.pins.pins(for: host).isEmpty else { throw HTTPSURL.noPin(for: host) }
        self.url = url
        self.sourceName = url
        self.options = options
        self.logger = logger
        self.expectedSize = expectedSize
        rate = RateBound(minimum: Int64(options.minimumBytesPerSecond), window: options.rateWindowSeconds)
    }

    /// Reads the next bytes. Every wait is bounded: a stall (no byte for `stallTimeoutSeconds`)
    /// or a broken connection is retried with a range request (`retries` in a row without
    /// progress, `maximumReconnects` in all), and the whole transfer gives up once it is slower
    /// than `minimumBytesPerSecond` over `rateWindowSeconds` of waiting.
    /// - Throws: `.tooSlow` when a bound gave up; the last failure when the retries ran out.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        var failures = 0
        while true {
            if rate.isTooSlow { throw tooSlow() }
            let started = WallClock.monotonicSeconds()
            let deadline = rate.secondsLeft.map { started + $0 }
            do {
                let count = try readOnce(into: buffer, deadline: deadline)
                rate.record(waited: WallClock.monotonicSeconds() - started, bytes: Int64(count))
                return count
            } catch {
                rate.record(waited: WallClock.monotonicSeconds() - started, bytes: 0)
                transfer = nil
                if error.code == .tooSlow { throw tooSlow() }
                guard isRetryable(error), failures < options.retries else {
                    throw failures == 0 ? error : error.prefixed("after \(failures) retries")
                }
                guard reconnections < options.maximumReconnects else {
                    throw FerryError(
                        code: .tooSlow,
                        message:
                            "\(url): gave up after \(reconnections) reconnections (network.maximumReconnects), the last after: \(error.message)"
                    )
                }
                failures += 1
                reconnections += 1
                var delay = min(options.retryDelaySeconds * Double(1 << min(failures - 1, 16)), 30)
                if let left = rate.secondsLeft { delay = min(delay, left) }
                logger.warning(
                    "Download interrupted; resuming",
                    metadata: [
                        "url": "\(url)", "offset": "\(position)", "retry": "\(failures)", "error": "\(error.message)",
                    ])
                WallClock.sleep(seconds: delay)
                rate.record(waited: delay, bytes: 0)
            }
        }
    }

    private func tooSlow() -> FerryError {
        FerryError(
            code: .tooSlow,
            message: "\(url): gave up: \(rate.bytesInWindow) bytes arrived in the last \(rate.window) s of waiting, "
                + "less than network.minimumBytesPerSecond (\(rate.minimum) bytes/s)")
    }

    public func skip(_ count: Int64) throws(FerryError) {
        precondition(count >= 0)
        position += count
        if transfer != nil, position - transferOffset > Self.reopenThreshold { transfer = nil }
    }

    /// - Parameter deadline: when (monotonic seconds) to stop waiting with `.tooSlow`.
    private func readOnce(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?) throws(FerryError) -> Int {
        if let totalBytes, position >= totalBytes { return 0 }
        if transfer == nil { transfer = try open(at: position, deadline: deadline) }
        let transfer = transfer!
        // Bytes before `position`: skipped, or sent again by a server that ignores ranges.
        while transferOffset < position {
            let count = try transfer.read(
                into: UnsafeMutableRawBufferPointer(
                    rebasing: buffer[..<Int(min(Int64(buffer.count), position - transferOffset))]),
                deadline: deadline)
            guard count > 0 else { return try endOfBody() }
            transferOffset += Int64(count)
        }
        let count = try transfer.read(into: buffer, deadline: deadline)
        guard count > 0 else {
            if let windowEnd, transferOffset == windowEnd, totalBytes.map({ windowEnd < $0 }) ?? false {
                // The first window is done: go on with an open-ended request.
                self.transfer = nil
                return try readOnce(into: buffer, deadline: deadline)
            }
            return try endOfBody()
        }
        transferOffset += Int64(count)
        position += Int64(count)
        return count
    }

    private func endOfBody() throws(FerryError) -> Int {
        transfer = nil
        if let totalBytes, position < totalBytes {
            throw FerryError(
                code: .network, message: "\(url): the connection closed after \(position) of \(totalBytes) bytes")
        }
        return 0
    }

    private func isRetryable(_ error: FerryError) -> Bool {
        error.code == .network || error.code == .timeout
            || (error.code == .httpStatus && (502...504).contains(lastStatus))
    }

    /// Sends a GET from `offset`, following https-only redirects, and checks the response.
    private func open(at offset: Int64, deadline: Double?) throws(FerryError) -> CurlTransfer {
        var location = url
        let windowed = requests == 0 && offset == 0
        for _ in 0...options.maximumRedirects {
            let host = try HTTPSURL.host(of: location)
            let pins = options.pins.pins(for: host)
            guard !pins.isEmpty else { throw HTTPSURL.noPin(for: host) }
            let range: Range<Int64>? = windowed ? 0..<Self.firstWindow : offset > 0 ? offset..<Int64.max : nil
            requests += 1
            let transfer = try CurlTransfer(url: location, mode: .body(range: range), pins: pins, options: options)
            let response = try transfer.awaitResponse(deadline: deadline)
            lastStatus = response.status
            switch response.status {
            case 200, 206:
                try accept(response, from: location, at: offset)
                windowEnd = response.status == 206 && range?.upperBound != .max ? range?.upperBound : nil
                return transfer
            case 301, 302, 303, 307, 308:
                guard let target = response.headers["location"], let next = HTTPSURL.resolve(target, against: location)
                else {
                    throw FerryError(
                        code: .httpStatus,
                        message: "\(location): redirect (\(response.status)) without a usable Location")
                }
                guard next.lowercased().hasPrefix("https://") else {
                    throw FerryError(
                        code: .insecureURL, message: "\(location) redirects to '\(next)', which is not https://")
                }
                logger.debug("Following a redirect", metadata: ["from": "\(location)", "to": "\(next)"])
                location = next
            case 416 where offset > 0:
                throw FerryError(
                    code: .contentChanged,
                    message: "\(location): the server has no byte \(offset) any more (416): the file changed")
            default:
                throw FerryError(
                    code: .httpStatus,
                    message: "\(location): the server answered \(response.status) \(response.reason)".trimmedEnd())
            }
        }
        throw FerryError(code: .httpStatus, message: "\(url): more than \(options.maximumRedirects) redirects")
    }

    /// Checks a 200 or 206 response against the first one, and learns the file's size.
    private func accept(_ response: CurlTransfer.Response, from location: String, at offset: Int64) throws(FerryError) {
        let etag = response.headers["etag"]
        let lastModified = response.headers["last-modified"]
        if let validators {
            if let old = validators.etag, etag != old {
                throw FerryError(
                    code: .contentChanged,
                    message:
                        "\(location) changed on the server during the download (ETag \(old) became \(etag ?? "none"))")
            }
            if let old = validators.lastModified, lastModified != old {
                throw FerryError(
                    code: .contentChanged,
                    message:
                        "\(location) changed on the server during the download (Last-Modified \(old) became \(lastModified ?? "none"))"
                )
            }
        } else {
            validators = (etag, lastModified)
        }
        var total: Int64?
        if response.status == 206 {
            // "bytes <first>-<last>/<total>"
            guard let range = response.headers["content-range"], range.hasPrefix("bytes "),
                let dash = range.firstIndex(of: "-"), let slash = range.firstIndex(of: "/"),
                let first = Int64(range[range.index(range.startIndex, offsetBy: 6)..<dash])
            else {
                throw FerryError(
                    code: .httpStatus, message: "\(location): a 206 response without a usable Content-Range")
            }
            guard first == offset else {
                throw FerryError(
                    code: .httpStatus,
                    message: "\(location): asked for bytes from \(offset), the server sent from \(first)")
            }
            total = Int64(range[range.index(after: slash)...])
            transferOffset = offset
        } else {
            total = response.headers["content-length"].flatMap { Int64($0) }
            // A server without range support sends the whole file again: read past what we have.
            transferOffset = 0
        }
        if let expectedSize, let total, total != expectedSize {
            throw FerryError(
                code: .notIndexed,
                message:
                    "\(location) is \(total) bytes, not the \(expectedSize) bytes the update index says (refused before its content was read)"
            )
        }
        if let known = totalBytes, let total, total != known {
            throw FerryError(
                code: .contentChanged,
                message: "\(location) changed on the server during the download (\(known) bytes became \(total))")
        }
        totalBytes = totalBytes ?? total
    }
}

/// URL checks shared by every request.
enum HTTPSURL {
    /// The lowercase host of an https:// URL.
    /// - Throws: `.insecureURL` for any other scheme, `.usage` for a malformed URL.
    static func host(of url: String) throws(FerryError) -> String {
        guard url.lowercased().hasPrefix("https://") else {
            throw FerryError(
                code: .insecureURL, message: "'\(url)' is not an https:// URL: Ferry never downloads over plain HTTP")
        }
        guard let handle = curl_url() else {
            throw FerryError(code: .internal, message: "libcurl could not parse a URL")
        }
        defer { curl_url_cleanup(handle) }
        var host: UnsafeMutablePointer<CChar>?
        guard curl_url_set(handle, CURLUPART_URL, url, 0) == CURLUE_OK,
            curl_url_get(handle, CURLUPART_HOST, &host, 0) == CURLUE_OK, let host
        else {
            throw FerryError(code: .usage, message: "'\(url)' is not a valid URL")
        }
        defer { curl_free(host) }
        var name = String(cString: host).lowercased()
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        return name
    }

    /// `reference` (a Location header: absolute, or relative to `base`) as an absolute URL.
    static func resolve(_ reference: String, against base: String) -> String? {
        guard let handle = curl_url() else { return nil }
        defer { curl_url_cleanup(handle) }
        var absolute: UnsafeMutablePointer<CChar>?
        guard curl_url_set(handle, CURLUPART_URL, base, 0) == CURLUE_OK,
            curl_url_set(handle, CURLUPART_URL, reference, 0) == CURLUE_OK,
            curl_url_get(handle, CURLUPART_URL, &absolute, 0) == CURLUE_OK, let absolute
        else { return nil }
        defer { curl_free(absolute) }
        return String(cString: absolute)
    }

    static func noPin(for host: String) -> FerryError {
        FerryError(
            code: .pinMismatch,
            message:
                "no TLS pin is configured for host '\(host)': add one to tlsPins ('ferry pin https://\(host)/' prints the server's)"
        )
    }
}

extension String {
    fileprivate func trimmedEnd() -> String {
        var copy = self
        while copy.last == " " { copy.removeLast() }
        return copy
    }
}
