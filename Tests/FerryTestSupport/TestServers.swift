import Dispatch
import FerrySystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Throw-away TLS material for test servers, made with the openssl command line.
public struct TestTLS {
    public let pki: TestPKI

    /// `server` and `other` (both CN=localhost, SAN localhost and 127.0.0.1, same CA `tlsca`),
    /// `wrongname` (same CA, named wrong.example only),
    /// `selfsigned` (its own issuer, same names), a client CA `clientca` with its client `device`,
    /// and an unrelated CA `otherca` for chain failures.
    public static func make(in directory: String) throws -> TestTLS {
        try DurableFile.createDirectory(directory)
        let pki = TestPKI(directory: directory)
        try pki.makeCA("tlsca", subject: "/CN=Test TLS CA")
        try pki.makeCA("otherca", subject: "/CN=Unrelated CA")
        try pki.makeCA("clientca", subject: "/CN=Test Client CA")
        let tls = TestTLS(pki: pki)
        try tls.makeLeaf("server", ca: "tlsca", usage: "serverAuth")
        try tls.makeLeaf("other", ca: "tlsca", usage: "serverAuth")
        try tls.makeLeaf("device", ca: "clientca", usage: "clientAuth")
        try tls.makeLeaf("wrongname", ca: "tlsca", usage: "serverAuth", name: "wrong.example")
        try Shell.check([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", pki.key("selfsigned"), "-out", pki.certificate("selfsigned"),
        ])
        return tls
    }

    func makeLeaf(_ name: String, ca: String, usage: String, name host: String? = nil) throws {
        try pki.newKey(name)
        try DurableFile.write(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=\(usage)\n"
                + "subjectAltName=\(host.map { "DNS:\($0)" } ?? "DNS:localhost,IP:127.0.0.1")\n",
            to: "\(pki.directory)/\(name).ext")
        try Shell.check([
            "openssl", "req", "-new", "-key", pki.key(name), "-subj", "/CN=\(host ?? "localhost")", "-out",
            "\(pki.directory)/\(name).csr",
        ])
        try Shell.check([
            "openssl", "x509", "-req", "-in", "\(pki.directory)/\(name).csr", "-CA", pki.certificate(ca), "-CAkey",
            pki.key(ca),
            "-CAcreateserial", "-days", "30", "-extfile", "\(pki.directory)/\(name).ext", "-out", pki.certificate(name),
        ])
    }

    /// The certificate pin (hex SHA-256 of the DER certificate) of `name`, computed by openssl.
    public func certificatePin(_ name: String) throws -> String {
        let output = try Shell.check([
            "openssl", "x509", "-in", pki.certificate(name), "-noout", "-fingerprint", "-sha256",
        ])
        return String(output.split(separator: "=").last!.filter { $0.isHexDigit }).lowercased()
    }

