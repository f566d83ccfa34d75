import FerryNet
import FerrySystem
import FerryTestSupport
import Testing

@Suite struct TLSPinTests {
    @Test func bothFormsParseAndPrintBack() throws {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        let certificate = try TLSPin(parsing: hex.uppercased())
        #expect(certificate.kind == .certificate)
        #expect(certificate.description == hex)
        let colons = try TLSPin(
            parsing: stride(from: 0, to: 64, by: 2).map { i in
                String(hex[hex.index(hex.startIndex, offsetBy: i)..<hex.index(hex.startIndex, offsetBy: i + 2)])
            }.joined(separator: ":"))
        #expect(colons == certificate)
        let key = try TLSPin(parsing: "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=")
        #expect(key.kind == .publicKey)
        #expect(key.sha256.count == 32)
        #expect(key.description == "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=")
    }

    @Test(arguments: [
        "", "sha256//", "sha256//AAAA", "md5//abc", String(repeating: "a", count: 63),
        String(repeating: "g", count: 64),
        String(repeating: "a", count: 66),
    ])
    func malformedPinsAreRefused(_ text: String) {
        expectFerryError(.configurationInvalid) { try TLSPin(parsing: text) }
    }

    @Test func pinsAreChosenByHostWithAFallback() throws {
        let a = try TLSPin(parsing: String(repeating: "a", count: 64))
        let b = try TLSPin(parsing: String(repeating: "b", count: 64))
        let set = PinSet(byHost: ["updates.example.com": [a]], anyHost: [b])
        #expect(set.pins(for: "UPDATES.example.com") == [a])
        #expect(set.pins(for: "mirror.example.com") == [b])
        #expect(PinSet(byHost: ["x": [a]]).pins(for: "y").isEmpty)
        #expect(PinSet().isEmpty)
    }

    @Test(arguments: ["http://127.0.0.1/bundle", "ftp://127.0.0.1/bundle", "file:///etc/passwd", "127.0.0.1/bundle"])
    func onlyHTTPSURLsAreAccepted(_ url: String) throws {
        let pin = try TLSPin(parsing: String(repeating: "a", count: 64))
        expectFerryError(.insecureURL) {
            try HTTPSource(url: url, options: TransportOptions(pins: PinSet(anyHost: [pin])), logger: quietLogger)
        }
    }

    @Test func aHostWithoutPinIsRefusedBeforeConnecting() throws {
        let pin = try TLSPin(parsing: String(repeating: "a", count: 64))
        let options = TransportOptions(pins: PinSet(byHost: ["other.example": [pin]]))
        expectFerryError(.pinMismatch) {
            try HTTPSource(url: "https://127.0.0.1:1/bundle", options: options, logger: quietLogger)
        }
    }
}
