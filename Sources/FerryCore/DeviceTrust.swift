import FerryBundle
import FerryCrypto
import FerryJSON
import FerrySystem

/// The device's trust state in the state directory: the rotated keyring, the security version
/// floor and the last trusted time (docs/state.md, docs/bundle-format.md).
extension StateStore {
    public var keyringPath: String { "\(directory)/keyring.pem" }
    public var trustPath: String { "\(directory)/trust.json" }

    /// The trust record: `securityFloor`, `lastTrustedTime`, `keyring` (fingerprint, denyList, from).
    public func trustRecord() throws(FerryError) -> [String: JSONValue] {
        guard TextFile.exists(trustPath) else { return [:] }
        let object = try readObject(trustPath)
        return object
    }

    func setTrustRecord(_ record: [String: JSONValue]) throws(FerryError) {
        var record = record
        record["formatVersion"] = .number(Double(max(StateStore.formatVersion, record["formatVersion"]?.int64Value ?? 0)))
        try DurableFile.createDirectory(directory)
        try DurableFile.write(JSONValue.object(record).serialized(), to: trustPath)
    }

    /// The security version floor (0 when none was recorded).
    public func securityFloor() throws(FerryError) -> Int64 { try trustRecord()["securityFloor"]?.int64Value ?? 0 }

    /// Raises the floor (never lowers it).
    public func raiseSecurityFloor(to value: Int64) throws(FerryError) {
        var record = try trustRecord()
        if (record["securityFloor"]?.int64Value ?? 0) < value {
            record["securityFloor"] = .number(Double(value))
            try setTrustRecord(record)
        }
    }

    /// Records that `time` is known to have passed (time never goes backwards for Ferry).
    public func recordTrustedTime(_ time: Int64) throws(FerryError) {
        var record = try trustRecord()
        let known = record["lastTrustedTime"]?.stringValue.flatMap(WallClock.parseISO8601) ?? 0
        if time > known {
            record["lastTrustedTime"] = .string(WallClock.iso8601(time))
            try setTrustRecord(record)
        }
    }

    /// Adopts a new keyring carried by a verified bundle: stored atomically, used from the next
    /// bundle on, with its deny-list.
    public func adoptKeyring(_ pem: [UInt8], denyList: [String], from bundle: String) throws(FerryError) {
        let keyring = try Keyring(pem: pem, name: "the bundle's keyring")
        try DurableFile.createDirectory(directory)
        try DurableFile.write(pem, to: keyringPath)
        var record = try trustRecord()
        record["keyring"] = .object([
            "certificates": .array(keyring.certificates.map { .string($0.fingerprint.hex) }),
            "denyList": .array(denyList.map(JSONValue.string)), "from": .string(bundle),
            "adoptedAt": .string(WallClock.iso8601()),
        ])
        try setTrustRecord(record)
    }
}

/// Builds the device's trust policy from the configuration and the state directory.
public enum DeviceTrust {
    /// The latest of the clock, the binary's build time and the last trusted time recorded:
    /// devices without a real-time clock boot in 1970, and time never goes backwards.
    public static func trustedTime(store: StateStore, clock: Int64 = WallClock.now()) throws(FerryError) -> Int64 {
        let recorded = try store.trustRecord()["lastTrustedTime"]?.stringValue.flatMap(WallClock.parseISO8601) ?? 0
        return max(clock, WallClock.buildTime, recorded)
    }

    /// Which keyring is in use: the rotated one in the state directory, else the configured one.
    public static func keyringPath(_ configuration: SystemConfiguration) throws(FerryError) -> String {
        let store = StateStore(directory: configuration.stateDirectory)
        if TextFile.exists(store.keyringPath) { return store.keyringPath }
        guard let configured = configuration.keyring else {
            throw FerryError(code: .untrusted, message: "\(configuration.path) names no keyring: no bundle can be trusted")
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
        if case .array(let entries)? = try store.trustRecord()["keyring"]?.objectValue?["denyList"] {
            denyList.formUnion(entries.compactMap(\.stringValue))
        }
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
}
