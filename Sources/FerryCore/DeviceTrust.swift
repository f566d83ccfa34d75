import FerryBundle
import FerryCrypto
import FerrySystem

/// Builds the device's trust policy from the configuration and the state directory.
public enum DeviceTrust {
    /// The latest of the clock, the binary's build time and the last trusted time recorded:
    /// devices without a real-time clock boot in 1970, and time never goes backwards.
    public static func trustedTime(store: StateStore, clock: Int64 = WallClock.now()) throws(FerryError) -> Int64 {
        return max(clock, WallClock.buildTime, try store.lastTrustedTime())
    }

    /// Which keyring is in use: the rotated one in the state directory, else the configured one.
    public static func keyringPath(_ configuration: SystemConfiguration) throws(FerryError) -> String {
        let store = StateStore(directory: configuration.stateDirectory)
        if TextFile.exists(store.keyringPath) { return store.keyringPath }
        guard let configured = configuration.keyring else {
            throw FerryError(
                code: .untrusted, message: "\(configuration.path) names no keyring: no bundle can be trusted")
        }
        return configured
    }

    /// The full device policy: keyring and threshold, deny-lists, compatible, version floor, expiry.
    public static func policy(
        configuration: SystemConfiguration, booted: BootedGroup, allowDowngrade: Bool, clock: Int64 = WallClock.now()
    ) throws(FerryError) -> TrustPolicy {
        let store = StateStore(directory: configuration.stateDirectory)
        let keyring = try Keyring(pemFile: try keyringPath(configuration))
        var denyList = Set(configuration.denyList)
        denyList.formUnion(try store.trustRecord().keyring?.denyList ?? [])
        let records = try store.slotRecords()
        var bootedVersion: SemanticVersion? = nil
        if let bootname = booted.bootname, let group = configuration.group(bootname) {
            let versions = group.slots.compactMap { records[$0.name]?.version.flatMap(SemanticVersion.init) }
            bootedVersion = versions.max()
        }
        return TrustPolicy(
            keyring: keyring, threshold: configuration.signatureThreshold, denyList: denyList,
            trustedTime: try trustedTime(store: store, clock: clock),
            device: TrustPolicy.DeviceChecks(
                compatible: configuration.compatible, bootedVersion: bootedVersion, allowDowngrade: allowDowngrade,
                securityFloor: try store.securityFloor()))
    }

    /// The device key of the configuration, loaded (through its provider, if any).
    /// - Throws: `.deviceKeyInvalid`; when none is configured, naming `what` needs one.
    public static func deviceKey(_ configuration: SystemConfiguration, for what: String) throws(FerryError) -> DeviceKey
    {
        guard let key = configuration.deviceKey else {
            throw FerryError(
                code: .deviceKeyInvalid, message: "\(what), and \(configuration.path) names no deviceKey to open it")
        }
        return try DeviceKey(
            uri: key.key, certificatePath: key.certificate, providers: key.providers,
            opensslConfig: key.opensslConfig)
    }

    /// After a bundle's manifest is verified: an encrypted bundle is opened with the device key
    /// (before anything is written); a plain one is refused where `requireEncryption` is set.
    /// - Throws: `.notEncrypted`, `.deviceKeyInvalid`, `.notAddressed`, `.bundleInvalid`.
    public static func unlock(_ reader: BundleReader, configuration: SystemConfiguration) throws(FerryError) {
        guard let encryption = reader.manifest?.encryption else {
            if configuration.requireEncryption {
                throw FerryError(
                    code: .notEncrypted,
                    message:
                        "the bundle is not encrypted, and \(configuration.path) requires encryption (requireEncryption)"
                )
            }
            return
        }
        let key = try deviceKey(configuration, for: "the bundle is encrypted ('\(encryption.envelope)')")
        try reader.unlock(with: key)
    }
}
