import FerryJSON
import FerrySystem

/// Every file of the state directory (docs/state.md lists the same, and a test keeps the two equal).
///
/// The JSON ones each have one record type in this folder, read and written only through
/// `StateStore.read`/`StateStore.write`, which keep every key a newer Ferry wrote.
public enum StateFile: String, CaseIterable, Sendable {
    /// The global lock (`FileLock`): every command that writes takes it first.
    case lock = "lock"
    /// `SlotRecords`: what is installed in each slot.
    case slots = "slots.json"
    /// Sandbox only: the simulated boot's ID (tools/sandbox-boot).
    case bootID = "boot-id"
    /// `BootState`: what Ferry asked the bootloader for.
    case boot = "boot.json"
    /// `InstallJournal`: how far an install in progress got.
    case installJournal = "install.json"
    /// `GroupParts`: the apps and settings of a mixed bundle, staged or active with their group.
    case groupParts = "group-parts.json"
    /// `GroupParts` with no group: an app or settings install being activated.
    case installParts = "install-parts.json"
    /// `TrustRecord`: security version floor, trusted time, accepted index, adopted keyring.
    case trust = "trust.json"
    /// A keyring adopted from a bundle (PEM): replaces the configured one.
    case keyring = "keyring.pem"
    /// Sandbox only: the bootname of the booted group.
    case booted = "booted"
}

/// A JSON state file's content. `init` reads the keys this Ferry knows and keeps the object as
/// `raw`; `json` sets or removes the known keys on top of `raw`, so unknown keys survive a rewrite.
protocol StateRecord {
    init(json: [String: JSONValue], path: String) throws(FerryError)
    var json: [String: JSONValue] { get }
}

/// The state directory: small JSON files, written atomically (`DurableFile`) and versioned.
///
/// Files carry a `formatVersion`. An older Ferry (in the other slot) reads what a newer one wrote
/// and keeps keys it does not know when it rewrites a file; the version written is never lowered.
/// Each file's record and its accessors live in this folder, one file each (`StateFile` lists them).
public struct StateStore: Sendable {
    public static let formatVersion: Int64 = 1
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public func path(_ file: StateFile) -> String { "\(directory)/\(file.rawValue)" }

    public var slotsPath: String { path(.slots) }
    public var bootedPath: String { path(.booted) }
    public var lockPath: String { path(.lock) }

    // MARK: - Records

    /// The record in `file`; nil when the file does not exist.
    /// - Throws: `.stateInvalid` when it exists but is not the expected JSON.
    func read<Record: StateRecord>(_ type: Record.Type, from file: StateFile) throws(FerryError) -> Record? {
        let path = path(file)
        guard TextFile.exists(path) else { return nil }
        return try Record(json: try readObject(path), path: path)
    }

    /// Replaces `file` atomically with `record`, or removes it (nil).
    func write<Record: StateRecord>(_ record: Record?, to file: StateFile) throws(FerryError) {
        let path = path(file)
        guard let record else {
            guard TextFile.exists(path) else { return }
            try FileSystem.remove(path)
            IOTrace.recordRemoval(path)
            try DurableFile.synchronizeDirectory(directory)
            return
        }
        var object = record.json
        object["formatVersion"] = .number(Double(max(Self.formatVersion, object["formatVersion"]?.int64Value ?? 0)))
        try DurableFile.createDirectory(directory)
        try DurableFile.write(JSONValue.object(object).serialized(), to: path)
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

    // MARK: - Lock and sandbox

    /// Takes the global lock that serializes every command that writes (creating the state directory).
    /// - Throws: `.lockHeld` naming the holder when another command runs.
    public func acquireWriteLock(command: String) throws(FerryError) -> FileLock {
        try DurableFile.createDirectory(directory)
        return try FileLock.acquire(lockPath, holder: "ferry \(command)")
    }

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

    /// This boot's ID: the kernel's (`/proc/sys/kernel/random/boot_id`), or on a sandbox the one
    /// tools/sandbox-boot writes to `<state>/boot-id` for each simulated boot; nil when unknown.
    public func currentBootID(sandbox: Bool) -> String? {
        let text = TextFile.attribute(sandbox ? path(.bootID) : "/proc/sys/kernel/random/boot_id")?.trimmingCharacters()
        return text?.isEmpty == false ? text : nil
    }
}

extension JSONValue {
    /// A number from an integer (state files keep integers as JSON numbers).
    static func integer<T: BinaryInteger>(_ value: T) -> JSONValue { .number(Double(value)) }
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
