import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Installs killed with SIGKILL at 50 points spread over the whole run (verification, every
/// payload, checkpoints, read-back, the switch), each followed by a second run that must finish
/// with verified slots; the booted group is checked byte for byte after every kill.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct CrashTests {
    @Test func killedAtFiftyPointsThenResumed() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let images = try sandbox.makeUpdate(
                [("rootfs", 12 << 20), ("modem", 3 << 20), ("tee", 1 << 20)], output: "\(dir)/update.ferry", preset: 0,
                seed: 21,
                zeroChunks: ["rootfs": [1, 2, 5, 6, 7, 10], "modem": [2]])

            let table = try PartitionTable.read(sandbox.diskPath)
            func region(_ label: String, _ count: Int) throws -> [UInt8] {
                let partition = try table.partition(.partitionLabel(label), disk: sandbox.diskPath)
                return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(
                    at: 0, count: count)
            }
            func groupAHash() throws -> SHA256Digest {
                SHA256Hasher.hash(
                    try region("rootfs_a", 16 << 20) + region("modem_a", 8 << 20) + region("tee_a", 4 << 20))
            }
            let groupA = try groupAHash()
            // Checkpoints every 2 MiB, so that kills inside a slot resume mid-slot.
            let install = [
                TestEnvironment.ferryBinary, "install", "\(dir)/update.ferry", "--progress", "lines",
                "--checkpoint-mib", "2",
                "--config", sandbox.configurationPath,
            ]

            // How long one whole install takes here, to spread the kill points over it.
            let start = WallClock.monotonicSeconds()
            #expect(try Shell.run(install).status == 0)
            // The first run may be slower than the rest (cold caches, other tests running beside
            // it); a run that ends before its kill shortens the estimate, so the points stay spread.
            var duration = WallClock.monotonicSeconds() - start

            var killed = 0
            var resumedRuns = 0
            var attempts = 0
            var violations = 0
            let target = ReliabilityProfile.isLong ? 200 : 50
            // Until `target` runs were really cut (a run may finish just before its kill), at most three times as many tries.
            while killed < target && attempts < 3 * target {
                let point = attempts
                attempts += 1
                let delay = duration * 0.9 * (Double(point % target) + 0.5) / Double(target)
                let process = try SpawnedProcess(install)
                sleepSeconds(delay)
                if process.kill() == nil { killed += 1 } else { duration *= 0.85 }
                #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty, "loop device left after kill \(point)")
                // The booted group is never touched, whatever the moment.
                #expect(try groupAHash() == groupA, "group A changed at kill point \(point)")
                // Booting now would be safe: either B is bad, or B is complete and primary.
                let environment = try Shell.check([
                    TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
                ])
                if environment.contains("BOOT_ORDER=B A") && !environment.contains("BOOT_B_LEFT=0") {
                    for (name, bytes) in images {
                        #expect(try region("\(name)_b", bytes.count) == bytes, "kill \(point): \(name)_b")
                    }
                }
                // Run again: it finishes (resuming when a journal was left) and the slots verify.
                let again = try Shell.run(install)
                #expect(again.status == 0, "after kill \(point): \(again.output)")
                if again.output.contains("Resumed") { resumedRuns += 1 }
                for (name, bytes) in images {
                    #expect(try region("\(name)_b", bytes.count) == bytes, "after kill \(point): \(name)_b")
                }
                #expect(StateStore(directory: configuration.stateDirectory).installJournal() == nil)
                if try groupAHash() != groupA || again.status != 0 { violations += 1 }
            }
            try ReliabilityProfile.report(
                "process-kills: \(killed) installs killed with SIGKILL in \(attempts) runs, \(resumedRuns) resumed from a journal, \(violations) violations",
                [
                    "kind": .string("process-kills"), "killed": .number(Double(killed)),
                    "runs": .number(Double(attempts)),
                    "resumed": .number(Double(resumedRuns)), "violations": .number(Double(violations)),
                ])
            #expect(killed >= target, "only \(killed) runs were killed in \(attempts) tries")
            #expect(resumedRuns >= 5, "only \(resumedRuns) runs resumed from a journal")
        }
    }

    @Test func abortAndStaleJournals() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            let store = StateStore(directory: try sandbox.configuration().stateDirectory)
            // A stale journal (another bundle) and a torn one never block an install.
            try DurableFile.write(
                "{\"formatVersion\": 1, \"manifestSha256\": \"00\", \"target\": \"B\", \"bundle\": \"old.ferry\", \"chunksDone\": {\"rootfs_b\": 3}, \"completed\": [\"tee_b\"]}",
                to: store.journalPath)
            try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 1 << 20), ("tee", 1 << 20)], output: "\(dir)/update.ferry")
            let result = try Shell.run([TestEnvironment.ferryBinary, "install", "\(dir)/update.ferry"] + config)
            #expect(result.status == 0 && !result.output.contains("Resumed"), "\(result.output)")
            try DurableFile.write("{\"formatVersion\": 1, \"manifes", to: store.journalPath)
            #expect(
                try Shell.run([TestEnvironment.ferryBinary, "install", "\(dir)/update.ferry"] + config).status == 0)
            // --abort drops a journal.
            try DurableFile.write(
                "{\"formatVersion\": 1, \"manifestSha256\": \"ab\", \"target\": \"B\"}", to: store.journalPath)
            let abort = try Shell.run([TestEnvironment.ferryBinary, "install", "--abort"] + config)
            #expect(abort.status == 0 && abort.output.contains("Dropped"), "\(abort.output)")
            #expect(!TextFile.exists(store.journalPath))
            #expect(try Shell.run([TestEnvironment.ferryBinary, "install"] + config).status == 2)
        }
    }
}
