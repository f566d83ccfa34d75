import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Crash simulation (docs/reliability.md): an install is recorded under the block-device and
/// durable-file layers (`IOTrace`), then the states a power cut could leave are built and checked.
///
/// A state is cut after event k of the recording, for every k. What was synced before the cut is
/// on the medium; of what was not (writes after the last sync of their file, renames and removals
/// after the last sync of their folder), a seeded random choice survives: a write in full, torn
/// (a sector-aligned prefix) or not at all; a rename or removal or not. For each state: the booted
/// group is byte-identical; the boot environment reads (a valid copy) and selects a group whose
/// every slot verifies, and A stays bootable; every state file parses; and the install run again
/// on that state finishes with a target group that verifies and is primary.
///
/// Profile: `FERRY_RELIABILITY_PROFILE=long` for 5,000 states per bootloader (10,000 in all),
/// otherwise 1,000 (2,000 in all); `FERRY_RELIABILITY_SEED` (default 1) makes a run reproducible;
/// `FERRY_RELIABILITY_OUT` names a file that gets one JSON line per bootloader.
@Suite struct CrashSimulationTests {
    /// One recording at a time (the recorder is global); the replays run in parallel.
    static let recording = Mutex<Void>(())

    final class Recorder: IORecorder {
        let events = Mutex<[IOEvent]>([])
        func record(_ event: IOEvent) { events.withLock { $0.append(event) } }
    }

    static let files = ["rootfs_a.img", "rootfs_b.img", "modem_a.img", "modem_b.img", "env"]
    static let rootfsSize = 1 << 20
    static let modemSize = 256 << 10

    /// A device of plain image files (no loop devices): A holds factory images, B other bytes (rootfs) or none (modem).
    static func makeDevice(_ dir: String, bootloader: String, pki: TestPKI) throws {
        try DurableFile.createDirectory(dir)
        try makeFile("\(dir)/rootfs_a.img", bytes: seededBytes(count: rootfsSize, seed: 1))
        try makeFile("\(dir)/modem_a.img", bytes: seededBytes(count: modemSize, seed: 2))
        // B holds other bytes (an older release), so that zeroing its ranges shows in every state.
        try makeFile("\(dir)/rootfs_b.img", bytes: seededBytes(count: rootfsSize, seed: 3))
        try makeFile("\(dir)/modem_b.img", size: Int64(modemSize))
        let environment: String
        if bootloader == "grub" {
            try makeFile(
                "\(dir)/env",
                bytes: try GRUBEnvironment.encode(
                    ["ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"], name: "env"))
            environment = #""bootloader": { "type": "grub", "grubenv": "env" }"#
        } else {
            let format = UBootEnvironmentFormat(size: 0x2000, redundant: true)
            let variables = ["BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"]
            let copy1 = try UBootEnvironmentCodec.encode(
                variables, flags: 1, padByte: 0xff, format: format, name: "env")
            let copy2 = try UBootEnvironmentCodec.encode(
                variables, flags: 0, padByte: 0xff, format: format, name: "env")
            try makeFile("\(dir)/env", bytes: copy1 + copy2)
            environment =
                #""bootloader": { "type": "uboot", "environment": [{ "device": "env", "offset": 0, "size": 8192 }, { "device": "env", "offset": 8192, "size": 8192 }] }"#
        }
        try DurableFile.write(
            """
            { "compatible": "ferry-demo-x86_64", "sandbox": true, "stateDirectory": "state", \(environment),
              "keyring": "\(pki.keyring)",
              "slots": {
                "rootfs_a": { "class": "rootfs", "bootname": "A", "device": "rootfs_a.img" },
                "rootfs_b": { "class": "rootfs", "bootname": "B", "device": "rootfs_b.img" },
                "modem_a": { "class": "modem", "bootname": "A", "device": "modem_a.img" },
                "modem_b": { "class": "modem", "bootname": "B", "device": "modem_b.img" } } }
            """, to: "\(dir)/system.json")
        let store = StateStore(directory: "\(dir)/state")
        try store.setSandboxBootedGroup("A")
        for (slot, seed, size) in [("rootfs_a", UInt64(1), rootfsSize), ("modem_a", 2, modemSize)] {
            try store.setSlotRecord(
                InstalledSlotRecord(
                    sha256: SHA256Hasher.hash(seededBytes(count: size, seed: seed)).hex, size: Int64(size),
                    version: "1.0.0", source: "factory"),
                for: slot)
        }
    }

