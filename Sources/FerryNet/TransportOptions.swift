/// How Ferry talks to update servers: pins, optional CA and client identity, timeouts, retries.
public struct TransportOptions: Sendable, Equatable {
    /// The pins the server's certificate must match (per host, or for any host).
    public var pins: PinSet
    /// A CA file (PEM): when set, the chain and the host name are verified as well as the pin.
    public var caFile: String?
    /// A client certificate (PEM) that identifies the device to fleet servers.
    public var clientCertificate: String?
    /// The client certificate's private key (PEM); defaults to the certificate file.
    public var clientKey: String?
    /// Seconds to connect and complete the TLS handshake.
    public var connectTimeoutSeconds = 20
    /// Seconds without a byte, while Ferry waits for one, before the connection is dropped.
    public var stallTimeoutSeconds = 30
    /// Reconnections after a failure without progress in between (each resumes where it stopped).
    public var retries = 5
    /// The first pause before a retry; it doubles with every retry, up to 30 s.
    public var retryDelaySeconds = 1.0
    /// Reconnections per download in all, whatever the progress between them: a server that
    /// breaks every connection after a little data cannot keep the device forever.
    public var maximumReconnects = 30
    /// The slowest average rate a download may have over ``rateWindowSeconds`` of waiting for
    /// the network before it gives up (0: no minimum). The default suits links down to a few
    /// kbit/s; it is there for servers that trickle, not for slow links.
    public var minimumBytesPerSecond = 512
    /// The window of the minimum rate, in seconds of waiting (the first window is a grace period).
    public var rateWindowSeconds = 120
    /// Redirects followed per request (only to https://).
    public var maximumRedirects = 5
    public var userAgent = "ferry"

    public init(pins: PinSet = PinSet()) {
        self.pins = pins
    }
}
