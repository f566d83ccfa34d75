import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

@testable import FerryCore

/// The state directory: `slots.json` records, the sandbox `booted` file and the global lock.
@Suite struct StateStoreTests {
    /// The raw JSON object of a file.
    func rawObject(_ path: String) throws -> [String: JSONValue] {
        let value = try JSONValue.parse(try readFile(path), what: path, code: .stateInvalid)
        return try #require(value.objectValue)
    }

    @Test func slotRecordsReadMakeTestDisksSlotsFile() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try Sandbox.make(in: dir).configuration()
            let store = StateStore(directory: configuration.stateDirectory)
            #expect(store.slotsPath == "\(configuration.directory)/state/slots.json")
            let records = try store.slotRecords()
            #expect(records.keys.sorted() == ["modem_a", "rootfs_a", "tee_a"])
            let sizes = records.mapValues { $0.size }
            #expect(sizes == ["rootfs_a": 16 << 20, "modem_a": 8 << 20, "tee_a": 4 << 20])
            for (name, record) in records {
                #expect(record.version == "1.0.0", "\(name)")
                #expect(record.source == "factory", "\(name)")
                #expect(record.sha256?.count == 64, "\(name)")
                #expect(record.installedAt?.hasSuffix("Z") == true, "\(name)")
                #expect(record.raw.keys.sorted() == ["installedAt", "sha256", "size", "source", "version"])
            }
        }
    }

    @Test func aMissingSlotsFileMeansNoRecords() async throws {
        try await withTemporaryDirectory { dir in
            #expect(try StateStore(directory: "\(dir)/state").slotRecords().isEmpty)
            // A file without a "slots" member has no records either.
            try makeFile("\(dir)/slots.json", bytes: Array(#"{ "formatVersion": 1 }"#.utf8))
            #expect(try StateStore(directory: dir).slotRecords().isEmpty)
        }
    }

    @Test func setSlotRecordKeepsUnknownKeys() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            let original = """
                {
                  "formatVersion": 1,
                  "futureKey": { "nested": [1, "two", true, null] },
                  "slots": {
                    "rootfs_a": { "sha256": "\(String(repeating: "a", count: 64))", "size": 1048576,
                                  "version": "1.0.0", "futureField": "keep me", "futureNumber": 7 },
                    "modem_a": { "version": "0.9", "source": "factory", "futureFlag": false }
                  }
                }
                """
            try makeFile(store.slotsPath, bytes: Array(original.utf8))

            var record = try #require(try store.slotRecords()["rootfs_a"])
            #expect(record.raw["futureField"] == .string("keep me"))
            record.version = "2.0.0"
            record.source = "update-2.0.0.ferry"
            record.sha256 = String(repeating: "b", count: 64)
            try store.setSlotRecord(record, for: "rootfs_a")

            let root = try rawObject(store.slotsPath)
            #expect(root["formatVersion"] == .number(1))
            #expect(root["futureKey"] == .object(["nested": .array([.number(1), .string("two"), .bool(true), .null])]))
            let slots = try #require(root["slots"]?.objectValue)
            let rootfsA = try #require(slots["rootfs_a"]?.objectValue)
            #expect(rootfsA["futureField"] == .string("keep me"))
            #expect(rootfsA["futureNumber"] == .number(7))
            #expect(rootfsA["version"] == .string("2.0.0"))
            #expect(rootfsA["source"] == .string("update-2.0.0.ferry"))
            #expect(rootfsA["sha256"] == .string(String(repeating: "b", count: 64)))
            #expect(rootfsA["size"] == .number(1_048_576))
            // The other record is untouched.
            #expect(
                slots["modem_a"]
                    == .object(["version": .string("0.9"), "source": .string("factory"), "futureFlag": .bool(false)]))

            // And reading it back through the store gives the update.
            let reread = try store.slotRecords()
            #expect(reread["rootfs_a"]?.version == "2.0.0")
            #expect(reread["rootfs_a"]?.size == 1_048_576)
            #expect(reread["modem_a"]?.version == "0.9")
        }
    }

    @Test func clearingAFieldRemovesItsKeyButKeepsUnknownOnes() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(
                store.slotsPath,
                bytes: Array(#"{ "slots": { "tee_a": { "version": "1", "installedAt": "x", "extra": 1 } } }"#.utf8))
            var record = try #require(try store.slotRecords()["tee_a"])
            record.installedAt = nil
            try store.setSlotRecord(record, for: "tee_a")
            let tee = try #require(try rawObject(store.slotsPath)["slots"]?.objectValue?["tee_a"]?.objectValue)
            #expect(tee == ["version": .string("1"), "extra": .number(1)])
        }
    }

    @Test func setSlotRecordNilRemovesTheRecord() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try Sandbox.make(in: dir).configuration()
            let store = StateStore(directory: configuration.stateDirectory)
            try store.setSlotRecord(nil, for: "modem_a")
            #expect(try store.slotRecords().keys.sorted() == ["rootfs_a", "tee_a"])
            // Removing a record that is not there is fine.
            try store.setSlotRecord(nil, for: "modem_b")
            #expect(try store.slotRecords().count == 2)
        }
    }

    @Test func setSlotRecordCreatesTheDirectoryAndFile() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: "\(dir)/var/lib/ferry")
            let record = InstalledSlotRecord(
                sha256: String(repeating: "c", count: 64), size: 1 << 40, version: "3.1", source: "write-slot",
                installedAt: "2026-01-01T00:00:00Z")
            try store.setSlotRecord(record, for: "rootfs_b")
            let root = try rawObject(store.slotsPath)
            #expect(root["formatVersion"] == .number(1))
            let back = try #require(try store.slotRecords()["rootfs_b"])
            #expect(back.sha256 == record.sha256)
            #expect(back.size == 1 << 40)
            #expect(back.version == "3.1")
            #expect(back.source == "write-slot")
            #expect(back.installedAt == "2026-01-01T00:00:00Z")
            // No temporary file is left next to it.
            #expect(try Shell.check(["ls", "-A", store.directory]) == "slots.json\n")
        }
    }

    @Test func aNewerFormatVersionIsKept() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(store.slotsPath, bytes: Array(#"{ "formatVersion": 3, "slots": {} }"#.utf8))
            try store.setSlotRecord(InstalledSlotRecord(version: "1"), for: "rootfs_a")
            #expect(try rawObject(store.slotsPath)["formatVersion"] == .number(3))
        }
    }

    @Test(arguments: [
        "not json",
        "",
        "[1, 2]",
        #""slots""#,
        #"{ "slots": [] }"#,
        #"{ "slots": "rootfs_a" }"#,
        #"{ "slots": { "rootfs_a": 5 } }"#,
        #"{ "slots": { "rootfs_a": ["sha256"] } }"#,
        #"{ "slots": { "rootfs_a": { "version": "1" } "#,
    ])
    func aMalformedSlotsFileIsStateInvalid(text: String) async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(store.slotsPath, bytes: Array(text.utf8))
            expectFerryError(.stateInvalid) { try store.slotRecords() }
        }
    }

    @Test(arguments: ["not json", "[1, 2]", "null"])
    func setSlotRecordRefusesToOverwriteAMalformedFile(text: String) async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(store.slotsPath, bytes: Array(text.utf8))
            expectFerryError(.stateInvalid) {
                try store.setSlotRecord(InstalledSlotRecord(version: "1"), for: "rootfs_a")
            }
            #expect(try readFile(store.slotsPath) == Array(text.utf8))
        }
    }

    @Test func anUnreadableSlotsFileIsStateInvalid() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            // A directory where the file should be.
            try DurableFile.createDirectory(store.slotsPath)
            expectFerryError(.stateInvalid) { try store.slotRecords() }
        }
    }

    // MARK: - Sandbox booted file

    @Test(arguments: [("A\n", "A"), ("  B \n", "B"), ("A", "A"), ("", nil), ("\n", nil)] as [(String, String?)])
    func sandboxBootedGroupReadsTheTrimmedFile(text: String, expected: String?) async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(store.bootedPath, bytes: Array(text.utf8))
            #expect(store.sandboxBootedGroup() == expected)
        }
    }

    @Test func setSandboxBootedGroupWritesTheFile() async throws {
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: "\(dir)/state")
            #expect(store.sandboxBootedGroup() == nil)
            try store.setSandboxBootedGroup("B")
            #expect(try readFile(store.bootedPath) == Array("B\n".utf8))
            #expect(store.sandboxBootedGroup() == "B")
        }
    }

    // MARK: - Lock

    @Test func acquireWriteLockTwiceThrowsLockHeld() async throws {
        try await withTemporaryDirectory { dir in
            // The state directory does not exist yet: taking the lock creates it.
            let store = StateStore(directory: "\(dir)/state")
            let lock = try store.acquireWriteLock(command: "install")
            #expect(lock.path == store.lockPath)
            #expect(TextFile.isDirectory(store.directory))
            expectFerryError(.lockHeld) { try store.acquireWriteLock(command: "mark good") }
            // Another store object on the same directory shares the lock.
            expectFerryError(.lockHeld) {
                try StateStore(directory: "\(dir)/state/.").acquireWriteLock(command: "mark")
            }
            lock.release()
            let again = try store.acquireWriteLock(command: "mark good")
            again.release()
        }
    }
}

