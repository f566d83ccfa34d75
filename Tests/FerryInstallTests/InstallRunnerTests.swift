import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerrySystem
import FerryTestSupport
import SystemPackage
import Testing

/// The install runner on a device of plain image files (no root, no loop devices): it runs under
/// `tools/test --quick`. An install switches and records; each device fault injected under the
/// slot-write session (EIO, ENOSPC, a failed sync, a short write, a device that silently corrupts
/// or does not zero) is one clean error with its code, switches nothing, leaves the booted group
/// and the boot environment's choice alone, and the next install on a healthy device finishes;
/// a refusal that can be known before writing changes no byte of the device at all.
/// (The same faults on loop devices, through the binary: FerryIntegrationTests/FaultTests.)
@Suite struct InstallRunnerTests {
    typealias Device = CrashSimulationTests

    struct Fixture {
        let dir: String
        let device: String
        let bundle: String
        let images: [String: SHA256Digest]
        let booted: [String: [UInt8]]
        let pki: TestPKI

        var configuration: SystemConfiguration { get throws { try SystemConfiguration.load("\(device)/system.json") } }

        /// The primary group and whether each group is bootable, as the bootloader would see them.
        func choice() throws -> (primary: String?, bootable: [String: Bool]) {
            let control = try BootControl(
                configuration: try configuration, booted: BootedGroup(bootname: "A", source: "test"),
                logger: quietLogger)
            let states = try control.chooser.states()
            return (
                try control.chooser.primary(),
                Dictionary(uniqueKeysWithValues: states.map { ($0.bootname, $0.bootable) })
            )
        }

        func hash(_ name: String) throws -> SHA256Digest { SHA256Hasher.hash(try readFile("\(device)/\(name)")) }

        /// Every file of the device and its state directory, by name (the lock excepted).
        func snapshot() throws -> [String: [UInt8]] {
            var files: [String: [UInt8]] = [:]
            for name in Device.files + ["system.json"] { files[name] = try readFile("\(device)/\(name)") }
            for name in FileSystem.entries("\(device)/state") where name != "lock" {
                files["state/\(name)"] = try readFile("\(device)/state/\(name)")
            }
            return files
        }

        func installer(wrap: ((BlockDevice) -> any BlockTarget)? = nil) throws -> Installer {
            var installer = Installer(
                configuration: try configuration, booted: BootedGroup(bootname: "A", source: "test"),
                logger: quietLogger)
            installer.checkpointBytes = 192 << 10
            if let wrap { installer.wrapDevice = wrap }
            return installer
        }

        @discardableResult
        func install(_ bundle: String? = nil, wrap: ((BlockDevice) -> any BlockTarget)? = nil) throws(FerryError)
            -> Installer.Result
        {
            let installer: Installer
            do { installer = try self.installer(wrap: wrap) } catch { throw error as! FerryError }
            let store = StateStore(directory: "\(device)/state")
            let lock = try store.acquireWriteLock(command: "test")
            defer { lock.release() }
            return try installer.install(
                from: try FileByteSource(path: bundle ?? self.bundle), bundleName: "update.ferry",
                allowDowngrade: false, force: false)
        }

