import FerryCrypto
import FerrySystem

/// What a bundle must satisfy before a single byte of it is written (ARCHITECTURE.md invariant 2).
///
/// Host-side verification uses the signature part only; the device adds compatibility,
/// downgrade protection, the security version floor and expiry (`DeviceChecks`).
public struct TrustPolicy {
    public var keyring: Keyring
    /// Distinct trusted signers needed.
    public var threshold: Int
    /// Signer certificate fingerprints (SHA-256 of DER, lowercase hex) that never count.
    public var denyList: Set<String>
    /// The time certificates and expiry are judged at: never earlier than the device has seen.
    public var trustedTime: Int64
    public var device: DeviceChecks?

    public struct DeviceChecks {
        public var compatible: String
        /// The version of the booted group, when known.
        public var bootedVersion: SemanticVersion?
        public var allowDowngrade: Bool
        /// The security version floor from the state directory.
        public var securityFloor: Int64

        public init(compatible: String, bootedVersion: SemanticVersion?, allowDowngrade: Bool, securityFloor: Int64) {
            self.compatible = compatible
            self.bootedVersion = bootedVersion
            self.allowDowngrade = allowDowngrade
            self.securityFloor = securityFloor
        }
    }

    public init(keyring: Keyring, threshold: Int, denyList: Set<String>, trustedTime: Int64, device: DeviceChecks?) {
        self.keyring = keyring
        self.threshold = max(1, threshold)
        self.denyList = Set(denyList.map { $0.lowercased() })
        self.trustedTime = trustedTime
        self.device = device
    }

    /// Checks the detached signatures over the manifest bytes.
    ///
    /// A signature that does not match the manifest fails the whole bundle (it was tampered
    /// with). A signer that is untrusted, expired or on the deny-list simply does not count;
    /// the same signer twice counts once.
    /// - Returns: the distinct signers that counted.
    /// - Throws: `.signatureInvalid` (unsigned, tampered, malformed), `.untrusted` (too few trusted
    ///   signers), `.expired` (too few, because certificates are not valid at the trusted time).
    /// - Parameter document: names what is signed in messages ("the bundle", "the update index").
    public func verifySignatures(
        manifest: [UInt8], signatures: [(name: String, bytes: [UInt8])], document: String = "the bundle",
        firstSignatureName: String = "manifest.json.1.p7s"
    ) throws(FerryError) -> [Certificate] {
        guard !signatures.isEmpty else {
            throw FerryError(code: .signatureInvalid, message: "\(document) is not signed (no \(firstSignatureName))")
        }
        var counted: [Certificate] = []
        var reasons: [String] = []
        var allExpired = true
        for signature in signatures {
            let signer: Certificate
            do {
                signer = try CMS.verify(
                    signature: signature.bytes, content: manifest, keyring: keyring, at: trustedTime,
                    name: signature.name)
            } catch {
                if error.code == .signatureInvalid || error.code == .limitExceeded { throw error }
                if error.code != .expired { allExpired = false }
                reasons.append(error.message)
                continue
            }
            if denyList.contains(signer.fingerprint.hex) {
                allExpired = false
                reasons.append(
                    "\(signature.name): signer \(signer.subject) (\(signer.fingerprint.hex.prefix(16))…) is on the deny-list"
                )
                continue
            }
            if !counted.contains(where: { $0.fingerprint == signer.fingerprint }) { counted.append(signer) }
        }
        guard counted.count >= threshold else {
            let why = reasons.isEmpty ? "the same signer signed more than once" : reasons.joined(separator: "; ")
            throw FerryError(
                code: allExpired && !reasons.isEmpty ? .expired : .untrusted,
                message:
                    "\(document) has \(counted.count) trusted signer\(counted.count == 1 ? "" : "s") but needs \(threshold) (\(why))"
            )
        }
        return counted
    }

    /// Refuses a document (bundle, update index) that expired before `time`; the host side checks
    /// the same against its clock, so that it never signs what every device would refuse.
    /// - Throws: `.expired`.
    public static func checkExpiry(_ expires: Int64, of document: String, at time: Int64) throws(FerryError) {
        guard expires >= time else {
            throw FerryError(
                code: .expired,
                message:
                    "\(document) expired at \(WallClock.iso8601(expires)) (trusted time \(WallClock.iso8601(time)))")
        }
    }

    /// Checks the manifest's content against the device: expiry, compatible, version, security floor.
    /// - Throws: `.expired`, `.notCompatible`, `.downgrade`.
    public func checkManifest(_ manifest: Manifest, allowDowngradeOverride: Bool = false) throws(FerryError) {
        if let expires = manifest.expires { try Self.checkExpiry(expires, of: "the bundle", at: trustedTime) }
        guard let device else { return }
        guard manifest.compatible == device.compatible else {
            throw FerryError(
                code: .notCompatible,
                message: "the bundle is for '\(manifest.compatible)', this device is '\(device.compatible)'")
        }
        guard manifest.securityVersion >= device.securityFloor else {
            throw FerryError(
                code: .downgrade,
                message:
                    "the bundle's security version \(manifest.securityVersion) is below this device's floor \(device.securityFloor)"
            )
        }
        if let booted = device.bootedVersion, manifest.version < booted,
            !(device.allowDowngrade || allowDowngradeOverride)
        {
            throw FerryError(
                code: .downgrade,
                message:
                    "the bundle's version \(manifest.version) is older than the booted \(booted) (use --allow-downgrade)"
            )
        }
    }
}
