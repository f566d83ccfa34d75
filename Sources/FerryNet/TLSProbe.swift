internal import CFerryShims
import FerrySystem

/// What a server presents in its TLS handshake: the pins to configure, and enough to recognize it.
public struct PresentedCertificate: Sendable {
    public var certificatePin: TLSPin
    public var publicKeyPin: TLSPin
    public var subject: String
    public var issuer: String
    public var notBefore: String
    public var notAfter: String
    /// The negotiated protocol, such as `TLSv1.3`.
    public var protocolVersion: String
}

/// Connects to a server and completes a TLS handshake (1.2 or 1.3) without sending any HTTP request.
public enum TLSProbe {
    /// - Throws: `.insecureURL`, `.network`, `.timeout`, `.tlsHandshake` (also when the server only
    ///   speaks TLS 1.1 or older).
    public static func certificate(of url: String, options: TransportOptions) throws(FerryError) -> PresentedCertificate
    {
        _ = try HTTPSURL.host(of: url)
        var probeOptions = options
        probeOptions.caFile = nil
        let transfer = try CurlTransfer(
            url: url, mode: .handshakeOnly, pins: [], recordOnly: true, options: probeOptions)
        let record = try transfer.handshake()
        guard record.outcome == Int32(CFerryShims_TLS_ACCEPTED) else {
            throw FerryError(code: .tlsHandshake, message: "\(url): the server presented no certificate")
        }
        return PresentedCertificate(
            certificatePin: TLSPin(kind: .certificate, sha256: CurlTransfer.bytes(record.presented_certificate)),
            publicKeyPin: TLSPin(kind: .publicKey, sha256: CurlTransfer.bytes(record.presented_public_key)),
            subject: CurlTransfer.string(record.subject), issuer: CurlTransfer.string(record.issuer),
            notBefore: CurlTransfer.string(record.not_before), notAfter: CurlTransfer.string(record.not_after),
            protocolVersion: CurlTransfer.string(record.protocol))
    }
}