        /// Checks the device after a completed install: B holds the bundle's images, is primary, and recorded.
        func expectInstalled(sourceLocation: SourceLocation = #_sourceLocation) throws {
            for (slot, digest) in images {
                #expect(try hash("\(slot)_b.img") == digest, "\(slot)_b", sourceLocation: sourceLocation)
            }
            #expect(try choice().primary == "B", sourceLocation: sourceLocation)
            let store = StateStore(directory: "\(device)/state")
            #expect(store.installJournal() == nil, "the journal is removed", sourceLocation: sourceLocation)
            let records = try store.slotRecords()
            for (slot, digest) in images {
                #expect(
                    records["\(slot)_b"]?.sha256 == digest.hex, "slots.json records \(slot)_b",
                    sourceLocation: sourceLocation)
            }
            for (name, bytes) in booted {
                #expect(try readFile("\(device)/\(name)") == bytes, "booted \(name)", sourceLocation: sourceLocation)
            }
        }
    }

    /// A device (`bootloader` environment) and a bundle for it: a 1 MiB rootfs with zero chunks and a modem.
    static func fixture(_ dir: String, bootloader: String = "uboot", compatible: String = "ferry-demo-x86_64") throws
        -> Fixture
    {
        let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
        let device = "\(dir)/device"
        try Device.makeDevice(device, bootloader: bootloader, pki: pki)
        var rootfs = seededBytes(count: Device.rootfsSize, seed: 21)
        for chunk in [2, 3, 9] {
            rootfs.replaceSubrange((chunk << 16)..<((chunk + 1) << 16), with: repeatElement(0, count: 1 << 16))
        }
        let images = ["rootfs": rootfs, "modem": seededBytes(count: Device.modemSize, seed: 22)]
        for (slot, bytes) in images { try makeFile("\(dir)/\(slot).img", bytes: bytes) }
        let bundle = "\(dir)/update.ferry"
        try makeBundle(dir, pki: pki, compatible: compatible, output: bundle)
        let booted = try Dictionary(
            uniqueKeysWithValues: ["rootfs_a.img", "modem_a.img"].map { ($0, try readFile("\(device)/\($0)")) })
        return Fixture(
            dir: dir, device: device, bundle: bundle, images: images.mapValues { SHA256Hasher.hash($0) },
            booted: booted, pki: pki)
    }

    static func makeBundle(_ dir: String, pki: TestPKI, signer: String = "signer1", compatible: String, output: String)
        throws
    {
        var options = BundleWriter.Options(
            compatible: compatible, version: SemanticVersion("1.1.0")!,
            images: ["rootfs", "modem"].map { BundleWriter.Image(slotClass: $0, path: "\(dir)/\($0).img") },
            signers: [BundleWriter.Signer(certificate: pki.certificate(signer), key: pki.key(signer))])
        options.chunkSize = 64 << 10
        options.preset = 0
        try BundleWriter.create(options, output: output, logger: quietLogger)
    }

    @Test(arguments: ["uboot", "grub"])
    func anInstallOnImageFileSlotsSwitchesAndRecords(bootloader: String) async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Self.fixture(dir, bootloader: bootloader)
            let result = try fixture.install()
            #expect(result.target == "B")
            try fixture.expectInstalled()
            #expect(try fixture.choice().bootable["A"] == true, "A stays bootable (the fallback)")
        }
    }

    struct Fault: Sendable, CustomStringConvertible {
        var name: String
        var code: FerryError.Code
        var make: @Sendable (any BlockTarget) -> FaultyBlockTarget
        var description: String { name }
    }

    static let faults: [Fault] = [
        Fault(name: "EIO on the first write", code: .io) { FaultyBlockTarget($0, failAfterBytes: 0) },
        Fault(name: "EIO after a checkpoint", code: .io) { FaultyBlockTarget($0, failAfterBytes: 512 << 10) },
        Fault(name: "ENOSPC in the middle", code: .noSpace) {
            FaultyBlockTarget($0, failAfterBytes: 300 << 10, writeError: .noSpace)
        },
        Fault(name: "EIO on every sync", code: .io) { FaultyBlockTarget($0, failSynchronize: true) },
        Fault(name: "EIO on the second sync", code: .io) { FaultyBlockTarget($0, failSynchronizeAt: 2) },
        Fault(name: "a short write, then EIO", code: .io) {
            FaultyBlockTarget($0, failAfterBytes: (256 << 10) + 1536, tearFailingWrite: true)
        },
        Fault(name: "EIO on read during the read-back", code: .io) {
            FaultyBlockTarget($0, failReadAfterBytes: 64 << 10)
        },
        Fault(name: "a byte silently corrupted", code: .readBackMismatch) {
            FaultyBlockTarget($0, corruptByteAt: 700 << 10)
        },
        Fault(name: "zeroing silently does nothing", code: .readBackMismatch) {
            FaultyBlockTarget($0, ignoreZeroOut: true)
        },
    ]

    @Test(arguments: faults)
    func aDeviceFaultIsOneCleanErrorAndTheNextInstallFinishes(_ fault: Fault) async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Self.fixture(dir)
            let environmentBefore = try readFile("\(fixture.device)/env")
            let error = #expect(throws: FerryError.self) { try fixture.install(wrap: { fault.make($0) }) }
            #expect(error?.code == fault.code, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            // Nothing switched: A is primary and bootable, B is marked bad, the booted group is intact.
            let choice = try fixture.choice()
            #expect(choice.primary == "A")
            #expect(choice.bootable["A"] == true && choice.bootable["B"] == false)
            #expect(
                try readFile("\(fixture.device)/env") != environmentBefore,
                "B was marked bad before anything was written")
            for (name, bytes) in fixture.booted {
                #expect(try readFile("\(fixture.device)/\(name)") == bytes, "booted \(name)")
            }
            // The next install, on a healthy device, finishes.
            try fixture.install()
            try fixture.expectInstalled()
        }
    }

    /// A cut after a checkpoint is resumed: the journal names the chunks written and synced, and
    /// the next install continues from there instead of from the beginning.
    @Test func anInstallStoppedAfterACheckpointResumesFromIt() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Self.fixture(dir)
            #expect(throws: FerryError.self) {
                try fixture.install(wrap: { FaultyBlockTarget($0, failAfterBytes: 700 << 10) })
            }
            let journal = try #require(StateStore(directory: "\(fixture.device)/state").installJournal())
            #expect(journal.target == "B")
            let done = journal.chunksDone["rootfs_b"] ?? 0
            #expect(done >= 3, "chunks synced before the fault are in the journal: \(journal.chunksDone)")
            // The resumed install writes only what the journal does not cover.
            let written = Counter()
            try fixture.install(wrap: { inner in
                let target = FaultyBlockTarget(inner)
                written.add(target)
                return target
            })
            try fixture.expectInstalled()
            #expect(
                written.bytesWritten < Int64(Device.rootfsSize + Device.modemSize),
                "\(written.bytesWritten) bytes written on resume")
        }
    }

    /// Refusals known before writing change no byte: another compatible, an unknown signer, a
    /// bundle cut before its manifest and signatures are complete.
    @Test(arguments: ["another compatible", "an unknown signer", "a bundle cut inside its manifest"])
    func aRefusalKnownBeforeWritingChangesNothing(_ what: String) async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Self.fixture(dir)
            let bad = "\(dir)/bad.ferry"
            let expected: FerryError.Code
            switch what {
            case "another compatible":
                try Self.makeBundle(dir, pki: fixture.pki, compatible: "another-board", output: bad)
                expected = .notCompatible
            case "an unknown signer":
                let stranger = try TestPKI.make(in: "\(dir)/stranger", signers: ["signer1"])
                try Self.makeBundle(dir, pki: stranger, compatible: "ferry-demo-x86_64", output: bad)
                expected = .untrusted
            default:
                let bytes = try readFile(fixture.bundle)
                try makeFile(bad, bytes: Array(bytes[..<1500]))
                expected = .truncated
            }
            let before = try fixture.snapshot()
            let error = #expect(throws: FerryError.self) { try fixture.install(bad) }
            #expect(error?.code == expected, "\(error?.message ?? "")")
            let after = try fixture.snapshot()
            #expect(after.keys.sorted() == before.keys.sorted())
            for (name, bytes) in before where after[name] != bytes { Issue.record("\(name) changed") }
        }
    }
}

/// Sums what the wrapped targets of one install wrote.
final class Counter: @unchecked Sendable {
    private var targets: [FaultyBlockTarget] = []
    func add(_ target: FaultyBlockTarget) { targets.append(target) }
    var bytesWritten: Int64 { targets.reduce(0) { $0 + $1.bytesWritten } }
}
