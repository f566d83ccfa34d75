import FerryNet
import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

/// The pinned transport against real servers on 127.0.0.1: nginx (ranges, redirects, statuses,
/// client certificates) and `openssl s_server -WWW` (forced protocol versions), with a TCP relay
/// that cuts or stalls connections. Every server and relay is stopped when the test ends.
@Suite(.enabled(if: HTTPSServer.available, "needs openssl and nginx (tools/install-deps installs them)"))
struct HTTPSTransportTests {
    /// A temporary folder with TLS material and a 3 MiB file `payload.bin` in `www/`.
    struct Fixture {
        let directory: String
        let tls: TestTLS
        let www: String
        let payload: [UInt8]

        init(_ directory: String) throws {
            self.directory = directory
            tls = try TestTLS.make(in: "\(directory)/tls")
            www = "\(directory)/www"
            try DurableFile.createDirectory(www)
            payload = seededBytes(count: 3 << 20, seed: 7)
            try makeFile("\(www)/payload.bin", bytes: payload)
        }

        func nginx(certificate: String = "server", extra: [String] = []) throws -> HTTPSServer {
            try HTTPSServer.nginx(
                root: www, tls: tls, certificate: certificate, state: "\(directory)/nginx-\(certificate)", extra: extra)
        }

        func options(_ pins: [String], configure: (inout TransportOptions) -> Void = { _ in }) throws
            -> TransportOptions
        {
            var options = TransportOptions(pins: PinSet(anyHost: try pins.map { try TLSPin(parsing: $0) }))
            options.retryDelaySeconds = 0.05
            options.stallTimeoutSeconds = 5
            options.connectTimeoutSeconds = 5
            configure(&options)
            return options
        }
    }

    static func download(_ url: String, _ options: TransportOptions) throws -> (bytes: [UInt8], source: HTTPSource) {
        let source = try HTTPSource(url: url, options: options, logger: quietLogger)
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 100_000)
        while true {
            let count = try buffer.withUnsafeMutableBytes { (raw) throws(FerryError) in try source.read(into: raw) }
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return (bytes, source)
    }

    // MARK: - Pins and protocol versions

