import FerryJSON
import FerrySystem

/// Ferry's own record of boot control, in `<state>/boot.json` (docs/state.md).
///
/// The bootloader's variables say what boots next; this file says what Ferry asked for, so that
/// `boot-check` can tell that the bootloader fell back: `pending` is the group Ferry made primary
/// that has not been confirmed yet.
public struct BootState: Sendable, Equatable {
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

    init(json: [String: JSONValue]) {
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

    var json: JSONValue {
        var object = raw
        object["formatVersion"] = .number(Double(max(StateStore.formatVersion, object["formatVersion"]?.int64Value ?? 0)))
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
        return .object(object.filter { $0.value != .null })
    }
}

extension StateStore {
    public var bootStatePath: String { "\(directory)/boot.json" }

    /// This boot's ID: the kernel's (`/proc/sys/kernel/random/boot_id`), or on a sandbox the one
    /// tools/sandbox-boot writes to `<state>/boot-id` for each simulated boot; nil when unknown.
    public func currentBootID(sandbox: Bool) -> String? {
        let text = TextFile.attribute(sandbox ? "\(directory)/boot-id" : "/proc/sys/kernel/random/boot_id")?.trimmingCharacters()
        return text?.isEmpty == false ? text : nil
    }

    /// Ferry's boot-control record (empty when none was written yet).
    public func bootState() throws(FerryError) -> BootState {
        guard TextFile.exists(bootStatePath) else { return BootState() }
        let object = try readObject(bootStatePath)
        return BootState(json: object)
    }

    /// Replaces the boot-control record atomically.
    public func setBootState(_ state: BootState) throws(FerryError) {
        try DurableFile.createDirectory(directory)
        try DurableFile.write(state.json.serialized(), to: bootStatePath)
    }
}