/// docs/state.md: every state file keeps the keys a newer Ferry wrote (the older Ferry in the
/// other slot rewrites them). One round trip per record: a file with unknown keys (at the top and
/// nested) is read, changed through the record, written, and the unknown keys are still there.
@Suite struct StateRecordsKeepUnknownKeysTests {
    static func roundTrip(
        _ file: String, _ text: String, through change: (StateStore) throws -> Void,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/\(file)", bytes: Array(text.utf8))
            try change(StateStore(directory: dir))
            let written = String(decoding: try readFile("\(dir)/\(file)"), as: UTF8.self)
            #expect(
                written.contains("\"fromTheFuture\""), "\(file) lost a top-level key: \(written)",
                sourceLocation: sourceLocation)
            if text.contains("\"nestedFuture\"") {
                #expect(
                    written.contains("\"nestedFuture\""), "\(file) lost a nested key: \(written)",
                    sourceLocation: sourceLocation)
            }
        }
    }

    @Test func theInstallJournal() async throws {
        try await Self.roundTrip(
            "install.json",
            #"{"formatVersion": 1, "manifestSha256": "ab", "target": "B", "bundle": "b.ferry", "fromTheFuture": [1]}"#
        ) { store in
            var journal = try #require(store.installJournal())
            journal.completed.append("rootfs_b")
            try store.setInstallJournal(journal)
        }
    }

    @Test func theGroupParts() async throws {
        try await Self.roundTrip(
            "group-parts.json",
            #"{"formatVersion": 1, "group": "B", "bundle": "b", "version": "1", "state": "staged", "fromTheFuture": true, "parts": [{"kind": "app", "name": "nav", "version": "2", "nestedFuture": 3}]}"#
        ) { store in
            var parts = try #require(try store.groupParts())
            parts.state = .active
            try store.setGroupParts(parts)
        }
    }

    @Test func theBootState() async throws {
        try await Self.roundTrip("boot.json", #"{"formatVersion": 1, "pending": "B", "fromTheFuture": {"a": 1}}"#) {
            store in
            var state = try store.bootState()
            state.pending = nil
            try store.setBootState(state)
        }
    }

    @Test func theSlotRecords() async throws {
        try await Self.roundTrip(
            "slots.json",
            #"{"formatVersion": 1, "fromTheFuture": 1, "slots": {"rootfs_a": {"sha256": "ab", "nestedFuture": 2}}}"#
        ) { store in
            var record = try #require(try store.slotRecords()["rootfs_a"])
            record.version = "1.2.0"
            try store.setSlotRecord(record, for: "rootfs_a")
        }
    }

    @Test func theTrustRecord() async throws {
        try await Self.roundTrip("trust.json", #"{"formatVersion": 1, "securityFloor": 1, "fromTheFuture": "x"}"#) {
            store in
            try store.raiseSecurityFloor(to: 2)
        }
    }

    @Test func theTrustRecordWithItsNestedEntries() async throws {
        try await Self.roundTrip(
            "trust.json",
            #"{"formatVersion": 1, "fromTheFuture": 1, "keyring": {"certificates": ["ab"], "denyList": [], "from": "a", "nestedFuture": 1}, "updateIndex": {"serial": 3, "sha256": "cd", "nestedFuture": 2}, "pendingSecurityVersion": {"A": 2}}"#
        ) { store in
            try store.recordTrustedTime(1_800_000_000)
            try store.confirmSecurityVersion(of: "A")
            let record = try store.trustRecord()
            #expect(record.securityFloor == 2)
            #expect(record.updateIndex?.serial == 3)
            #expect(record.keyring?.certificates == ["ab"])
        }
    }

    @Test func theInstallParts() async throws {
        try await Self.roundTrip(
            "install-parts.json",
            #"{"formatVersion": 1, "group": "", "bundle": "b", "version": "1", "state": "activating", "fromTheFuture": true, "parts": [{"kind": "settings", "name": "carrier.json", "nestedFuture": 3}]}"#
        ) { store in
            var parts = try #require(try store.installParts())
            parts.state = .active
            try store.setInstallParts(parts)
        }
    }

    /// A file newer Ferry wrote with a higher formatVersion keeps it when an older Ferry rewrites it.
    @Test(arguments: [StateFile.slots, .boot, .trust, .installJournal, .groupParts])
    func theFormatVersionIsNeverLowered(_ file: StateFile) async throws {
        let bodies: [StateFile: String] = [
            .slots: #""slots": {}"#, .boot: #""pending": "B""#, .trust: #""securityFloor": 1"#,
            .installJournal: #""manifestSha256": "ab", "target": "B""#,
            .groupParts: #""group": "B", "state": "staged", "parts": []"#,
        ]
        try await withTemporaryDirectory { dir in
            let store = StateStore(directory: dir)
            try makeFile(
                store.path(file), bytes: Array(#"{"formatVersion": 7, "fromTheFuture": 1, \#(bodies[file]!)}"#.utf8))
            switch file {
            case .slots: try store.setSlotRecord(InstalledSlotRecord(version: "1"), for: "rootfs_a")
            case .boot: try store.setBootState(try store.bootState())
            case .trust: try store.raiseSecurityFloor(to: 5)
            case .installJournal: try store.setInstallJournal(try #require(store.installJournal()))
            default:
                let parts: GroupParts = try #require(try store.groupParts())
                try store.setGroupParts(parts)
            }
            let root = try StateStoreTests().rawObject(store.path(file))
            #expect(root["formatVersion"] == .number(7))
            #expect(root["fromTheFuture"] == .number(1))
        }
    }
}

/// docs/state.md's table names every file of the state directory, and only those (`StateFile`).
@Suite struct StateFilesAreDocumentedTests {
    @Test func docsStateListsEveryStateFile() throws {
        let text = try TextFile.read("\(TestEnvironment.packageRoot)/docs/state.md")
        var documented: Set<String> = []
        for line in text.split(separator: "\n") where line.hasPrefix("| `") {
            let cell = line.dropFirst(3)
            if let end = cell.firstIndex(of: "`") { documented.insert(String(cell[..<end])) }
        }
        #expect(documented == Set(StateFile.allCases.map(\.rawValue)), "docs/state.md and StateFile differ")
    }
}
