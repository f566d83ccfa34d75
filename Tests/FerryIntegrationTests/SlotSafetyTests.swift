import FerryCore
import FerrySystem
import FerryTestSupport
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The write guard on real loop devices: mounted partitions, the booted group, exclusive opens
/// and the global lock are refused with the right codes, and nothing is left attached.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct SlotSafetyTests {
    func access(_ sandbox: Sandbox) throws -> SlotAccess {
        let configuration = try sandbox.configuration()
        var resolver = SlotResolver()
        let slots = try resolver.resolveAll(configuration)
        let booted = try BootedGroup.detect(
            configuration: configuration, slots: slots, commandLine: KernelCommandLine(""), mounts: MountTable.current()
        )
        return SlotAccess(
            configuration: configuration, booted: booted, mounts: try MountTable.current(),
            logger: quietLogger)
    }

    @Test func opensTheInactiveSlotThroughALoopDeviceAndDetaches() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let access = try access(sandbox)
            let configuration = try sandbox.configuration()
            let slot = try #require(configuration.slot(named: "rootfs_b"))
            let open = try access.openForWriting(slot)
            #expect(open.device.kind == .blockDevice)
            #expect(open.device.byteCount == 16 << 20)
            #expect(open.devicePath.hasPrefix("/dev/loop"))
            try open.close()
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func refusesTheBootedGroup() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            for name in ["rootfs_a", "modem_a", "tee_a"] {
                let slot = try #require(configuration.slot(named: name))
                let error = try #require(throws: FerryError.self) { try access(sandbox).openForWriting(slot) }
                #expect(error.code == .deviceBooted)
            }
            // After a (simulated) boot into B, A is writable and B is refused.
            try StateStore(directory: configuration.stateDirectory).setSandboxBootedGroup("B")
            let open = try access(sandbox).openForWriting(try #require(configuration.slot(named: "rootfs_a")))
            try open.close()
            let error = try #require(throws: FerryError.self) {
                try access(sandbox).openForWriting(try #require(configuration.slot(named: "rootfs_b")))
            }
            #expect(error.code == .deviceBooted)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func refusesAMountedPartitionHoweverItIsMounted() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let slot = try #require(configuration.slot(named: "rootfs_b"))
            let partition = try PartitionTable.read(sandbox.diskPath).partition(
                .partitionLabel("rootfs_b"), disk: sandbox.diskPath)
            let mountPoint = "\(dir)/mnt"

            // 1. Mounted through a partition of a loop device over the whole disk.
            try await sandbox.withMountedPartition("rootfs_b", at: mountPoint) { node in
                let error = try #require(throws: FerryError.self) { try access(sandbox).openForWriting(slot) }
                #expect(error.code == .deviceInUse)
                // The kernel agrees: an exclusive open of the mounted node fails too.
                let busy = try #require(throws: FerryError.self) { try BlockDevice.openExclusive(node) }
                #expect(busy.code == .deviceInUse)
            }
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)

            // 2. Mounted through a separate loop device with an offset (mount -o loop,offset=...).
            try Shell.check([
                "mount", "-o", "loop,offset=\(partition.startOffset),sizelimit=\(partition.byteCount)",
                sandbox.diskPath,
                mountPoint,
            ])
            do {
                let error = try #require(throws: FerryError.self) { try access(sandbox).openForWriting(slot) }
                #expect(error.code == .deviceInUse)
                // Another slot of the same disk that does not overlap stays writable.
                let modem = try access(sandbox).openForWriting(try #require(configuration.slot(named: "modem_b")))
                try modem.close()
            }
            try Shell.check(["umount", mountPoint])
            for _ in 0..<200 where !LoopDevice.devices(backing: sandbox.diskPath).isEmpty { usleepMilliseconds(10) }

            // Unmounted again: writable.
            let open = try access(sandbox).openForWriting(slot)
            try open.close()
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func exclusiveOpenRefusesASecondWriter() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let slot = try #require(configuration.slot(named: "tee_b"))
            let first = try access(sandbox).openForWriting(slot)
            let error = try #require(throws: FerryError.self) { try access(sandbox).openForWriting(slot) }
            #expect(error.code == .deviceInUse)
            try first.close()
            let second = try access(sandbox).openForWriting(slot)
            try second.close()
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func refusesAPathThatIsNoConfiguredSlot() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let stray = "\(dir)/stray.img"
            try makeFile(stray, size: 1 << 20)
            let error = try #require(throws: FerryError.self) { try access(sandbox).slot(forDevice: stray) }
            #expect(error.code == .deviceNotConfigured)
            try await withLoopDevice(stray) { loop in
                let error = try #require(throws: FerryError.self) { try access(sandbox).slot(forDevice: loop.path) }
                #expect(error.code == .deviceNotConfigured)
            }
        }
    }

    @Test func globalLockSerializesWritersAcrossProcesses() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let store = StateStore(directory: try sandbox.configuration().stateDirectory)
            let lock = try store.acquireWriteLock(command: "test")
            // Another process cannot take it (flock(1) is util-linux's client of the same lock).
            #expect(try Shell.run(["flock", "--nonblock", store.lockPath, "true"]).status != 0)
            let error = try #require(throws: FerryError.self) { try store.acquireWriteLock(command: "second") }
            #expect(error.code == .lockHeld)
            lock.release()
            #expect(try Shell.run(["flock", "--nonblock", store.lockPath, "true"]).status == 0)
            // Held by another process: refused here. The holder blocks until it has the lock, then
            // leaves a marker, so the check below runs only once the lock is really held.
            let ready = "\(dir)/holder-ready"
            let holder = try Shell.check([
                "sh", "-c", "flock \(store.lockPath) sh -c 'touch \(ready); exec sleep 30' >/dev/null 2>&1 & echo $!",
            ])
            defer {
                _ = try? Shell.run(["pkill", "-P", holder.trimmed])
                _ = try? Shell.run(["kill", holder.trimmed])
            }
            var waited = 0
            while !(Glibc.access(ready, F_OK) == 0) && waited < 6000 {
                usleepMilliseconds(10)
                waited += 1
            }
            #expect((Glibc.access(ready, F_OK) == 0), "the holder never took the lock")
            let held = try #require(throws: FerryError.self) { try store.acquireWriteLock(command: "third") }
            #expect(held.code == .lockHeld)
        }
    }
}

extension String {
    var trimmed: String { split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? "" }
}
