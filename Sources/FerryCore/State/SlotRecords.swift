import FerryJSON
import FerrySystem

/// What Ferry knows about the image installed in one slot.
public struct InstalledSlotRecord: Sendable, Equatable {
    /// SHA-256 (hex) of the installed image, the slot's first `size` bytes.
    public var sha256: String?
    public var size: Int64?
    public var version: String?
    /// Where it came from: `factory`, a bundle file name, `write-slot`, …
    public var source: String?
    /// UTC ISO 8601 time of the install.
    public var installedAt: String?
    /// Bootloader slots with a strategy: the region (0 or 1) selected, and the SHA-256 of the
    /// selector states Ferry wrote or was about to write (docs/bootloader-updates.md): any other
    /// selector changed behind Ferry's back.
    public var activeRegion: Int? {
        get { raw["activeRegion"]?.int64Value.map(Int.init) }
        set { raw["activeRegion"] = newValue.map { .integer($0) } }
    }
    public var selectors: [String] {
        get {
            guard case .array(let items)? = raw["selectors"] else { return [] }
            return items.compactMap(\.stringValue)
        }
        set { raw["selectors"] = newValue.isEmpty ? nil : .array(newValue.map(JSONValue.string)) }
    }
    /// Every key as read, including those a newer Ferry wrote: kept on rewrite.
    public var raw: [String: JSONValue]

    public init(
        sha256: String? = nil, size: Int64? = nil, version: String? = nil, source: String? = nil,
        installedAt: String? = nil, raw: [String: JSONValue] = [:]
    ) {
        self.sha256 = sha256
        self.size = size
        self.version = version
        self.source = source
        self.installedAt = installedAt
        self.raw = raw
    }

    init(json: [String: JSONValue]) {
        self.init(
            sha256: json["sha256"]?.stringValue, size: json["size"]?.int64Value, version: json["version"]?.stringValue,
            source: json["source"]?.stringValue, installedAt: json["installedAt"]?.stringValue, raw: json)
    }

    var json: JSONValue {
        var object = raw
        object["sha256"] = sha256.map(JSONValue.string)
        object["size"] = size.map { .integer($0) }
        object["version"] = version.map(JSONValue.string)
        object["source"] = source.map(JSONValue.string)
        object["installedAt"] = installedAt.map(JSONValue.string)
        return .object(object)
    }
}

/// `<state>/slots.json`: the installed-image record of each slot, by slot name.
struct SlotRecords: StateRecord {
    var slots: [String: InstalledSlotRecord] = [:]
    var raw: [String: JSONValue] = [:]

    init() {}

    init(json: [String: JSONValue], path: String) throws(FerryError) {
        raw = json
        guard let value = json["slots"] else { return }
        guard case .object(let entries) = value else {
            throw FerryError(code: .stateInvalid, message: "\(path): 'slots' must be an object")
        }
        for (name, value) in entries {
            guard case .object(let fields) = value else {
                throw FerryError(code: .stateInvalid, message: "\(path): slots.\(name) must be an object")
            }
            slots[name] = InstalledSlotRecord(json: fields)
        }
    }

    var json: [String: JSONValue] {
        var object = raw
        object["slots"] = .object(slots.mapValues(\.json))
        return object
    }
}

extension StateStore {
    /// The installed-image records by slot name (empty when no file exists yet).
    /// - Throws: `.stateInvalid` when the file exists but is not the expected JSON.
    public func slotRecords() throws(FerryError) -> [String: InstalledSlotRecord] {
        try read(SlotRecords.self, from: .slots)?.slots ?? [:]
    }

    /// Replaces the record of one slot (nil removes it), keeping every other key of the file.
    public func setSlotRecord(_ record: InstalledSlotRecord?, for slot: String) throws(FerryError) {
        var records = try read(SlotRecords.self, from: .slots) ?? SlotRecords()
        records.slots[slot] = record
        try write(records, to: .slots)
    }
}
