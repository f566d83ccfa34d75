import FerryJSON
import FerrySystem

/// Ferry's own record of boot control, in `<state>/boot.json` (docs/state.md).
///
/// The bootloader's variables say what boots next; this file says what Ferry asked for, so that
/// `boot-check` can tell that the bootloader fell back: `pending` is the group Ferry made primary
/// that has not been confirmed yet.
public struct BootState: Sendable, Equatable, StateRecord {
    /// The group Ferry last made primary.
    public var primary: String?
    /// The group made primary and not yet confirmed (on trial).
    public var pending: String?
    /// The kernel's boot ID when `pending` was made primary: boot-check in that same boot (no
    /// reboot yet) must not take the other group running for a fallback.
    public var pendingBootID: String?
    /// The last fallback boot-check noticed.
    public var rolledBackFrom: String?
    public var rolledBackTo: String?
    public var rolledBackAt: String?
    /// When each group was last confirmed (mark good) and marked bad.
    public var confirmedAt: [String: String]
    public var markedBadAt: [String: String]
    /// Every key as read (kept for newer Ferry versions).
    var raw: [String: JSONValue]

    public init() {
        confirmedAt = [:]
        markedBadAt = [:]
        raw = [:]
    }

    init(json: [String: JSONValue], path: String) {
        self.init()
        raw = json
        primary = json["primary"]?.stringValue
        pending = json["pending"]?.stringValue
        pendingBootID = json["pendingBootID"]?.stringValue
        if let rollback = json["rollback"]?.objectValue {
            rolledBackFrom = rollback["from"]?.stringValue
            rolledBackTo = rollback["to"]?.stringValue
            rolledBackAt = rollback["at"]?.stringValue
        }
        for (bootname, value) in json["groups"]?.objectValue ?? [:] {
            confirmedAt[bootname] = value.objectValue?["confirmedAt"]?.stringValue
            markedBadAt[bootname] = value.objectValue?["markedBadAt"]?.stringValue
        }
    }

    var json: [String: JSONValue] {
        var object = raw
        object["primary"] = primary.map(JSONValue.string)
        object["pending"] = pending.map(JSONValue.string)
        object["pendingBootID"] = pending == nil ? nil : pendingBootID.map(JSONValue.string)
        if let rolledBackFrom {
            var rollback = object["rollback"]?.objectValue ?? [:]
            rollback["from"] = .string(rolledBackFrom)
            rollback["to"] = rolledBackTo.map(JSONValue.string)
            rollback["at"] = rolledBackAt.map(JSONValue.string)
            object["rollback"] = .object(rollback)
        } else {
            object["rollback"] = nil
        }
        var groups = object["groups"]?.objectValue ?? [:]
        for bootname in Set(confirmedAt.keys).union(markedBadAt.keys) {
            var group = groups[bootname]?.objectValue ?? [:]
            group["confirmedAt"] = confirmedAt[bootname].map(JSONValue.string)
            group["markedBadAt"] = markedBadAt[bootname].map(JSONValue.string)
            groups[bootname] = .object(group)
        }
        object["groups"] = groups.isEmpty ? nil : .object(groups)
        return object
    }
}

extension StateStore {
    public var bootStatePath: String { path(.boot) }

    /// Ferry's boot-control record (empty when none was written yet).
    public func bootState() throws(FerryError) -> BootState { try read(BootState.self, from: .boot) ?? BootState() }

    /// Replaces the boot-control record atomically.
    public func setBootState(_ state: BootState) throws(FerryError) { try write(state, to: .boot) }
}
