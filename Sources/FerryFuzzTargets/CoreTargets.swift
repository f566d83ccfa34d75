import FerryCore
import FerryJSON
import FerrySystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The system configuration and the state directory.
enum CoreTargets {
    /// `system.json` (relative paths resolve against `/etc/ferry`; nothing is opened).
    @Sendable static func systemConfiguration(_ input: UnsafeRawBufferPointer) {
        do {
            let configuration = try SystemConfiguration.parse(Array(input), path: "/etc/ferry/system.json")
            guard !configuration.compatible.isEmpty else { violated("system-config", "accepted an empty compatible") }
        } catch {}
    }

    /// The input as every state file of a state directory, read by Ferry's readers; the records
    /// that parse are written back (keeping unknown keys) and must read back the same.
    @Sendable static func stateFiles(_ input: UnsafeRawBufferPointer) {
        let store = StateStore(directory: stateDirectory)
        let files = ["slots.json", "boot.json", "trust.json", "install.json", "group-parts.json", "install-parts.json"]
        for file in files {
            do { try DurableFile.write(Array(input), to: "\(stateDirectory)/\(file)") } catch {
                fatalError("fuzz target state: cannot write \(stateDirectory)/\(file): \(error.message)")
            }
        }
        if let records = try? store.slotRecords() {
            for (slot, record) in records.sorted(by: { $0.key < $1.key }).prefix(4) {
                do {
                    try store.setSlotRecord(record, for: slot)
                    guard let again = try store.slotRecords()[slot], typed(again) == typed(record) else {
                        violated("state", "slot record '\(slot)' changed on rewrite")
                    }
                } catch {
                    violated("state", "slot record '\(slot)' cannot be rewritten: \(error.message)")
                }
            }
        }
        if let state = try? store.bootState() {
            do {
                try store.setBootState(state)
                guard typed(try store.bootState()) == typed(state) else {
                    violated("state", "boot.json changed on rewrite")
                }
            } catch {
                violated("state", "boot.json cannot be rewritten: \(error.message)")
            }
        }
        _ = try? store.trustRecord()
        _ = try? store.securityFloor()
        _ = store.installJournal()
        if case .some(.some(let parts)) = try? store.groupParts() {
            do {
                try store.setGroupParts(parts)
                guard try store.groupParts() == parts else { violated("state", "group-parts.json changed on rewrite") }
            } catch {
                violated("state", "group-parts.json cannot be rewritten: \(error.message)")
            }
        }
    }

    /// What Ferry reads from a record (unknown keys are kept as they are, except null values).
    private static func typed(_ record: InstalledSlotRecord) -> [String?] {
        [record.sha256, record.size.map { "\($0)" }, record.version, record.source, record.installedAt]
    }

    private static func typed(_ state: BootState) -> [String: String?] {
        var fields: [String: String?] = [
            // The boot ID belongs to the pending group, the rollback record to its 'from': each is
            // dropped without them (by design).
            "primary": state.primary, "pending": state.pending,
            "pendingBootID": state.pending == nil ? nil : state.pendingBootID,
        ]
        if state.rolledBackFrom != nil {
            fields["from"] = state.rolledBackFrom
            fields["to"] = state.rolledBackTo
            fields["at"] = state.rolledBackAt
        }
        for (group, time) in state.confirmedAt { fields["confirmed \(group)"] = time }
        for (group, time) in state.markedBadAt { fields["bad \(group)"] = time }
        return fields
    }

    /// A state directory of this process (on tmpfs where there is one: the writers sync).
    static let stateDirectory: String = FuzzScratch.directory("state")
}

/// Scratch directories of the targets that need a file system.
enum FuzzScratch {
    /// A new directory `ferry-fuzz-<what>-XXXXXX` under /dev/shm (or /tmp), removed at exit.
    static func directory(_ what: String) -> String {
        let base = TextFile.isDirectory("/dev/shm") ? "/dev/shm" : "/tmp"
        var template = Array("\(base)/ferry-fuzz-\(what)-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { buffer -> String? in
            guard let result = mkdtemp(buffer.baseAddress!) else { return nil }
            return String(cString: result)
        }
        guard let path else { fatalError("ferry-fuzz: cannot create a scratch directory under \(base)") }
        created.withLock { $0.append(path) }
        if !registered.withLock({
            let was = $0
            $0 = true
            return was
        }) {
            atexit { FuzzScratch.removeAll() }
        }
        return path
    }

    private static let created = Mutex<[String]>([])
    private static let registered = Mutex(false)

    static func removeAll() {
        for path in created.withLock({ $0 }) { removeTree(path) }
    }

    /// Removes a tree of files, links and directories (never follows links).
    static func removeTree(_ path: String) { try? FileSystem.removeTree(path) }

    /// The entries of a directory (empty when it cannot be read).
    static func entries(_ path: String) -> [String] { FileSystem.entries(path) }
}
