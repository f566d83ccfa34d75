internal import CCurl
internal import CFerryShims
import FerrySystem

#if canImport(Glibc)
import Glibc
#endif

/// One HTTPS GET on libcurl, read by pulling (``read(into:)``), never by callbacks into the caller.
///
/// The TLS policy (protocol versions, pins, optional chain check) is installed on every
/// connection through `CURLOPT_SSL_CTX_FUNCTION` (CFerryShims' `tls.c`), so a server that fails
/// it never receives the request. The transfer runs on its own thread (so that downloading and
/// TLS decryption overlap the caller's decoding and writing) into a ring buffer of
/// ``bufferSize`` bytes; when the ring is full the download waits for the caller. A transfer that
/// delivers nothing for the stall timeout while the caller waits is abandoned (`.timeout`).
///
/// `@unchecked Sendable`: everything the download thread and the caller share is guarded by `lock`.
final class CurlTransfer: @unchecked Sendable {
    struct Response {
        var status: Int
        var reason: String
        /// Header values by lowercase name (the last one wins).
        var headers: [String: String]
    }

    enum Mode {
        /// GET the URL; the body is read with ``read(into:)``.
        case body(range: Range<Int64>?)
        /// Connect and complete the TLS handshake only; no HTTP request is sent (`ferry pin`).
        case handshakeOnly
    }

    static let bufferSize = 4 << 20

    let url: String
    private let easy: UnsafeMutableRawPointer
    private let policy: UnsafeMutablePointer<CFerryShims_TLSPolicy>
    private let pinStorage: UnsafeMutableRawBufferPointer
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let stallTimeout: Double

    // Shared with the download thread, under `lock`.
    private let lock = ConditionLock()
    private let ring: UnsafeMutableRawBufferPointer
    private var ringStart = 0
    private var ringCount = 0
    private var finished: CURLcode?
    private var cancelled = false
    private var lastActivity = WallClock.monotonicSeconds()
    private var thread: pthread_t?
    private var pendingStatus = 0
    private var pendingReason = ""
    private var pendingHeaders: [String: String] = [:]
    /// The final response's status line and headers, once its header block is complete.
    private(set) var response: Response?
    private var abortedAfterHeaders = false

    private static let initialized: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