    static func install(_ dir: String, bundle: String) throws(FerryError) {
        let configuration = try SystemConfiguration.load("\(dir)/system.json")
        var installer = Installer(
            configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"), logger: quietLogger)
        installer.checkpointBytes = 192 << 10
        _ = try installer.install(
            from: try FileByteSource(path: bundle), bundleName: "update.ferry", allowDowngrade: false, force: false)
    }

    /// Copies the device's files (and its state directory) from `from` to `to`.
    static func copyDevice(from: String, to: String, extra: [String] = []) throws {
        try DurableFile.createDirectory("\(to)/state")
        // What an earlier state left in the state directory goes first.
        for name in FileSystem.entries("\(to)/state") where name != "lock" { unlink("\(to)/state/\(name)") }
        for name in files + extra + ["system.json"] {
            try makeFile("\(to)/\(name)", bytes: try readFile("\(from)/\(name)"))
        }
        for name in FileSystem.entries("\(from)/state") where !name.hasPrefix(".") && name != "lock" {
            try makeFile("\(to)/state/\(name)", bytes: try readFile("\(from)/state/\(name)"))
        }
    }

    /// What a cut leaves of a write that was not synced.
    enum Fate: Sendable, Equatable {
        case lost
        /// A sector-aligned prefix of this many bytes.
        case torn(Int)
        case whole
    }

    /// Builds the state a power cut after `cut` events leaves, in `dir` (a copy of the snapshot).
    /// - Parameter fates: the fate of some unsynced writes, by event index (the others are drawn).
    static func materialize(
        _ events: [IOEvent], cut: Int, device: String, into dir: String, random: inout SeededGenerator,
        fates: [Int: Fate] = [:]
    ) throws {
        func local(_ path: String) -> String {
            path.hasPrefix(device + "/") ? dir + path.dropFirst(device.count) : path
        }
        var lastSync: [String: Int] = [:]
        var lastDirectorySync: [String: Int] = [:]
        for (index, event) in events[..<cut].enumerated() {
            switch event {
            case .sync(let path): lastSync[path] = index
            case .directorySync(let path): lastDirectorySync[path] = index
            default: break
            }
        }
        for (index, event) in events[..<cut].enumerated() {
            switch event {
            case .write(let path, let offset, let bytes):
                var count = bytes.count
                if (lastSync[path] ?? -1) < index {
                    // Not synced: lost, torn or whole.
                    switch fates[index] {
                    case .lost?: continue
                    case .torn(let bytes)?: count = min(count, bytes / 512 * 512)
                    case .whole?: break
                    case nil:
                        switch random.below(3) {
                        case 0: continue
                        case 1: count = min(count, random.below(count / 512 + 1) * 512)
                        default: break
                        }
                    }
                }
                let file = try BlockDevice.openSharedForWriting(local(path))
                try file.write(count == bytes.count ? bytes : Array(bytes[..<count]), at: offset)
                try file.close()
            case .zero(let path, let offset, let count):
                if (lastSync[path] ?? -1) < index && random.below(2) == 0 { continue }
                let file = try BlockDevice.openSharedForWriting(local(path))
                try file.write([UInt8](repeating: 0, count: Int(count)), at: offset)
                try file.close()
            case .replace(let path, let bytes):
                // A rename is durable once its folder is synced. On FAT the renamed file must be
                // synced first: vfat writes the folder entry's new first cluster only with the
                // file's inode, but frees the replaced file's clusters at once, and a folder sync
                // makes the freed clusters durable without the entry (a file fsck truncates to
                // nothing). So a folder sync that comes before the file's own sync may leave the
                // file empty.
                let folder = Paths.directory(of: path)
                let firstSync = events[(index + 1)..<cut].first {
                    switch $0 {
                    case .sync(let synced): synced == path
                    case .directorySync(let synced): synced == folder
                    default: false
                    }
                }
                if case .directorySync? = firstSync, random.below(3) == 0 {
                    try makeFile(local(path), bytes: [])
                    continue
                }
                if (lastDirectorySync[folder] ?? -1) < index && random.below(2) == 0 { continue }
                try makeFile(local(path), bytes: bytes)
            case .remove(let path):
                if (lastDirectorySync[Paths.directory(of: path)] ?? -1) < index && random.below(2) == 0 { continue }
                _ = try? Shell.check(["rm", "-f", local(path)])
            case .sync, .directorySync:
                break
            }
        }
    }

    /// The invariants of one crash state; the problems found (empty: it held).
    /// - Parameters:
    ///   - booted: SHA-256 of each of group A's files before the install.
    ///   - images: SHA-256 of the bundle's image for each slot class (its B file has exactly that size).
    static func check(_ dir: String, booted: [String: SHA256Digest], bundle: String, images: [String: SHA256Digest])
        -> [String]
    {
        func hash(_ name: String) throws -> SHA256Digest { SHA256Hasher.hash(try readFile("\(dir)/\(name)")) }
        var problems: [String] = []
        do {
            for (name, digest) in booted where try hash(name) != digest {
                problems.append("booted slot \(name) changed")
            }
            let configuration = try SystemConfiguration.load("\(dir)/system.json")
            let control = try BootControl(
                configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"), logger: quietLogger)
            let primary = try control.chooser.primary()
            let states = try control.chooser.states()
            if states.first(where: { $0.bootname == "A" })?.bootable != true {
                problems.append("group A is no longer bootable")
            }
            if primary == "B" {
                for (slot, digest) in images where try hash("\(slot)_b.img") != digest {
                    problems.append("group B is primary but \(slot)_b does not hold the bundle's image")
                }
            } else if primary != "A" {
                problems.append("the environment selects \(primary ?? "no group")")
            }
            let store = StateStore(directory: "\(dir)/state")
            _ = try store.slotRecords()
            _ = try store.bootState()
            _ = try store.trustRecord()
            _ = try store.groupParts()
            if TextFile.exists("\(dir)/state/install.json") && store.installJournal() == nil {
                problems.append("install.json does not parse")
            }
        } catch {
            problems.append("checking the state: \(error)")
        }
        // The install again, from that state: it must finish with B verified and primary.
        do {
            try install(dir, bundle: bundle)
            for (slot, digest) in images where try hash("\(slot)_b.img") != digest {
                problems.append("after the second install \(slot)_b does not hold the bundle's image")
            }
            let configuration = try SystemConfiguration.load("\(dir)/system.json")
            let control = try BootControl(
                configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"), logger: quietLogger)
            if try control.chooser.primary() != "B" { problems.append("after the second install B is not primary") }
        } catch {
            problems.append("the second install failed: \(error)")
        }
        return problems
    }

    @Test(arguments: ["uboot", "grub"])
    func everyCrashStateOfAnInstallHoldsTheInvariants(bootloader: String) async throws {
        let environment = ProcessEnvironment.variables
        let target = Int(environment["FERRY_RELIABILITY_STATES"] ?? "") ?? (ReliabilityProfile.isLong ? 5_000 : 1_000)
        let seed = UInt64(environment["FERRY_RELIABILITY_SEED"] ?? "") ?? 1
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = "\(dir)/device"
            let snapshot = "\(dir)/snapshot"
            try Self.makeDevice(device, bootloader: bootloader, pki: pki)
            // The rootfs has zero chunks (64 KiB each), which the install zeroes first.
            var rootfs = seededBytes(count: Self.rootfsSize, seed: 11)
            for chunk in [1, 2, 5, 6, 7, 12] {
                rootfs.replaceSubrange((chunk << 16)..<((chunk + 1) << 16), with: repeatElement(0, count: 1 << 16))
            }
            let images = ["rootfs": rootfs, "modem": seededBytes(count: Self.modemSize, seed: 12)]
            for (slot, bytes) in images { try makeFile("\(dir)/\(slot).img", bytes: bytes) }
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!,
                images: ["rootfs", "modem"].map { BundleWriter.Image(slotClass: $0, path: "\(dir)/\($0).img") },
                signers: [BundleWriter.Signer(certificate: pki.certificate("signer1"), key: pki.key("signer1"))])
            options.chunkSize = 64 << 10
            options.preset = 0
            let bundle = "\(dir)/update.ferry"
            try BundleWriter.create(options, output: bundle, logger: quietLogger)
            try Self.copyDevice(from: device, to: snapshot)

            // The recording.
            let recorder = Recorder()
            try Self.recording.withLock { _ in
                IOTrace.recorder = recorder
                defer { IOTrace.recorder = nil }
                try Self.install(device, bundle: bundle)
            }
            let events = recorder.events.withLock { $0 }.filter {
                // Only the device's own files: not the bundle or the PKI.
                switch $0 {
                case .write(let path, _, _), .zero(let path, _, _), .sync(let path), .replace(let path, _),
                    .remove(let path), .directorySync(let path):
                    return path.hasPrefix(device)
                }
            }
            #expect(events.count > 20, "too few events recorded: \(events.count)")

            // The replay.
            let perCut = (target + events.count) / (events.count + 1)
            var random = SeededGenerator(seed: seed &* 0x1000 &+ (bootloader == "grub" ? 7 : 3))
            var states = 0
            var violations: [String] = []
            // On tmpfs where there is one: each state's second install syncs often, and nothing
            // here needs the syncs to reach a disk.
            let scratch =
                (TextFile.isDirectory("/dev/shm") ? "/dev/shm" : dir)
                + "/ferry-test-crash-state-\(getpid())-\(bootloader)"
            defer { _ = try? Shell.check(["rm", "-rf", scratch]) }
            let booted = try Dictionary(
                uniqueKeysWithValues: ["rootfs_a.img", "modem_a.img"].map {
                    ($0, SHA256Hasher.hash(try readFile("\(snapshot)/\($0)")))
                })
            let imageDigests = images.mapValues { SHA256Hasher.hash($0) }
            for cut in 0...events.count {
                for _ in 0..<perCut {
                    try Self.copyDevice(from: snapshot, to: scratch)
                    try Self.materialize(events, cut: cut, device: device, into: scratch, random: &random)
                    let problems = Self.check(scratch, booted: booted, bundle: bundle, images: imageDigests)
                    states += 1
                    if !problems.isEmpty {
                        violations.append(
                            "cut after event \(cut) (state \(states)): \(problems.joined(separator: "; "))")
                    }
                }
            }
            let summary =
                "crash-simulation \(bootloader): \(events.count) events, \(states) states (\(perCut) per cut), \(violations.count) violations, seed \(seed)"
            try ReliabilityProfile.report(
                summary,
                [
                    "kind": .string("crash-simulation"), "bootloader": .string(bootloader),
                    "events": .number(Double(events.count)),
                    "states": .number(Double(states)), "violations": .number(Double(violations.count)),
                    "seed": .number(Double(seed)),
                ])
            #expect(states >= target)
            #expect(violations.isEmpty, "\(violations.prefix(5).joined(separator: "\n"))")
        }
    }
}
