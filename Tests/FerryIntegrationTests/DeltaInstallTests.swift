import FerryBundle
import FerryCore
import FerryCrypto
import FerryDelta
import FerrySystem
import FerryTestSupport
import Logging
import Testing

/// Delta payloads through `ferry install` on sandbox devices: applied from the booted slot,
/// every source range checked before anything is written, resumed from a checkpoint, and every
/// bad delta refused with the booted group, the boot environment and the target untouched.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct DeltaInstallTests {
    static let block = 4096

    func ferry(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([TestEnvironment.ferryBinary] + arguments)
    }

    /// The factory rootfs with a region moved, blocks patched, new data and zeros: what a new
    /// release of it looks like to a block delta.
    static func newRootfs(from factory: [UInt8]) -> [UInt8] {
        var image = factory
        let block = Self.block
        // Move 1 MiB from the front half to the back half, patch 200 blocks, add 2 MiB of new data.
        let moved = Array(factory[(1 << 20)..<(2 << 20)])
        image.replaceSubrange((10 << 20)..<(11 << 20), with: moved)
        for index in stride(from: 3 << 20, to: 3 << 20 + 200 * block, by: block) { image[index + 17] ^= 0x5A }
        image.replaceSubrange((12 << 20)..<(14 << 20), with: seededBytes(count: 2 << 20, seed: 77))
        image.replaceSubrange((14 << 20)..<(15 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
        return image
    }

    /// A bundle carrying a rootfs delta from the sandbox's factory image, and full modem and tee images.
    @discardableResult
    func makeDeltaBundle(
        _ sandbox: Sandbox, output: String, version: String = "1.1.0", rootfs: [UInt8]? = nil, extra: [String] = []
    ) throws
        -> [String: [UInt8]]
    {
        let factory = "\(sandbox.directory)/images/factory-rootfs.img"
        let newRootfs = try rootfs ?? Self.newRootfs(from: readFile(factory))
        let images: [String: [UInt8]] = [
            "rootfs": newRootfs,
            "modem": seededBytes(count: 2 << 20, seed: 2), "tee": seededBytes(count: 1 << 20, seed: 3),
        ]
        for (name, bytes) in images { try makeFile("\(sandbox.directory)/new-\(name).img", bytes: bytes) }
        let result = try ferry(
            [
                "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version", version,
                "--cert", "\(sandbox.directory)/pki/signer1.pem", "--key", "\(sandbox.directory)/pki/signer1.key",
                "--image", "rootfs=\(sandbox.directory)/new-rootfs.img", "--delta-from", "rootfs=\(factory)",
                "--image", "modem=\(sandbox.directory)/new-modem.img", "--image",
                "tee=\(sandbox.directory)/new-tee.img",
                "--chunk-size", "1M",
            ] + TestEnvironment.codecArguments + extra + [
                "-o", output,
            ])
        #expect(result.status == 0, "\(result.output)")
        return images
    }

    /// Installs `dir`/delta.ferry under the state's write lock, as `ferry install` does.
    @discardableResult
    func installDelta(_ installer: Installer, _ store: StateStore, _ dir: String) throws -> Installer.Result {
        let lock = try store.acquireWriteLock(command: "test")
        defer { lock.release() }
        return try installer.install(
            from: FileByteSource(path: "\(dir)/delta.ferry"), bundleName: "delta.ferry", allowDowngrade: false,
            force: false)
    }

    func manifest(of bundle: String) throws -> Manifest {
        let reader = BundleReader(source: try FileByteSource(path: bundle))
        try reader.readSignedManifest()
        return try Manifest.parse(reader.manifestBytes)
    }

    func partition(_ sandbox: Sandbox, _ label: String) throws -> Partition {
        try PartitionTable.read(sandbox.diskPath).partition(.partitionLabel(label), disk: sandbox.diskPath)
    }

    func slotBytes(_ sandbox: Sandbox, _ label: String, count: Int? = nil) throws -> [UInt8] {
        let partition = try partition(sandbox, label)
        return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(
            at: 0, count: count ?? Int(partition.byteCount))
    }

    /// Group A and group B, whole, and the boot environment.
    func snapshot(_ sandbox: Sandbox) throws -> (a: SHA256Digest, b: SHA256Digest, environment: String) {
        let a = ["rootfs_a", "modem_a", "tee_a"].map { try? slotBytes(sandbox, $0) }
        let b = ["rootfs_b", "modem_b", "tee_b"].map { try? slotBytes(sandbox, $0) }
        let environment = try Shell.check([
            TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
        ])
        return (SHA256Hasher.hash(a.flatMap { $0 ?? [] }), SHA256Hasher.hash(b.flatMap { $0 ?? [] }), environment)
    }

    @Test func aDeltaBundleInstallsBootsAndConfirms() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let before = try snapshot(sandbox)
            let images = try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            // The delta is a small fraction of the image; the manifest says what it goes from and to.
            let info = try ferry(["bundle", "info", "\(dir)/delta.ferry"])
            #expect(info.output.contains("Payload:          delta for rootfs: rootfs.delta"), "\(info.output)")
            let factory = try readFile("\(sandbox.directory)/images/factory-rootfs.img")
            #expect(info.output.contains("from \(factory.count) bytes sha256 \(SHA256Hasher.hash(factory).hex)"))
            let bundleSize = try BlockDevice.openForReading("\(dir)/delta.ferry").byteCount
            #expect(bundleSize < 7 << 20, "bundle of \(bundleSize) bytes")  // 2 MiB new rootfs data + 3 MiB of random modem/tee

            let result = try ferry([
                "install", "\(dir)/delta.ferry", "--progress", "lines", "--config", sandbox.configurationPath,
            ])
            #expect(result.status == 0, "\(result.output)")
            for (name, bytes) in images {
                #expect(try slotBytes(sandbox, "\(name)_b", count: bytes.count) == bytes, "\(name)_b")
            }
            #expect(try snapshot(sandbox).a == before.a)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
            let records = try StateStore(directory: try sandbox.configuration().stateDirectory).slotRecords()
            #expect(records["rootfs_b"]?.sha256 == SHA256Hasher.hash(images["rootfs"]!).hex)
            #expect(records["rootfs_b"]?.size == Int64(images["rootfs"]!.count))
            let boot = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(boot.output.contains("booted group B"), "\(boot.output)")
            #expect(
                try ferry(["status", "--config", sandbox.configurationPath]).output.contains(
                    "Group B (booted, primary, good"))
        }
    }

    /// The issue's case: a booted slot that is not the delta's source. Nothing is written: not
    /// the target, not even the boot environment.
    @Test func aBootedSlotThatIsNotTheSourceWritesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            // One byte differs in rootfs_a, in the last source range the delta reads.
            let check = try #require(try manifest(of: "\(dir)/delta.ferry").payloads.first?.delta?.sourceChecks.last)
            let offset = check.range.upperBound - 10
            let rootfsA = try partition(sandbox, "rootfs_a")
            let disk = try BlockDevice.openExclusive(sandbox.diskPath)
            var byte = try disk.read(at: rootfsA.range.lowerBound + offset, count: 1)
            byte[0] ^= 0xFF
            try disk.write(byte, at: rootfsA.range.lowerBound + offset)
            try disk.close()
            let before = try snapshot(sandbox)

            let result = try ferry(["install", "\(dir)/delta.ferry", "--config", sandbox.configurationPath])
            #expect(result.status == FerryError.Code.sourceMismatch.exitStatus, "\(result.output)")
            #expect(result.output.contains("ferry: error: delta needs source sha256 "), "\(result.output)")
            #expect(
                result.output.contains(
                    "but booted slot 'rootfs_a' differs at blocks \(check.range.lowerBound / 4096)-\((check.range.upperBound - 1) / 4096)\n"
                ),
                "\(result.output)")
            let after = try snapshot(sandbox)
            #expect(after.a == before.a && after.b == before.b)
            #expect(after.environment == before.environment)
            #expect(StateStore(directory: try sandbox.configuration().stateDirectory).installJournal() == nil)
        }
    }

    /// A delta reads the booted slot, which must not change meanwhile: mounted read-only is fine,
    /// mounted read-write is refused before anything is written.
    @Test func theSourceMayBeMountedReadOnlyButNotReadWrite() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            let rootfsA = try partition(sandbox, "rootfs_a")
            let mountPoint = "\(dir)/mnt"
            try DurableFile.createDirectory(mountPoint)
            let window = "offset=\(rootfsA.startOffset),sizelimit=\(rootfsA.byteCount)"
            func waitForLoopDetach() {
                for _ in 0..<200 where !LoopDevice.devices(backing: sandbox.diskPath).isEmpty { usleepMilliseconds(10) }
            }

            try Shell.check(["mount", "-o", "loop,ro,noload,\(window)", sandbox.diskPath, mountPoint])
            let readOnly: Shell.Result
            do {
                defer { _ = try? Shell.run(["umount", mountPoint]) }
                readOnly = try ferry(["install", "\(dir)/delta.ferry", "--config", sandbox.configurationPath])
            }
            #expect(readOnly.status == 0, "\(readOnly.output)")
            waitForLoopDetach()

            // Mounting read-write changes the file system (so the source would no longer match):
            // restore group A afterwards by comparing only the refusal.
            let before = try snapshot(sandbox)
            try Shell.check(["mount", "-o", "loop,\(window)", sandbox.diskPath, mountPoint])
            let readWrite: Shell.Result
            do {
                defer { _ = try? Shell.run(["umount", mountPoint]) }
                readWrite = try ferry(["install", "\(dir)/delta.ferry", "--config", sandbox.configurationPath])
            }
            waitForLoopDetach()
            #expect(readWrite.status == FerryError.Code.deviceInUse.exitStatus, "\(readWrite.output)")
            #expect(
                readWrite.output.contains("slot 'rootfs_a'")
                    && readWrite.output.contains("is mounted read-write at \(mountPoint)"))
            let after = try snapshot(sandbox)
            #expect(after.b == before.b && after.environment == before.environment)
        }
    }

    /// A corrupt delta chunk, a tampered delta whose manifest entry no longer matches, and a
    /// truncated bundle: refused; group A and the boot order untouched; B never primary.
    @Test func badDeltaPayloadsAreRefused() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            let bytes = try readFile("\(dir)/delta.ferry")
            let delta = try #require(try manifest(of: "\(dir)/delta.ferry").payloads.first { $0.type == "delta" })
            // Where the delta member's content starts: find its header magic in the archive.
            let magic = Array("FERRYDLT".utf8)
            let start = try #require((0..<(bytes.count - 8)).first { bytes[$0..<($0 + 8)].elementsEqual(magic) })
            let before = try snapshot(sandbox)
            var cases: [(String, [UInt8], FerryError.Code)] = []
            var flipped = bytes
            flipped[start + Int(delta.size) - 100] ^= 0x01  // inside the last delta chunk
            cases.append(("a byte of the delta flipped", flipped, .bundleInvalid))
            cases.append(("cut inside the delta", Array(bytes[..<(start + Int(delta.size) / 2)]), .truncated))
            for (name, data, code) in cases {
                try makeFile("\(dir)/bad.ferry", bytes: data)
                let result = try ferry(["install", "\(dir)/bad.ferry", "--config", sandbox.configurationPath])
                #expect(result.status == code.exitStatus, "\(name): \(result.output)")
                #expect(
                    result.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error: ") }.count == 1, "\(name)"
                )
                let after = try snapshot(sandbox)
                #expect(after.a == before.a, "\(name)")
                #expect(
                    after.environment.contains("BOOT_ORDER=A B") && after.environment.contains("BOOT_B_LEFT=0"),
                    "\(name)")
                #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
                _ = try ferry(["install", "--abort", "--config", sandbox.configurationPath])
            }
            // And the good bundle still installs.
            #expect(try ferry(["install", "\(dir)/delta.ferry", "--config", sandbox.configurationPath]).status == 0)
        }
    }

    /// An install cut in the middle of the delta (an I/O error after 6 MiB, checkpoints every
    /// 2 MiB) resumes from its last checkpoint with the same bundle and ends with a verified slot.
    /// A fleet whose Ferry predates formatVersion 3 gets version-2 deltas on request; the manifest
    /// names version 3 (an older Ferry refuses the manifest for its unknown key before writing) and
    /// leaves version 2 unnamed; an unknown version is refused when the manifest is read.
    @Test func deltaFormatVersionsInTheManifest() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try makeDeltaBundle(sandbox, output: "\(dir)/v3.ferry")
            let v3 = try manifest(of: "\(dir)/v3.ferry")
            #expect(v3.payloads.compactMap(\.delta).map(\.formatVersion) == [3])
            let images = try makeDeltaBundle(
                sandbox, output: "\(dir)/v2.ferry", extra: ["--delta-format-version", "2"])
            let reader = BundleReader(source: try FileByteSource(path: "\(dir)/v2.ferry"))
            try reader.readSignedManifest()
            #expect(try Manifest.parse(reader.manifestBytes).payloads.compactMap(\.delta).map(\.formatVersion) == [2])
            let v2Text = String(decoding: reader.manifestBytes, as: UTF8.self)
            #expect(!v2Text.contains("\"formatVersion\": 2") && !v2Text.contains("\"formatVersion\":2"))
            let result = try ferry(["install", "\(dir)/v2.ferry", "--config", sandbox.configurationPath])
            #expect(result.status == 0, "\(result.output)")
            #expect(try slotBytes(sandbox, "rootfs_b", count: images["rootfs"]!.count) == images["rootfs"]!)
            // Version 4 is not read: refused with the manifest, before anything is planned.
            let v3Reader = BundleReader(source: try FileByteSource(path: "\(dir)/v3.ferry"))
            try v3Reader.readSignedManifest()
            var text = String(decoding: v3Reader.manifestBytes, as: UTF8.self)
            #expect(text.contains("\"formatVersion\": 3"))
            text = text.replacing("\"formatVersion\": 3", with: "\"formatVersion\": 4")
            expectFerryError(.bundleInvalid) { try Manifest.parse(Array(text.utf8)) }
            let refused = try ferry([
                "bundle", "create", "--compatible", "x", "--version", "1.0.0", "--cert", "c",
                "--key", "k", "--image", "rootfs=r", "--delta-format-version", "4", "-o", "\(dir)/x.ferry",
            ])
            #expect(refused.status != 0 && refused.output.contains("--delta-format-version must be 2 or 3"))
        }
    }

    @Test func anInterruptedDeltaInstallResumes() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let images = try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            let booted = BootedGroup(bootname: "A", source: "test")
            let store = StateStore(directory: configuration.stateDirectory)
            var installer = Installer(configuration: configuration, booted: booted, logger: quietLogger)
            installer.checkpointBytes = 2 << 20
            installer.wrapDevice = { FaultyBlockTarget($0, failAfterBytes: 6 << 20) }
            let error = #expect(throws: FerryError.self) { try installDelta(installer, store, dir) }
            #expect(error?.code == .io)
            let journal = try #require(store.installJournal())
            let position = try #require(journal.deltaPositions["rootfs_b"])
            #expect(position.targetOffset >= 2 << 20 && position.targetOffset <= 6 << 20, "\(position)")

            var written: Int64 = 0
            installer.wrapDevice = { device in CountingTarget(device) { written += $0 } }
            let result = try installDelta(installer, store, dir)
            #expect(result.resumed)
            // Only what follows the checkpoint was written again (plus the modem and tee slots).
            #expect(
                written <= (16 << 20) - position.targetOffset + (3 << 20), "\(written) bytes written after resuming")
            for (name, bytes) in images {
                #expect(try slotBytes(sandbox, "\(name)_b", count: bytes.count) == bytes, "\(name)_b")
            }
            #expect(store.installJournal() == nil)
        }
    }

    /// The slot is read back while later operations are written: a device that loses a byte, or
    /// fails a read, is one clean error with the booted group untouched, and the next install on
    /// a healthy device finishes.
    @Test(arguments: [
        ("a byte silently corrupted near the start", FerryError.Code.readBackMismatch),
        ("a byte silently corrupted in the new data near the end", .readBackMismatch),
        ("EIO on read during the read-back", .io),
    ])
    func aFaultyReadBackIsOneCleanError(_ fault: String, _ code: FerryError.Code) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let images = try makeDeltaBundle(sandbox, output: "\(dir)/delta.ferry")
            let before = try snapshot(sandbox)
            let store = StateStore(directory: configuration.stateDirectory)
            var installer = Installer(
                configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"), logger: quietLogger)
            installer.checkpointBytes = 2 << 20
            installer.wrapDevice = { device in
                switch fault {
                case "EIO on read during the read-back": FaultyBlockTarget(device, failReadAfterBytes: 3 << 20)
                case "a byte silently corrupted near the start": FaultyBlockTarget(device, corruptByteAt: 4097)
                // (In the 2 MiB of new data at 12-14 MiB: the image's last MiB is zeros, which the
                // device zeroes instead of writing.)
                default: FaultyBlockTarget(device, corruptByteAt: (14 << 20) - 3)
                }
            }
            let error = #expect(throws: FerryError.self) { try installDelta(installer, store, dir) }
            #expect(error?.code == code, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            if code == .readBackMismatch {
                #expect(error?.message.contains("reads back differently from the delta's target image") == true)
            }
            #expect(try snapshot(sandbox).a == before.a, "the booted group changed")

            installer.wrapDevice = { $0 }
            _ = try installDelta(installer, store, dir)
            for (name, bytes) in images {
                #expect(try slotBytes(sandbox, "\(name)_b", count: bytes.count) == bytes, "\(name)_b")
            }
        }
    }
}

/// Passes everything through and reports the bytes written (writes and zeroed ranges).
final class CountingTarget: BlockTarget {
    let inner: any BlockTarget
    let report: (Int64) -> Void

    init(_ inner: any BlockTarget, report: @escaping (Int64) -> Void) {
        self.inner = inner
        self.report = report
    }

    var byteCount: Int64 { inner.byteCount }
    var logicalSectorSize: Int { inner.logicalSectorSize }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        try inner.read(into: buffer, at: offset)
    }
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        try inner.write(bytes, at: offset)
        report(Int64(bytes.count))
    }
    func synchronize() throws(FerryError) { try inner.synchronize() }
    func zeroOut(_ range: Range<Int64>) throws(FerryError) {
        try inner.zeroOut(range)
        report(Int64(range.count))
    }
}