    /// The public-key pin (`sha256//` + base64 SHA-256 of the DER SubjectPublicKeyInfo), computed by openssl.
    public func publicKeyPin(_ name: String) throws -> String {
        let output = try Shell.check([
            "sh", "-c",
            "openssl x509 -in '\(pki.certificate(name))' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        ])
        return "sha256//" + output.filter { !$0.isWhitespace }
    }
}

/// A real HTTPS server on 127.0.0.1 started with `tools/https-server` (nginx or `openssl s_server -WWW`),
/// stopped (its whole process group) by ``stop()`` or when released, also when a test fails.
public final class HTTPSServer {
    /// `https://127.0.0.1:<port>/`
    public let url: String
    public let port: Int
    /// nginx's folder (configuration, access log), when the server is nginx.
    public let stateDirectory: String?
    private let pid: pid_t
    private var stopped = false

    /// Whether the servers can run here (openssl and nginx installed).
    public static var available: Bool {
        TestEnvironment.hasCommand("openssl")
            && (TestEnvironment.hasCommand("nginx") || TextFile.exists("/usr/sbin/nginx"))
    }

    /// nginx serving `root` with `certificate` (a name of `tls`), with range requests and the test routes.
    public static func nginx(
        root: String, tls: TestTLS, certificate: String = "server", state: String, extra: [String] = []
    )
        throws -> HTTPSServer
    {
        try HTTPSServer(
            [
                "nginx", "--root", root, "--cert", tls.pki.certificate(certificate), "--key", tls.pki.key(certificate),
                "--state", state,
            ]
                + extra, stateDirectory: state)
    }

    /// `openssl s_server -WWW` serving `root`, optionally forced to one TLS version ("1.0" … "1.3").
    public static func openssl(root: String, tls: TestTLS, certificate: String = "server", version: String? = nil)
        throws -> HTTPSServer
    {
        try HTTPSServer(
            ["openssl", "--root", root, "--cert", tls.pki.certificate(certificate), "--key", tls.pki.key(certificate)]
                + (version.map { ["--tls", $0] } ?? []), stateDirectory: nil)
    }

    private convenience init(_ arguments: [String], stateDirectory: String?) throws {
        // A port taken between the script's choice and the server's bind: try another.
        var attempt = 0
        while true {
            do {
                try self.init(arguments, stateDirectory: stateDirectory, attempt: ())
                return
            } catch  where attempt < 4 {
                attempt += 1
            }
        }
    }

    private init(_ arguments: [String], stateDirectory: String?, attempt: Void) throws {
        self.stateDirectory = stateDirectory
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw FerryError(code: .io, message: "pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, so that stop() reaches the server the script exec'd.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)
        let script = "\(TestEnvironment.packageRoot)/tools/https-server"
        let argv = ([script] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var environment = ProcessEnvironment.variables
        environment["PATH"] = (environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, script, &actions, &attributes, argv, envp)
        close(fds[1])
        guard result == 0 else {
            close(fds[0])
            throw FerryError(code: .io, message: "cannot start \(script): \(result)")
        }
        self.pid = pid
        // The first line is the URL.
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(fds[0], &byte, 1) == 1, byte != UInt8(ascii: "\n") { line.append(byte) }
        close(fds[0])
        url = String(decoding: line, as: UTF8.self)
        guard url.hasPrefix("https://127.0.0.1:"), let port = Int(url.dropFirst(18).prefix { $0.isNumber }) else {
            Glibc.kill(-pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw FerryError(
                code: .io, message: "tools/https-server \(arguments.joined(separator: " ")) did not start: '\(url)'")
        }
        self.port = port
        try waitUntilListening()
    }

    private func waitUntilListening() throws {
        let deadline = WallClock.monotonicSeconds() + 10
        while WallClock.monotonicSeconds() < deadline {
            if TCPProxy.canConnect(port: port) { return }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                stopped = true
                throw FerryError(code: .io, message: "the test server on port \(port) exited (status \(status))")
            }
            sleepSeconds(0.05)
        }
        stop()
        throw FerryError(code: .io, message: "the test server on port \(port) did not start listening within 10 s")
    }

    /// Kills the server's process group and reaps the server.
    public func stop() {
        guard !stopped else { return }
        stopped = true
        Glibc.kill(-pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    deinit { stop() }

    /// nginx's access log, a line per request: `GET /path 206 range="bytes=N-" sent=N`.
    public func accessLog() -> [String] {
        guard let stateDirectory, let bytes = try? TextFile.readBytes("\(stateDirectory)/access.log", limit: 16 << 20)
        else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
    }
}

/// A TCP relay on 127.0.0.1 in front of a test server that breaks connections on purpose: cut
/// after a number of bytes sent to the client, or stall (stop relaying, keep the socket open).
/// TLS passes through it untouched, so the client still talks to the real server.
public final class TCPProxy: @unchecked Sendable {
    public enum Behaviour: Sendable {
        case relay
        /// Close both sides after this many bytes reached the client.
        case cut(afterBytes: Int)
        /// Stop relaying after this many bytes reached the client; keep the connection open.
        case stall(afterBytes: Int)
        /// Relay this many bytes to the client at full speed, then `bytesPerSecond` (a server
        /// that trickles: never silent long enough for a stall timeout).
        case trickle(afterBytes: Int, bytesPerSecond: Int)
        /// Act as an HTTP proxy: read a `CONNECT host:port` request, answer 200, then relay to the
        /// upstream port (whatever the request named) untouched.
        case connectProxy
    }

    public let port: Int
    private let upstreamPort: Int
    private let listener: Int32
    private let state: Mutex<(behaviours: [Behaviour], connections: Int, stopped: Bool)>
    private let onBreak: (@Sendable (Int) -> Void)?
    private let group = DispatchGroup()

    /// - Parameters:
    ///   - behaviours: one per accepted connection, in order; connections beyond the list relay.
    ///   - onBreak: called with the connection's index just before a cut or a stall.
    public init(upstreamPort: Int, behaviours: [Behaviour], onBreak: (@Sendable (Int) -> Void)? = nil) throws {
        self.upstreamPort = upstreamPort
        self.onBreak = onBreak
        state = Mutex((behaviours, 0, false))
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 16) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else {
            close(listener)
            throw FerryError(code: .io, message: "the test proxy cannot listen")
        }
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        // Each loop on a queue of its own, which gets a thread of its own at once: on the global
        // pool, relays that block (stalls, trickles) of suites running in parallel starved the
        // others for seconds, long enough to look like a stalled server.
        DispatchQueue(label: "ferry-test.proxy.accept").async(group: group) { self.acceptLoop() }
    }

    /// Connections accepted so far.
    public var connections: Int { state.withLock { $0.connections } }

    /// The CONNECT requests seen in ``Behaviour/connectProxy`` mode (their first lines).
    public var connectRequests: [String] { connects.withLock { $0 } }
    private let connects = Mutex<[String]>([])

    /// Stops accepting and relaying, closes every socket, and waits for the relay threads.
    public func stop() {
        let already = state.withLock { state in
            defer { state.stopped = true }
            return state.stopped
        }
        guard !already else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        group.wait()
        close(listener)
    }

    deinit { stop() }

    private var isStopped: Bool { state.withLock { $0.stopped } }

    private func acceptLoop() {
        while !isStopped {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let (index, behaviour) = state.withLock { state -> (Int, Behaviour) in
                defer { state.connections += 1 }
                return (
                    state.connections,
                    state.connections < state.behaviours.count ? state.behaviours[state.connections] : .relay
                )
            }
            DispatchQueue(label: "ferry-test.proxy.relay.\(index)").async(group: group) {
                self.relay(client, index: index, behaviour: behaviour)
            }
        }
    }

    private func relay(_ client: Int32, index: Int, behaviour: Behaviour) {
        defer { close(client) }
        let upstream = Self.connect(port: upstreamPort)
        guard upstream >= 0 else { return }
        defer { close(upstream) }
        var toClient = 0
        var limit = Int.max
        var stallInstead = false
        var trickleRate: Int?
        switch behaviour {
        case .relay: break
        case .trickle(let bytes, let rate):
            limit = bytes
            trickleRate = max(1, rate)
        case .connectProxy:
            // The request head ends with an empty line.
            var head: [UInt8] = []
            var byte: UInt8 = 0
            while !head.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)), head.count < 8192, read(client, &byte, 1) == 1
            { head.append(byte) }
            let line = String(decoding: head.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
            connects.withLock { $0.append(line) }
            guard line.hasPrefix("CONNECT ") else { return }
            let reply = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
            guard writeAll(client, reply, reply.count) else { return }
        case .cut(let bytes): limit = bytes
        case .stall(let bytes):
            limit = bytes
            stallInstead = true
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !isStopped {
            var descriptors = [
                pollfd(fd: client, events: Int16(POLLIN), revents: 0),
                pollfd(fd: upstream, events: Int16(POLLIN), revents: 0),
            ]
            guard poll(&descriptors, 2, 100) > 0 else { continue }
            if descriptors[0].revents != 0 {
                let count = read(client, &buffer, buffer.count)
                if count <= 0 { return }
                guard writeAll(upstream, buffer, count) else { return }
            }
            if descriptors[1].revents != 0 {
                let count = read(upstream, &buffer, min(buffer.count, max(limit - toClient, 1)))
                if count <= 0 { return }
                guard writeAll(client, buffer, count) else { return }
                toClient += count
                if toClient >= limit {
                    onBreak?(index)
                    if let rate = trickleRate {
                        trickle(client: client, upstream: upstream, bytesPerSecond: rate)
                        return
                    }
                    if stallInstead {
                        // Keep both sockets open and silent until the test stops the proxy.
                        while !isStopped { sleepSeconds(0.05) }
                    }
                    return
                }
            }
        }
    }

    /// Relays upstream bytes one at a time, `bytesPerSecond` of them a second, until either side
    /// closes or the proxy stops (requests from the client are still relayed at once).
    private func trickle(client: Int32, upstream: Int32, bytesPerSecond: Int) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var byte: UInt8 = 0
        let pause = 1.0 / Double(bytesPerSecond)
        while !isStopped {
            var descriptors = [
                pollfd(fd: client, events: Int16(POLLIN), revents: 0),
                pollfd(fd: upstream, events: Int16(POLLIN), revents: 0),
            ]
            guard poll(&descriptors, 2, 100) >= 0 else { return }
            if descriptors[0].revents != 0 {
                let count = read(client, &buffer, buffer.count)
                if count <= 0 { return }
                guard writeAll(upstream, buffer, count) else { return }
            }
            if descriptors[1].revents != 0 {
                guard read(upstream, &byte, 1) == 1, writeAll(client, [byte], 1) else { return }
                sleepSeconds(pause)
            }
        }
    }

    private func writeAll(_ descriptor: Int32, _ buffer: [UInt8], _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let written = buffer.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, count - done) }
            if written <= 0 { return false }
            done += written
        }
        return true
    }

    static func connect(port: Int) -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        if !connected {
            close(descriptor)
            return -1
        }
        return descriptor
    }

    /// Whether something accepts connections on 127.0.0.1:`port`.
    public static func canConnect(port: Int) -> Bool {
        let descriptor = connect(port: port)
        guard descriptor >= 0 else { return false }
        close(descriptor)
        return true
    }
}