    init(url: String, mode: Mode, pins: [TLSPin], recordOnly: Bool = false, options: TransportOptions)
        throws(FerryError)
    {
        guard Self.initialized, let easy = curl_easy_init() else {
            throw FerryError(code: .internal, message: "libcurl could not be initialized")
        }
        self.url = url
        self.easy = easy
        if case .body = mode {
            ring = .allocate(byteCount: Self.bufferSize, alignment: 64)
        } else {
            ring = .allocate(byteCount: 1, alignment: 1)
        }
        self.stallTimeout = Double(options.stallTimeoutSeconds)
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

        // The pins as consecutive SHA-256 values: certificate pins first, then public-key pins.
        let certificatePins = pins.filter { $0.kind == .certificate }
        let publicKeyPins = pins.filter { $0.kind == .publicKey }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, 32 * pins.count), alignment: 16)
        for (index, pin) in (certificatePins + publicKeyPins).enumerated() {
            pin.sha256.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: storage[(32 * index)...]).copyMemory(from: $0)
            }
        }
        pinStorage = storage
        policy = .allocate(capacity: 1)
        policy.initialize(to: CFerryShims_TLSPolicy())
        let base = pinStorage.baseAddress!.assumingMemoryBound(to: UInt8.self)
        policy.pointee.certificate_pins = UnsafePointer(base)
        policy.pointee.certificate_pin_count = certificatePins.count
        policy.pointee.public_key_pins = UnsafePointer(base + 32 * certificatePins.count)
        policy.pointee.public_key_pin_count = publicKeyPins.count
        policy.pointee.verify_chain = options.caFile == nil ? 0 : 1
        policy.pointee.record_only = recordOnly ? 1 : 0

        try configure(mode: mode, options: options)
        if case .body = mode {
            var thread = pthread_t()
            let context = UnsafeMutableRawPointer(Unmanaged.passUnretained(self).toOpaque())
            guard pthread_create(&thread, nil, curlThreadMain, context) == 0 else {
                throw FerryError(code: .internal, message: "cannot start the download thread")
            }
            self.thread = thread
        }
    }

    deinit {
        // Stop the download thread (it notices within a second, see curlProgress) and wait for it.
        lock.withLock {
            cancelled = true
            lock.broadcast()
        }
        if let thread { pthread_join(thread, nil) }
        curl_easy_cleanup(easy)
        ring.deallocate()
        policy.deallocate()
        pinStorage.deallocate()
        errorBuffer.deallocate()
    }

    /// The download thread: one blocking transfer, then the result for the caller.
    fileprivate func runTransfer() {
        let code = curl_easy_perform(easy)
        lock.withLock {
            finished = code
            lock.broadcast()
        }
    }

    private func configure(mode: Mode, options: TransportOptions) throws(FerryError) {
        var failed: CURLoption?
        func set(_ option: CURLoption, _ value: Int) {
            if CCurl_easy_setopt_long(easy, option, value) != CURLE_OK { failed = failed ?? option }
        }
        func set(_ option: CURLoption, _ value: String?) {
            if CCurl_easy_setopt_string(easy, option, value) != CURLE_OK { failed = failed ?? option }
        }
        set(CURLOPT_URL, url)
        // https only, and redirects are never followed by libcurl: the caller checks each hop.
        set(CURLOPT_PROTOCOLS_STR, "https")
        set(CURLOPT_REDIR_PROTOCOLS_STR, "https")
        set(CURLOPT_FOLLOWLOCATION, 0)
        set(CURLOPT_SSLVERSION, Int(CURL_SSLVERSION_TLSv1_2) | Int(CURL_SSLVERSION_MAX_TLSv1_3))
        // The pin decides (tls.c); a CA file adds chain and host name verification on top.
        set(CURLOPT_SSL_VERIFYPEER, options.caFile == nil ? 0 : 1)
        set(CURLOPT_SSL_VERIFYHOST, options.caFile == nil ? 0 : 2)
        if let caFile = options.caFile { set(CURLOPT_CAINFO, caFile) }
        // A resumed TLS session would skip the certificate, and with it the pin check.
        set(CURLOPT_SSL_SESSIONID_CACHE, 0)
        if let certificate = options.clientCertificate {
            set(CURLOPT_SSLCERT, certificate)
            set(CURLOPT_SSLKEY, options.clientKey ?? certificate)
        }
        set(CURLOPT_CONNECTTIMEOUT, options.connectTimeoutSeconds)
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_TCP_KEEPALIVE, 1)
        set(CURLOPT_BUFFERSIZE, 512 * 1024)
        set(CURLOPT_USERAGENT, options.userAgent)
        set(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1)
        if CCurl_easy_setopt_ssl_ctx(easy, CURLOPT_SSL_CTX_FUNCTION, CFerryShims_tls_setup) != CURLE_OK
            || CCurl_easy_setopt_pointer(easy, CURLOPT_SSL_CTX_DATA, UnsafeMutableRawPointer(policy)) != CURLE_OK
        {
            failed = failed ?? CURLOPT_SSL_CTX_FUNCTION
        }
        if CCurl_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, UnsafeMutableRawPointer(errorBuffer)) != CURLE_OK {
            failed = failed ?? CURLOPT_ERRORBUFFER
        }
        switch mode {
        case .handshakeOnly:
            set(CURLOPT_CONNECT_ONLY, 1)
        case .body(let range):
            if let range {
                set(CURLOPT_RANGE, "\(range.lowerBound)-" + (range.upperBound == .max ? "" : "\(range.upperBound - 1)"))
            }
            let context = UnsafeMutableRawPointer(Unmanaged.passUnretained(self).toOpaque())
            set(CURLOPT_NOPROGRESS, 0)
            if CCurl_easy_setopt_xferinfo(easy, CURLOPT_XFERINFOFUNCTION, curlProgress) != CURLE_OK
                || CCurl_easy_setopt_pointer(easy, CURLOPT_XFERINFODATA, context) != CURLE_OK
                || CCurl_easy_setopt_write(easy, CURLOPT_WRITEFUNCTION, curlWriteBody) != CURLE_OK
                || CCurl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, context) != CURLE_OK
                || CCurl_easy_setopt_write(easy, CURLOPT_HEADERFUNCTION, curlWriteHeader) != CURLE_OK
                || CCurl_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, context) != CURLE_OK
            {
                failed = failed ?? CURLOPT_WRITEFUNCTION
            }
        }
        if let failed {
            throw FerryError(
                code: .unsupported,
                message:
                    "this libcurl does not support option \(failed.rawValue) (Ferry needs libcurl ≥ 7.85 with OpenSSL)")
        }
    }

    // MARK: - Reading

    /// Waits until the transfer's response headers are complete.
    /// - Throws: the transfer's error (`.network`, `.timeout`, `.tlsHandshake`, `.pinMismatch`, …)
    ///   if it ends without a response.
    /// - Parameter giveUpAt: when (monotonic seconds) to stop waiting with `.tooSlow` (the
    ///   caller's rate bound).
    func awaitResponse(deadline giveUpAt: Double? = nil) throws(FerryError) -> Response {
        let outcome: Result<Response, FerryError> = lock.withLock {
            var deadline = WallClock.monotonicSeconds() + stallTimeout
            while true {
                if let response { return .success(response) }
                if let finished { return .failure(failure(finished)) }
                if !lock.wait(until: min(deadline, giveUpAt ?? .infinity)) {
                    if let response { return .success(response) }
                    let now = WallClock.monotonicSeconds()
                    if let giveUpAt, now >= giveUpAt {
                        cancelled = true
                        return .failure(Self.deadlinePassed)
                    }
                    if now >= deadline {
                        cancelled = true
                        return .failure(stalled())
                    }
                }
                deadline = max(deadline, lastActivity + stallTimeout)
            }
        }
        return try outcome.get()
    }

    /// Reads up to `buffer.count` body bytes; 0 at the end of the body.
    /// - Parameter giveUpAt: when (monotonic seconds) to stop waiting with `.tooSlow`.
    func read(into target: UnsafeMutableRawBufferPointer, deadline giveUpAt: Double? = nil) throws(FerryError) -> Int {
        let outcome: Result<Int, FerryError> = lock.withLock {
            var deadline = WallClock.monotonicSeconds() + stallTimeout
            while ringCount == 0 {
                if let finished { return finished == CURLE_OK ? .success(0) : .failure(failure(finished)) }
                if !lock.wait(until: min(deadline, giveUpAt ?? .infinity)), ringCount == 0, finished == nil {
                    if let giveUpAt, WallClock.monotonicSeconds() >= giveUpAt {
                        cancelled = true
                        lock.broadcast()
                        return .failure(Self.deadlinePassed)
                    }
                    if WallClock.monotonicSeconds() >= max(deadline, lastActivity + stallTimeout) {
                        cancelled = true
                        lock.broadcast()
                        return .failure(stalled())
                    }
                }
                deadline = max(deadline, lastActivity + stallTimeout)
            }
            // Copy out of the ring, in up to two pieces.
            var done = 0
            while done < target.count && ringCount > 0 {
                let piece = min(target.count - done, ringCount, ring.count - ringStart)
                UnsafeMutableRawBufferPointer(rebasing: target[done..<(done + piece)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: ring[ringStart..<(ringStart + piece)]))
                ringStart = (ringStart + piece) % ring.count
                ringCount -= piece
                done += piece
            }
            lock.broadcast()
            return .success(done)
        }
        return try outcome.get()
    }

    /// The caller's deadline passed (its ``HTTPSource`` says why, with its own figures).
    static let deadlinePassed = FerryError(code: .tooSlow, message: "the download is slower than its minimum rate")

    private func stalled() -> FerryError {
        FerryError(
            code: .timeout, message: "\(url): no data for \(Int(stallTimeout)) s (the server or the network stalled)")
    }

    /// Connects and completes the TLS handshake only (``Mode/handshakeOnly``), then returns the policy's record.
    func handshake() throws(FerryError) -> CFerryShims_TLSPolicy {
        let code = curl_easy_perform(easy)
        guard code == CURLE_OK else { throw failure(code) }
        return policy.pointee
    }

    // MARK: - Callbacks

    /// Called on the download thread: copies into the ring, waiting while it is full.
    fileprivate func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        lock.withLock {
            lastActivity = WallClock.monotonicSeconds()
            var done = 0
            while done < bytes.count {
                while ringCount == ring.count && !cancelled { _ = lock.wait(until: nil) }
                if cancelled { return 0 }
                let end = (ringStart + ringCount) % ring.count
                let piece = min(bytes.count - done, ring.count - ringCount, ring.count - end)
                UnsafeMutableRawBufferPointer(rebasing: ring[end..<(end + piece)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[done..<(done + piece)]))
                ringCount += piece
                done += piece
                lock.broadcast()
            }
            return done
        }
    }

    /// Called on the download thread about once a second: a cancelled transfer stops.
    fileprivate func shouldStop() -> Bool {
        lock.withLock { cancelled }
    }

    /// Called on the download thread for every header line.
    fileprivate func receiveHeader(_ bytes: UnsafeRawBufferPointer) -> Bool {
        lock.withLock { receiveHeaderLocked(bytes) }
    }

    private func receiveHeaderLocked(_ bytes: UnsafeRawBufferPointer) -> Bool {
        lastActivity = WallClock.monotonicSeconds()
        defer { lock.broadcast() }
        // Bytes, not Characters: "\r\n" is one Character in Swift.
        var end = bytes.count
        while end > 0, bytes[end - 1] == UInt8(ascii: "\n") || bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[..<end]), as: UTF8.self)
        if line.hasPrefix("HTTP/") {
            let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
            pendingStatus = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            pendingReason = parts.count > 2 ? String(parts[2]) : ""
            pendingHeaders = [:]
        } else if line.isEmpty {
            // The end of a header block; informational (1xx) blocks are followed by the real one.
            guard pendingStatus >= 200 else { return true }
            response = Response(status: pendingStatus, reason: pendingReason, headers: pendingHeaders)
            // Only a body of 200 or 206 is wanted: stop before downloading anything else.
            if pendingStatus != 200 && pendingStatus != 206 {
                abortedAfterHeaders = true
                return false
            }
        } else if let colon = line.firstIndex(of: ":") {
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            pendingHeaders[name] = value
        }
        return true
    }

    /// What the TLS policy saw on the last connection.
    var tlsRecord: CFerryShims_TLSPolicy { policy.pointee }

    // MARK: - Errors

    /// Maps a libcurl result to a one-line error of the network class.
    private func failure(_ code: CURLcode) -> FerryError {
        let detail = errorBuffer.pointee != 0 ? String(cString: errorBuffer) : String(cString: curl_easy_strerror(code))
        let record = policy.pointee
        switch Int32(record.outcome) {
        case Int32(CFerryShims_TLS_PIN_MISMATCH):
            return FerryError(
                code: .pinMismatch,
                message: "\(url): the server's certificate matches no configured pin (it presented certificate "
                    + "\(TLSPin(kind: .certificate, sha256: Self.bytes(record.presented_certificate))), public key "
                    + "\(TLSPin(kind: .publicKey, sha256: Self.bytes(record.presented_public_key))))")
        case Int32(CFerryShims_TLS_CHAIN_INVALID):
            return FerryError(
                code: .tlsHandshake,
                message: "\(url): the server's certificate chain does not verify against the CA file: "
                    + String(cString: CFerryShims_tls_chain_error_string(record.chain_error)))
        case Int32(CFerryShims_TLS_PROTOCOL_REFUSED), Int32(CFerryShims_TLS_NO_CERTIFICATE):
            return FerryError(code: .tlsHandshake, message: "\(url): TLS handshake refused: \(detail)")
        default:
            break
        }
        if abortedAfterHeaders, let response {
            return FerryError(
                code: .httpStatus, message: "\(url): the server answered \(response.status) \(response.reason)")
        }
        switch code {
        case CURLE_UNSUPPORTED_PROTOCOL:
            return FerryError(code: .insecureURL, message: "\(url): only https:// is allowed (\(detail))")
        case CURLE_OPERATION_TIMEDOUT:
            return FerryError(code: .timeout, message: "\(url): timed out (\(detail))")
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
            CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ENGINE_INITFAILED, CURLE_USE_SSL_FAILED, CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            // A refused protocol version ends here too: the server offered nothing in TLS 1.2–1.3.
            return FerryError(code: .tlsHandshake, message: "\(url): TLS handshake failed: \(detail)")
        case CURLE_URL_MALFORMAT:
            return FerryError(code: .usage, message: "\(url): malformed URL (\(detail))")
        default:
            return FerryError(code: .network, message: "\(url): \(detail)")
        }
    }

    static func bytes<T>(_ tuple: T) -> [UInt8] {
        withUnsafeBytes(of: tuple) { Array($0) }
    }

    static func string<T>(_ tuple: T) -> String {
        withUnsafeBytes(of: tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

private func curlThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue().runTransfer()
    return nil
}

private func curlProgress(
    _ context: UnsafeMutableRawPointer?, _: curl_off_t, _: curl_off_t, _: curl_off_t, _: curl_off_t
) -> Int32 {
    guard let context else { return 1 }
    return Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue().shouldStop() ? 1 : 0
}

private func curlWriteBody(
    _ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    return transfer.receiveBody(UnsafeRawBufferPointer(start: data, count: size * count))
}

private func curlWriteHeader(
    _ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    return transfer.receiveHeader(UnsafeRawBufferPointer(start: data, count: size * count)) ? size * count : 0
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return String(slice)
    }
}

/// A mutex with one condition variable on the monotonic clock.
final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    func withLock<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Waits (holding the lock) until signalled or `deadline` (monotonic seconds) passes.
    /// - Returns: false when the deadline passed.
    func wait(until deadline: Double?) -> Bool {
        guard let deadline else { return pthread_cond_wait(condition, mutex) == 0 }
        let whole = deadline.rounded(.down)
        var time = timespec(tv_sec: Int(whole), tv_nsec: Int((deadline - whole) * 1e9))
        return pthread_cond_timedwait(condition, mutex, &time) == 0
    }

    func broadcast() { pthread_cond_broadcast(condition) }
}