    @Test(arguments: ["1.2", "1.3"])
    func aCertificatePinDownloadsOverTLS(_ version: String) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try HTTPSServer.openssl(root: fixture.www, tls: fixture.tls, version: version)
            defer { server.stop() }
            let presented = try TLSProbe.certificate(of: server.url, options: TransportOptions())
            #expect(presented.protocolVersion == "TLSv\(version)")
            #expect(presented.certificatePin.description == (try fixture.tls.certificatePin("server")))
            let (bytes, _) = try Self.download(
                server.url + "payload.bin", try fixture.options([try fixture.tls.certificatePin("server")]))
            #expect(bytes == fixture.payload)
        }
    }

    @Test func aPublicKeyPinDownloads() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let pin = try fixture.tls.publicKeyPin("server")
            #expect(
                (try TLSProbe.certificate(of: server.url, options: TransportOptions())).publicKeyPin.description == pin)
            let (bytes, source) = try Self.download(server.url + "payload.bin", try fixture.options([pin]))
            #expect(bytes == fixture.payload)
            #expect(source.totalBytes == Int64(fixture.payload.count))
        }
    }

    @Test func anotherCertificateOfTheSameCAAndNameIsRefusedBeforeAnyRequest() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx(certificate: "other")
            defer { server.stop() }
            let pins = [try fixture.tls.certificatePin("server"), try fixture.tls.publicKeyPin("server")]
            let error = #expect(throws: FerryError.self) {
                try Self.download(server.url + "payload.bin", try fixture.options(pins))
            }
            #expect(error?.code == .pinMismatch)
            // The message names what the server presented.
            #expect(error?.message.contains(try fixture.tls.certificatePin("other")) == true)
            // Refused inside the handshake: nginx never saw an HTTP request.
            #expect(server.accessLog().isEmpty)
        }
    }

    @Test func anUnpinnedSelfSignedServerIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try HTTPSServer.openssl(root: fixture.www, tls: fixture.tls, certificate: "selfsigned")
            defer { server.stop() }
            expectFerryError(.pinMismatch) {
                try Self.download(
                    server.url + "payload.bin", try fixture.options([try fixture.tls.certificatePin("server")]))
            }
        }
    }

    @Test(arguments: ["1.0", "1.1"])
    func oldProtocolsAreRefused(_ version: String) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try HTTPSServer.openssl(root: fixture.www, tls: fixture.tls, version: version)
            defer { server.stop() }
            expectFerryError(.tlsHandshake) {
                try Self.download(
                    server.url + "payload.bin", try fixture.options([try fixture.tls.certificatePin("server")]))
            }
        }
    }

    /// Under an OpenSSL configuration that allows TLS 1.0 and 1.1, a control client does connect
    /// to the old server (so it really speaks that version) and Ferry still refuses it.
    @Test(arguments: ["1.0", "1.1"])
    func oldProtocolsAreRefusedUnderAPermissiveOpenSSLConfiguration(_ version: String) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try HTTPSServer.openssl(root: fixture.www, tls: fixture.tls, version: version)
            defer { server.stop() }
            let configuration = "\(directory)/permissive.cnf"
            try DurableFile.write(
                """
                openssl_conf = default_conf
                [default_conf]
                ssl_conf = ssl_section
                [ssl_section]
                system_default = system_default_section
                [system_default_section]
                MinProtocol = TLSv1
                CipherString = DEFAULT@SECLEVEL=0

                """, to: configuration)
            let environment = ["OPENSSL_CONF": configuration]
            let flag = version == "1.0" ? "-tls1" : "-tls1_1"
            let control = try Shell.run(
                ["sh", "-c", "openssl s_client -connect 127.0.0.1:\(server.port) \(flag) </dev/null"],
                environment: environment)
            #expect(
                control.output.contains("Protocol  : TLSv\(version == "1.0" ? "1" : "1.1")"),
                "control client: \(control.output)")
            let ferry = try Shell.run([TestEnvironment.ferryBinary, "pin", server.url], environment: environment)
            #expect(ferry.status == FerryError.Code.tlsHandshake.exitStatus, "ferry pin: \(ferry.output)")
            #expect(ferry.output.hasPrefix("ferry: error: "))
        }
    }

    @Test func aCAFileAddsChainVerification() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let pin = try fixture.tls.certificatePin("server")
            let good = try fixture.options([pin]) { $0.caFile = fixture.tls.pki.certificate("tlsca") }
            #expect(try Self.download(server.url + "payload.bin", good).bytes == fixture.payload)
            let wrongCA = try fixture.options([pin]) { $0.caFile = fixture.tls.pki.certificate("otherca") }
            expectFerryError(.tlsHandshake) { try Self.download(server.url + "payload.bin", wrongCA) }
        }
    }

    @Test func aCAFileAddsHostNameVerification() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx(certificate: "wrongname")
            defer { server.stop() }
            let pin = try fixture.tls.certificatePin("wrongname")
            // The pin alone decides: the name is not checked.
            #expect(try Self.download(server.url + "payload.bin", try fixture.options([pin])).bytes == fixture.payload)
            // With a CA file, the certificate must also name the host.
            let withCA = try fixture.options([pin]) { $0.caFile = fixture.tls.pki.certificate("tlsca") }
            expectFerryError(.tlsHandshake) { try Self.download(server.url + "payload.bin", withCA) }
        }
    }

    @Test func aClientCertificateIdentifiesTheDevice() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx(extra: ["--client-ca", fixture.tls.pki.certificate("clientca")])
            defer { server.stop() }
            let pin = try fixture.tls.certificatePin("server")
            let withIdentity = try fixture.options([pin]) {
                $0.clientCertificate = fixture.tls.pki.certificate("device")
                $0.clientKey = fixture.tls.pki.key("device")
            }
            #expect(try Self.download(server.url + "payload.bin", withIdentity).bytes == fixture.payload)
            // Without it nginx answers 400 (no required certificate).
            expectFerryError(.httpStatus) { try Self.download(server.url + "payload.bin", try fixture.options([pin])) }
        }
    }

    // MARK: - HTTP

    @Test func redirectsAreFollowedOnlyToHTTPS() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")])
            #expect(try Self.download(server.url + "redirect/payload.bin", options).bytes == fixture.payload)
            expectFerryError(.insecureURL) { try Self.download(server.url + "redirect-http/payload.bin", options) }
            expectFerryError(.httpStatus) { try Self.download(server.url + "redirect-loop", options) }
        }
    }

    @Test(arguments: ["status/404", "status/500", "missing.bin"])
    func errorStatusesAreClearErrors(_ path: String) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let error = #expect(throws: FerryError.self) {
                try Self.download(server.url + path, try fixture.options([try fixture.tls.certificatePin("server")]))
            }
            #expect(error?.code == .httpStatus)
            #expect(error?.message.contains(path.hasPrefix("status/500") ? "500" : "404") == true)
        }
    }

    @Test func unavailableIsRetriedThenFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")]) { $0.retries = 2 }
            expectFerryError(.httpStatus) { try Self.download(server.url + "status/503", options) }
            let deadline = WallClock.monotonicSeconds() + 5
            while server.accessLog().count < 3 && WallClock.monotonicSeconds() < deadline { sleepSeconds(0.05) }
            #expect(server.accessLog().filter { $0.contains("/status/503 503") }.count == 3)
        }
    }

    // MARK: - Interruptions

    @Test func aCutConnectionResumesWithARangeRequest() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            // libcurl may fetch the first window and the rest on one connection or on two: each of
            // the first two connections is cut after 1 MiB, so a cut happens either way.
            let proxy = try TCPProxy(
                upstreamPort: server.port, behaviours: [.cut(afterBytes: 1 << 20), .cut(afterBytes: 1 << 20)])
            defer { proxy.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")])
            let (bytes, source) = try Self.download("https://127.0.0.1:\(proxy.port)/payload.bin", options)
            #expect(bytes == fixture.payload)
            #expect((1...2).contains(source.reconnections), "\(source.reconnections) reconnections")
            // The first window (256 KiB), the rest until a cut, the rest after it (and after a second cut).
            let log = server.accessLog()
            #expect(log.count == source.requests && source.requests == 2 + source.reconnections, "\(log)")
            #expect(log.allSatisfy { $0.contains(" 206 range=\"bytes=") }, "\(log)")
        }
    }

    @Test func aFileReplacedDuringTheDownloadIsDetected() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let www = fixture.www
            let proxy = try TCPProxy(
                upstreamPort: server.port, behaviours: [.cut(afterBytes: 1 << 20), .cut(afterBytes: 1 << 20)]
            ) { _ in
                // A new release appears under the same name (another size, another ETag).
                try? makeFile("\(www)/payload.next", bytes: seededBytes(count: (3 << 20) + 4096, seed: 8))
                _ = try? Shell.run(["mv", "\(www)/payload.next", "\(www)/payload.bin"])
            }
            defer { proxy.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")])
            expectFerryError(.contentChanged) {
                try Self.download("https://127.0.0.1:\(proxy.port)/payload.bin", options)
            }
        }
    }

    @Test func aStalledServerTimesOut() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let proxy = try TCPProxy(
                upstreamPort: server.port, behaviours: [.stall(afterBytes: 200_000), .stall(afterBytes: 0)])
            defer { proxy.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")]) {
                $0.stallTimeoutSeconds = 1
                $0.retries = 1
            }
            let started = WallClock.monotonicSeconds()
            expectFerryError(.timeout) { try Self.download("https://127.0.0.1:\(proxy.port)/payload.bin", options) }
            #expect(WallClock.monotonicSeconds() - started < 15)
            #expect(proxy.connections == 2)
        }
    }

    @Test func aStallThenRecoveryCompletes() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let proxy = try TCPProxy(upstreamPort: server.port, behaviours: [.relay, .stall(afterBytes: 500_000)])
            defer { proxy.stop() }
            let options = try fixture.options([try fixture.tls.certificatePin("server")]) { $0.stallTimeoutSeconds = 2 }
            let (bytes, source) = try Self.download("https://127.0.0.1:\(proxy.port)/payload.bin", options)
            #expect(bytes == fixture.payload)
            // At least the stalled connection was dropped (a loaded machine may stall more).
            #expect(source.reconnections >= 1)
            // One connection per reconnection, plus the first window's and the rest's, which libcurl
            // may serve on one kept-alive connection.
            #expect(
                (source.reconnections + 1)...(source.reconnections + 2) ~= proxy.connections,
                "\(proxy.connections) connections")
        }
    }

    @Test func aLongSkipIsARangeRequest() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            var source: HTTPSource? = try HTTPSource(
                url: server.url + "payload.bin",
                options: try fixture.options([try fixture.tls.certificatePin("server")]), logger: quietLogger)
            let head = try source!.readExactly(16, what: "the head")
            #expect(head == Array(fixture.payload[..<16]))
            try source!.skip(Int64((2 << 20) + 5))
            let next = try source!.readExactly(1000, what: "the rest")
            let start = 16 + (2 << 20) + 5
            #expect(next == Array(fixture.payload[start..<(start + 1000)]))
            // A skip past the end reads as the end of the stream.
            try source!.skip(Int64(10 << 20))
            var byte: UInt8 = 0
            #expect(
                try withUnsafeMutableBytes(of: &byte) { (raw) throws(FerryError) in try source!.read(into: raw) } == 0)
            #expect(source!.requests == 2)
            // nginx logs a request when its connection ends.
            source = nil
            let deadline = WallClock.monotonicSeconds() + 5
            while server.accessLog().count < 2 && WallClock.monotonicSeconds() < deadline { sleepSeconds(0.05) }
            #expect(server.accessLog().contains { $0.contains("range=\"bytes=\(start)-\"") })
        }
    }

    @Test func aClosedPortIsANetworkError() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            // A port that was just free: nothing listens there.
            let proxy = try TCPProxy(upstreamPort: 1, behaviours: [])
            let port = proxy.port
            proxy.stop()
            let options = try fixture.options([try fixture.tls.certificatePin("server")]) { $0.retries = 1 }
            expectFerryError(.network) { try Self.download("https://127.0.0.1:\(port)/payload.bin", options) }
        }
    }

    /// Proxies come from the usual environment variables; the TLS session still ends at the
    /// pinned server, through the proxy's CONNECT tunnel.
    @Test func aProxyFromTheEnvironmentIsUsed() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let proxy = try TCPProxy(upstreamPort: server.port, behaviours: [.connectProxy])
            defer { proxy.stop() }
            let output = try Shell.check(
                [TestEnvironment.ferryBinary, "pin", server.url],
                environment: ["https_proxy": "http://127.0.0.1:\(proxy.port)", "NO_PROXY": "", "no_proxy": ""])
            #expect(output.contains(try fixture.tls.certificatePin("server")))
            #expect(
                proxy.connectRequests.count == 1
                    && proxy.connectRequests.first?.hasPrefix("CONNECT 127.0.0.1:\(server.port) ") == true,
                "\(proxy.connectRequests)")
        }
    }

    @Test func pinOfACertificateFileMatchesTheServer() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let server = try fixture.nginx()
            defer { server.stop() }
            let network = try Shell.check([TestEnvironment.ferryBinary, "pin", "--json", server.url])
            let file = try Shell.check([
                TestEnvironment.ferryBinary, "pin", "--json", fixture.tls.pki.certificate("server"),
            ])
            #expect(network.contains(try fixture.tls.certificatePin("server")))
            #expect(network.contains(try fixture.tls.publicKeyPin("server")))
            #expect(file.contains(try fixture.tls.certificatePin("server")))
            #expect(file.contains(try fixture.tls.publicKeyPin("server")))
            #expect(server.accessLog().isEmpty, "ferry pin must not send an HTTP request")
        }
    }
}
