import FerryCrypto
import FerryJSON
import FerrySystem

/// `<state>/trust.json`: what the device has learnt to trust and must never forget, kept outside
/// the slots so that rolling a slot back does not roll it back (docs/state.md, docs/bundle-format.md).
public struct TrustRecord: Sendable, Equatable, StateRecord {
    /// A keyring adopted from a bundle (its PEM is `keyring.pem`).
    public struct AdoptedKeyring: Sendable, Equatable {
        /// SHA-256 fingerprints (hex) of its certificates.
        public var certificates: [String]
        /// Signer fingerprints refused from then on, with the configured deny-list.
        public var denyList: [String]
        /// The bundle that carried it.
        public var from: String
        public var adoptedAt: String?
        var raw: [String: JSONValue] = [:]
    }

    /// The last update index accepted: an older serial is a replay.
    public struct AcceptedIndex: Sendable, Equatable {
        public var serial: Int64
        /// SHA-256 (hex) of its bytes: another index with the same serial is refused.
        public var sha256: String
        public var acceptedAt: String?
        var raw: [String: JSONValue] = [:]
    }

    /// No bundle with a lower security version is installed (0: none recorded).
    public var securityFloor: Int64 = 0
    /// The latest time known to have passed (ISO 8601): time never goes backwards for Ferry.
    public var lastTrustedTime: String?
    /// Per group: the security version installed into it, raised into the floor on confirmation.
    public var pendingSecurityVersion: [String: Int64] = [:]
    public var keyring: AdoptedKeyring?
    public var updateIndex: AcceptedIndex?
    var raw: [String: JSONValue] = [:]

    public init() {}

    init(json: [String: JSONValue], path: String) {
        raw = json
        securityFloor = json["securityFloor"]?.int64Value ?? 0
        lastTrustedTime = json["lastTrustedTime"]?.stringValue
        pendingSecurityVersion = (json["pendingSecurityVersion"]?.objectValue ?? [:]).compactMapValues(\.int64Value)
        if let object = json["keyring"]?.objectValue {
            keyring = AdoptedKeyring(
                certificates: Self.strings(object["certificates"]), denyList: Self.strings(object["denyList"]),
                from: object["from"]?.stringValue ?? "", adoptedAt: object["adoptedAt"]?.stringValue, raw: object)
        }
        if let object = json["updateIndex"]?.objectValue, let serial = object["serial"]?.int64Value {
            updateIndex = AcceptedIndex(
                serial: serial, sha256: object["sha256"]?.stringValue ?? "",
                acceptedAt: object["acceptedAt"]?.stringValue, raw: object)
        }
    }

    var json: [String: JSONValue] {
        var object = raw
        object["securityFloor"] = securityFloor == 0 && raw["securityFloor"] == nil ? nil : .integer(securityFloor)
        object["lastTrustedTime"] = lastTrustedTime.map(JSONValue.string)
        object["pendingSecurityVersion"] =
            pendingSecurityVersion.isEmpty && raw["pendingSecurityVersion"] == nil
            ? nil : .object(pendingSecurityVersion.mapValues { .integer($0) })
        object["keyring"] = keyring.map { keyring in
            var entry = keyring.raw
            entry["certificates"] = .array(keyring.certificates.map(JSONValue.string))
            entry["denyList"] = .array(keyring.denyList.map(JSONValue.string))
            entry["from"] = .string(keyring.from)
            entry["adoptedAt"] = keyring.adoptedAt.map(JSONValue.string)
            return .object(entry)
        }
        object["updateIndex"] = updateIndex.map { index in
            var entry = index.raw
            entry["serial"] = .integer(index.serial)
            entry["sha256"] = .string(index.sha256)
            entry["acceptedAt"] = index.acceptedAt.map(JSONValue.string)
            return .object(entry)
        }
        return object
    }

    private static func strings(_ value: JSONValue?) -> [String] {
        guard case .array(let items)? = value else { return [] }
        return items.compactMap(\.stringValue)
    }
}

extension StateStore {
    public var keyringPath: String { path(.keyring) }
    public var trustPath: String { path(.trust) }

    /// The trust record (empty when none was written yet).
    public func trustRecord() throws(FerryError) -> TrustRecord {
        try read(TrustRecord.self, from: .trust) ?? TrustRecord()
    }

    /// Reads the trust record, lets `change` edit it, and writes it back if it changed.
    func updateTrustRecord(_ change: (inout TrustRecord) throws(FerryError) -> Void) throws(FerryError) {
        let before = try trustRecord()
        var record = before
        try change(&record)
        if record != before { try write(record, to: .trust) }
    }

    /// The security version floor (0 when none was recorded).
    public func securityFloor() throws(FerryError) -> Int64 { try trustRecord().securityFloor }

    /// Raises the floor (never lowers it).
    public func raiseSecurityFloor(to value: Int64) throws(FerryError) {
        try updateTrustRecord { record in record.securityFloor = max(record.securityFloor, value) }
    }

    /// The security version of the bundle installed into a group, raised into the floor when the
    /// group is confirmed.
    func setPendingSecurityVersion(_ version: Int64, for bootname: String) throws(FerryError) {
        try updateTrustRecord { record in record.pendingSecurityVersion[bootname] = version }
    }

    /// Raises the floor to the security version installed in `bootname`, if one is pending.
    func confirmSecurityVersion(of bootname: String) throws(FerryError) {
        try updateTrustRecord { record in
            if let version = record.pendingSecurityVersion[bootname] {
                record.securityFloor = max(record.securityFloor, version)
            }
        }
    }

    /// The last trusted time recorded (0 when none).
    func lastTrustedTime() throws(FerryError) -> Int64 {
        try trustRecord().lastTrustedTime.flatMap(WallClock.parseISO8601) ?? 0
    }

    /// Records that `time` is known to have passed (time never goes backwards for Ferry).
    public func recordTrustedTime(_ time: Int64) throws(FerryError) {
        try updateTrustRecord { record in
            if time > (record.lastTrustedTime.flatMap(WallClock.parseISO8601) ?? 0) {
                record.lastTrustedTime = WallClock.iso8601(time)
            }
        }
    }

    /// Adopts a new keyring carried by a verified bundle: stored atomically, used from the next
    /// bundle on, with its deny-list.
    public func adoptKeyring(_ pem: [UInt8], denyList: [String], from bundle: String) throws(FerryError) {
        let keyring = try Keyring(pem: pem, name: "the bundle's keyring")
        try DurableFile.createDirectory(directory)
        try DurableFile.write(pem, to: keyringPath)
        try updateTrustRecord { record in
            record.keyring = TrustRecord.AdoptedKeyring(
                certificates: keyring.certificates.map(\.fingerprint.hex), denyList: denyList, from: bundle,
                adoptedAt: WallClock.iso8601())
        }
    }
}
