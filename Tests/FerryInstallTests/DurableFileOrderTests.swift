import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

/// The order of the durable-storage operations of one file replacement (ARCHITECTURE.md
/// invariant 4), as the crash simulation sees them.
///
/// Regression test of the first defect a real power cut found (docs/reliability.md, "Power cuts
/// on a real machine"): the file environment on the FAT boot partition was renamed and only its
/// folder synced; vfat writes the folder entry's new first cluster with the renamed file's inode
/// but frees the replaced file's clusters at once, so the cut left `grubenv` pointing at free
/// clusters and the next write set the file system read-only. The renamed file must be synced
/// after the rename and before its folder.
@Suite struct DurableFileOrderTests {
    @Test func aReplacementSyncsTheRenamedFileThenItsFolder() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/grubenv"
            try DurableFile.write(Array("old\n".utf8), to: path)
            let recorder = CrashSimulationTests.Recorder()
            CrashSimulationTests.recording.withLock { _ in
                IOTrace.recorder = recorder
                defer { IOTrace.recorder = nil }
                #expect(throws: Never.self) { try DurableFile.write(Array("new\n".utf8), to: path) }
            }
            let steps = recorder.events.withLock { $0 }.compactMap { event -> String? in
                switch event {
                case .replace(let p, _) where p == path: "replace"
                case .sync(let p) where p == path: "sync file"
                case .directorySync(let p) where p == dir: "sync folder"
                default: nil
                }
            }
            #expect(steps == ["replace", "sync file", "sync folder"])
            #expect(try readFile(path) == Array("new\n".utf8))
        }
    }
}
