import FerryBundle
import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Logging
import SystemPackage
import Testing

/// EIO and ENOSPC from the device, injected through the block-device interface: a clean error
/// with the right code, nothing switched, the booted group untouched, and the next install succeeds.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct FaultTests {
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var failAfterBytes: Int64?
        var errno: Errno
        var failSync: Bool
        var code: FerryError.Code
        var failSyncAt: Int? = nil
        var failReadAfterBytes: Int64? = nil
        var tear = false
        var corruptAt: Int64? = nil
        /// The device claims to zero but keeps the old bytes; rootfs_b holds other bytes before,
        /// and the update has zero chunks.
        var ignoreZeroOut = false
        /// The update has zero chunks, which the install zeroes before it writes anything else.
        var zeroChunks = false
        var description: String { name }
    }

    static let cases = [
        Case(name: "EIO on the first write", failAfterBytes: 0, errno: .ioError, failSync: false, code: .io),
        Case(name: "EIO in the middle", failAfterBytes: 5 << 20, errno: .ioError, failSync: false, code: .io),
        Case(name: "ENOSPC in the middle", failAfterBytes: 3 << 20, errno: .noSpace, failSync: false, code: .noSpace),
        Case(name: "EIO on sync", failAfterBytes: nil, errno: .ioError, failSync: true, code: .io),
        Case(
            name: "EIO on the third sync", failAfterBytes: nil, errno: .ioError, failSync: false, code: .io,
            failSyncAt: 3),
        Case(name: "ENOSPC on the first write", failAfterBytes: 0, errno: .noSpace, failSync: false, code: .noSpace),
        Case(
            name: "a short write, then EIO", failAfterBytes: (4 << 20) + 1536, errno: .ioError, failSync: false,
            code: .io, tear: true),
        Case(
            name: "EIO on read during the read-back", failAfterBytes: nil, errno: .ioError, failSync: false, code: .io,
            failReadAfterBytes: 6 << 20),
        // Devices that lose data silently: the read-back catches it, early (a region read back
        // while later ones are written) or at the end (the last chunk).
        Case(
            name: "a byte silently corrupted in the first region", failAfterBytes: nil, errno: .ioError,
            failSync: false, code: .readBackMismatch, corruptAt: 4097),
        Case(
            name: "a byte silently corrupted in the last chunk", failAfterBytes: nil, errno: .ioError, failSync: false,
            code: .readBackMismatch, corruptAt: (10 << 20) - 3),
        // Zero chunks are zeroed first and read back while the rest is written.
        Case(
            name: "zeroing silently does nothing", failAfterBytes: nil, errno: .ioError, failSync: false,
            code: .readBackMismatch, ignoreZeroOut: true),
        Case(
            name: "EIO while the zero chunks are zeroed", failAfterBytes: 0, errno: .ioError, failSync: false,
            code: .io, zeroChunks: true),
    ]

    @Test(arguments: cases)
    func deviceErrorsAreClean(_ fault: Case) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            try sandbox.makeUpdate(
                [("rootfs", 10 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/update.ferry",
                zeroChunks: fault.ignoreZeroOut || fault.zeroChunks ? ["rootfs": [1, 2, 6]] : [:])
            if fault.ignoreZeroOut {
                // Other bytes where the zeros go: a device that does not zero keeps them.
                let partition = try PartitionTable.read(sandbox.diskPath).partition(
                    .partitionLabel("rootfs_b"), disk: sandbox.diskPath)
                let slot = try BlockDevice.openSharedForWriting(sandbox.diskPath)
                try slot.write(seededBytes(count: 10 << 20, seed: 77), at: partition.range.lowerBound)
                try slot.close()
            }
            let environmentBefore = try Shell.check([
                TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
            ])

            let booted = BootedGroup(bootname: "A", source: "test")
            var installer = Installer(configuration: configuration, booted: booted, logger: quietLogger)
            installer.checkpointBytes = 2 << 20
            installer.wrapDevice = {
                FaultyBlockTarget(
                    $0, failAfterBytes: fault.failAfterBytes, writeError: fault.errno, failSynchronize: fault.failSync,
                    failSynchronizeAt: fault.failSyncAt, failReadAfterBytes: fault.failReadAfterBytes,
                    tearFailingWrite: fault.tear, corruptByteAt: fault.corruptAt,
                    ignoreZeroOut: fault.ignoreZeroOut)
            }
            let lock = try StateStore(directory: configuration.stateDirectory).acquireWriteLock(command: "test")
            let error = #expect(throws: FerryError.self) {
                try installer.install(
                    from: FileByteSource(path: "\(dir)/update.ferry"), bundleName: "update.ferry",
                    allowDowngrade: false, force: false)
            }
            lock.release()
            #expect(error?.code == fault.code, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
            // Nothing switched: the order is unchanged and B is marked bad.
            let environment = try Shell.check([
                TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
            ])
            #expect(environment.contains("BOOT_ORDER=A B") && environment.contains("BOOT_B_LEFT=0"))
            #expect(environmentBefore.contains("BOOT_ORDER=A B"))
            // The next install, on a healthy device, succeeds.
            let again = try Shell.run([
                TestEnvironment.ferryBinary, "install", "\(dir)/update.ferry", "--config", sandbox.configurationPath,
            ])
            #expect(again.status == 0, "\(again.output)")
            let clean = error?.code == fault.code && environment.contains("BOOT_ORDER=A B") && again.status == 0
            try ReliabilityProfile.report(
                "io-fault \(fault.name): \(clean ? "clean error, nothing switched, next install succeeded" : "VIOLATION")",
                ["kind": .string("io-fault"), "name": .string(fault.name), "violations": .number(clean ? 0 : 1)])
        }
    }
}
