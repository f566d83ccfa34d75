import FerryDelta
import FerryJSON
import FerrySystem

/// The install journal, `<state>/install.json`: how far an install got, so that an install cut
/// at any point (power loss, SIGKILL) and started again with the same bundle continues from the
/// last checkpoint instead of from the beginning.
///
/// A checkpoint is taken every `checkpointBytes` of a slot: the slot is synced first, then the
/// journal is replaced atomically, so the journal never claims more than is durable.
public struct InstallJournal: Sendable, Equatable, StateRecord {
    /// SHA-256 of the manifest bytes: identifies the bundle (its content, not its file name).
    public var manifestSHA256: String
    /// The group being written.
    public var target: String
    public var bundle: String
    /// Per slot: chunks written and synced.
    public var chunksDone: [String: Int]
    /// Per slot written from a delta: where the apply stood at its last checkpoint.
    public var deltaPositions: [String: DeltaApplier.Position]
    /// Slots written, synced and read back completely.
    public var completed: [String]
    /// Slots whose zero chunks (``FerryBundle/Manifest/Payload/zeroChunks``) were all zeroed and
    /// synced before the rest was streamed: `chunksDone` then counts for the other chunks.
    public var zeroed: [String]
    /// Per bootloader slot: the phases of its update that are durable (docs/bootloader-updates.md).
    /// Its presence says an update of Ferry's was under way, which explains a torn table.
    public var bootloaderPhases: [String: Int] = [:]
    public var startedAt: String
    /// Every key as read, those a newer Ferry wrote included: kept on rewrite (docs/state.md).
    var raw: [String: JSONValue] = [:]

    var json: [String: JSONValue] {
        var object = raw
        object["manifestSha256"] = .string(manifestSHA256)
        object["target"] = .string(target)
        object["bundle"] = .string(bundle)
        object["chunksDone"] = .object(chunksDone.mapValues { .integer($0) })
        object["completed"] = .array(completed.map(JSONValue.string))
        object["zeroed"] = .array(zeroed.map(JSONValue.string))
        object["startedAt"] = .string(startedAt)
        object["bootloaderPhases"] =
            bootloaderPhases.isEmpty ? nil : .object(bootloaderPhases.mapValues { .integer($0) })
        object["deltaPositions"] = .object(
            deltaPositions.mapValues { position in
                .object([
                    "operation": .integer(position.operation), "deltaOffset": .integer(position.deltaOffset),
                    "targetOffset": .integer(position.targetOffset),
                ])
            })
        return object
    }

    init(manifestSHA256: String, target: String, bundle: String) {
        self.manifestSHA256 = manifestSHA256
        self.target = target
        self.bundle = bundle
        chunksDone = [:]
        deltaPositions = [:]
        completed = []
        zeroed = []
        startedAt = WallClock.iso8601()
    }

    init(json: [String: JSONValue], path: String) throws(FerryError) {
        guard let hash = json["manifestSha256"]?.stringValue, let target = json["target"]?.stringValue else {
            throw FerryError(code: .stateInvalid, message: "state file '\(path)': needs 'manifestSha256' and 'target'")
        }
        raw = json
        manifestSHA256 = hash
        self.target = target
        bundle = json["bundle"]?.stringValue ?? ""
        chunksDone = (json["chunksDone"]?.objectValue ?? [:]).compactMapValues { $0.int64Value.map(Int.init) }
        deltaPositions = (json["deltaPositions"]?.objectValue ?? [:]).compactMapValues { value in
            guard let object = value.objectValue, let operation = object["operation"]?.int64Value,
                let deltaOffset = object["deltaOffset"]?.int64Value,
                let targetOffset = object["targetOffset"]?.int64Value
            else { return nil }
            return DeltaApplier.Position(operation: operation, deltaOffset: deltaOffset, targetOffset: targetOffset)
        }
        if case .array(let items)? = json["completed"] {
            completed = items.compactMap(\.stringValue)
        } else {
            completed = []
        }
        // (Journals of earlier versions have no such list: every zero chunk is then zeroed again.)
        if case .array(let items)? = json["zeroed"] { zeroed = items.compactMap(\.stringValue) } else { zeroed = [] }
        startedAt = json["startedAt"]?.stringValue ?? ""
        bootloaderPhases = (json["bootloaderPhases"]?.objectValue ?? [:]).compactMapValues {
            $0.int64Value.map(Int.init)
        }
    }
}

extension StateStore {
    public var journalPath: String { path(.installJournal) }

    /// The journal of an interrupted install, if any. An unreadable journal counts as none
    /// (a stale or torn journal must never block a new install).
    public func installJournal() -> InstallJournal? { try? read(InstallJournal.self, from: .installJournal) }

    func setInstallJournal(_ journal: InstallJournal) throws(FerryError) { try write(journal, to: .installJournal) }

    /// Drops the journal (`ferry install --abort`, a finished install, a stale journal).
    public func removeInstallJournal() throws(FerryError) { try write(InstallJournal?.none, to: .installJournal) }
}
