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
        func set(_ key: String, _ value: JSONValue?) { object[key] = value ?? nil }
        set("sha256", sha256.map(JSONValue.string))
        set("size", size.map { JSONValue.number(Double($0)) })
        set("version", version.map(JSONValue.string))
        set("source", source.map(JSONValue.string))
        set("installedAt", installedAt.map(JSONValue.string))
        return .object(object)
    }
}

/// The state directory: small JSON files, written atomically (`DurableFile`) and versioned.
///
/// Files carry a `formatVersion`. An older Ferry (in the other slot) reads what a newer one wrote
/// and keeps keys it does not know when it rewrites a file. Layout (docs/state.md):
/// `lock` (the global lock), `slots.json` (installed image per slot), `booted` (sandbox only).
public struct StateStore: Sendable {
    public static let formatVersion: Int64 = 1
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var slotsPath: String { "\(directory)/slots.json" }
    public var bootedPath: String { "\(directory)/booted" }
    public var lockPath: String { "\(directory)/lock" }

    /// The sandbox's booted group, from the `booted` file; nil when absent or empty.
    public func sandboxBootedGroup() -> String? {
        guard let text = TextFile.attribute(bootedPath)?.trimmingCharacters(), !text.isEmpty else { return nil }
        return text
    }

    /// Records the sandbox's booted group (used by tools/sandbox-boot and tests).
    public func setSandboxBootedGroup(_ bootname: String) throws(FerryError) {
        try DurableFile.createDirectory(directory)
        try DurableFile.write("\(bootname)\n", to: bootedPath)
    }

    /// The installed-image records by slot name (empty when no file exists yet).
    /// - Throws: `.stateInvalid` when the file exists but is not the expected JSON.
    public func slotRecords() throws(FerryError) -> [String: InstalledSlotRecord] {
        guard TextFile.exists(slotsPath) else { return [:] }
        let root = try readObject(slotsPath)
        guard let slots = root["slots"] else { return [:] }
        guard case .object(let entries) = slots else {
            throw FerryError(code: .stateInvalid, message: "\(slotsPath): 'slots' must be an object")
        }
        var records: [String: InstalledSlotRecord] = [:]
        for (name, value) in entries {
            guard case .object(let fields) = value else {
                throw FerryError(code: .stateInvalid, message: "\(slotsPath): slots.\(name) must be an object")
            }
            records[name] = InstalledSlotRecord(json: fields)
        }
        return records
    }

    /// Replaces the record of one slot (nil removes it), keeping every other key of the file.
    public func setSlotRecord(_ record: InstalledSlotRecord?, for slot: String) throws(FerryError) {
        var root = TextFile.exists(slotsPath) ? try readObject(slotsPath) : [:]
        var slots = root["slots"]?.objectValue ?? [:]
        slots[slot] = record?.json
        root["slots"] = .object(slots)
        if (root["formatVersion"]?.int64Value ?? 0) < Self.formatVersion {
            root["formatVersion"] = .number(Double(Self.formatVersion))
        }
        try DurableFile.createDirectory(directory)
        try DurableFile.write(JSONValue.object(root).serialized(), to: slotsPath)
    }

    /// Reads a state file holding a JSON object.
    func readObject(_ path: String) throws(FerryError) -> [String: JSONValue] {
        let bytes: [UInt8]
        do { bytes = try TextFile.readBytes(path, limit: 1 << 20) } catch {
            throw FerryError(code: .stateInvalid, message: "cannot read state file: \(error.message)", cause: error)
        }
        let value = try JSONValue.parse(bytes, what: "state file '\(path)'", code: .stateInvalid)
        guard case .object(let object) = value else {
            throw FerryError(code: .stateInvalid, message: "state file '\(path)' must hold a JSON object")
        }
        return object
    }

    /// Takes the global lock that serializes every command that writes (creating the state directory).
    /// - Throws: `.lockHeld` naming the holder when another command runs.
    public func acquireWriteLock(command: String) throws(FerryError) -> FileLock {
        try DurableFile.createDirectory(directory)
        return try FileLock.acquire(lockPath, holder: "ferry \(command)")
    }
}

extension String {
    func trimmingCharacters() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[start...end])
    }
}
