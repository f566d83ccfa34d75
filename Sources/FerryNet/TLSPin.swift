import FerrySystem
import FoundationEssentials

/// A hash that a server's TLS certificate must match.
///
/// Two forms, both SHA-256:
/// - a **certificate pin**: the hash of the leaf certificate in DER, written as 64 hex digits
///   (colons allowed, as `openssl x509 -noout -fingerprint -sha256` prints it); it changes
///   whenever the certificate is renewed;
/// - a **public-key pin**: the hash of the leaf's SubjectPublicKeyInfo in DER, written
///   `sha256//<base64>` (the form of HPKP and curl's `--pinnedpubkey`); it survives a renewal
///   that keeps the key.
public struct TLSPin: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case certificate
        case publicKey = "public-key"
    }

    public let kind: Kind
    /// The 32-byte SHA-256.
    public let sha256: [UInt8]

    public init(kind: Kind, sha256: [UInt8]) {
        precondition(sha256.count == 32, "a SHA-256 has 32 bytes")
        self.kind = kind
        self.sha256 = sha256
    }

    /// Parses either form.
    /// - Throws: `.configurationInvalid` naming the text.
    public init(parsing text: String) throws(FerryError) {
        if text.hasPrefix("sha256//") {
            guard let data = Data(base64Encoded: String(text.dropFirst(8))), data.count == 32 else {
                throw FerryError(
                    code: .configurationInvalid,
                    message: "pin '\(text)': 'sha256//' must be followed by the base64 of 32 bytes")
            }
            self.init(kind: .publicKey, sha256: Array(data))
            return
        }
        let digits = text.filter { $0 != ":" }
        guard digits.count == 64, let bytes = Self.hexBytes(digits) else {
            throw FerryError(
                code: .configurationInvalid,
                message: "pin '\(text)' is neither 'sha256//<base64>' (public key) nor 64 hex digits (certificate)")
        }
        self.init(kind: .certificate, sha256: bytes)
    }

    /// The configuration form: 64 lowercase hex digits, or `sha256//<base64>`.
    public var description: String {
        switch kind {
        case .certificate: Self.hex(sha256)
        case .publicKey: "sha256//" + Data(sha256).base64EncodedString()
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    private static func hexBytes(_ text: String) -> [UInt8]? {
        var bytes = [UInt8]()
        var high: UInt8?
        for character in text.utf8 {
            let value: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = character - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = character - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return high == nil ? bytes : nil
    }
}

/// The pins of every server Ferry talks to: pins for named hosts, and pins for any other host.
public struct PinSet: Sendable, Equatable {
    /// Pins by lowercase host name (or IP address literal, IPv6 without brackets).
    public var byHost: [String: [TLSPin]]
    /// Pins for hosts without their own entry.
    public var anyHost: [TLSPin]

    public init(byHost: [String: [TLSPin]] = [:], anyHost: [TLSPin] = []) {
        self.byHost = byHost
        self.anyHost = anyHost
    }

    /// The pins a server named `host` must match; empty when none are configured.
    public func pins(for host: String) -> [TLSPin] {
        byHost[host.lowercased()] ?? anyHost
    }

    public var isEmpty: Bool { anyHost.isEmpty && byHost.values.allSatisfy(\.isEmpty) }
}
