import FerryCore
import FerrySystem
import FerryTestSupport
import Logging
import Testing

/// The safety rules before a slot is opened for writing, on image-file slots (no loop devices).
@Suite struct SlotAccessTests {
    static let logger = Logger(label: "ferry.tests.slot-access")

    /// Slot access for an image-file device booted from `commandLine`.
    func makeAccess(_ configuration: SystemConfiguration, commandLine: String) throws -> SlotAccess {
        var resolver = SlotResolver()
        let slots = try resolver.resolveAll(configuration)
        let mounts = MountTable(mounts: [])
        let booted = try BootedGroup.detect(
            configuration: configuration, slots: slots, commandLine: KernelCommandLine(commandLine), mounts: mounts)
        return SlotAccess(configuration: configuration, booted: booted, mounts: mounts, logger: Self.logger)
    }

    // MARK: - checkWritable

    @Test func checkWritableRefusesTheBootedGroupAndAcceptsTheOther() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            for name in ["rootfs_a", "modem_a"] {
                let slot = try #require(configuration.slot(named: name))
                expectFerryError(.deviceBooted) { try access.checkWritable(slot) }
            }
            for name in ["rootfs_b", "modem_b"] {
                try access.checkWritable(try #require(configuration.slot(named: name)))
            }
        }
    }

    @Test func checkWritableFollowsTheBootedGroup() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "rauc.slot=B")
            try access.checkWritable(try #require(configuration.slot(named: "rootfs_a")))
            expectFerryError(.deviceBooted) {
                try access.checkWritable(try #require(configuration.slot(named: "rootfs_b")))
            }
        }
    }

    @Test func checkWritableRefusesEverySlotWhileTheBootedGroupIsUnknown() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "quiet")
            #expect(access.booted.bootname == nil)
            for slot in configuration.slots {
                expectFerryError(.deviceBooted) { try access.checkWritable(slot) }
                expectFerryError(.deviceBooted) { try access.openForWriting(slot) }
            }
        }
    }

    @Test func checkWritableRefusesASlotThatIsNotConfigured() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            let rootfsB = try #require(configuration.slot(named: "rootfs_b"))

            var ghost = rootfsB
            ghost.name = "ghost_b"
            expectFerryError(.deviceNotConfigured) { try access.checkWritable(ghost) }

            // The right name but another device is not the configured slot either.
            var moved = rootfsB
            moved.device = .path("\(dir)/elsewhere.img")
            expectFerryError(.deviceNotConfigured) { try access.checkWritable(moved) }
            expectFerryError(.deviceNotConfigured) { try access.openForWriting(moved) }
        }
    }

    // MARK: - openForWriting

    @Test func openForWritingOpensTheOtherSlotsFileExclusively() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            let rootfsB = try #require(configuration.slot(named: "rootfs_b"))

            let open = try access.openForWriting(rootfsB)
            #expect(open.devicePath == "\(dir)/rootfs_b.img")
            #expect(open.slot.slot == rootfsB)
            #expect(open.slot.location == .imageFile(path: "\(dir)/rootfs_b.img"))
            #expect(open.device.kind == .imageFile)
            #expect(open.device.isWritable)
            #expect(open.device.byteCount == ImageFileDevice.rootfsSize)

            // A second open of the same slot while the first is open is refused.
            expectFerryError(.deviceInUse) { try access.openForWriting(rootfsB) }
            // So is any other exclusive open of the file.
            expectFerryError(.deviceInUse) { try BlockDevice.openExclusive("\(dir)/rootfs_b.img") }
            // Other slots are independent.
            let modemB = try access.openForWriting(try #require(configuration.slot(named: "modem_b")))
            try modemB.close()

            // Writes go to the slot's file.
            let data = seededBytes(count: 8192, seed: 71)
            try data.withUnsafeBytes { try open.device.write($0, at: 4096) }
            try open.device.synchronize()
            try open.close()
            try open.close()  // twice is harmless
            #expect(Array(try readFile("\(dir)/rootfs_b.img")[4096..<12_288]) == data)

            // Once closed, the slot can be opened again.
            let again = try access.openForWriting(rootfsB)
            #expect(try readBytes(again.device, at: 4096, count: 8192) == data)
            try again.close()
        }
    }

    @Test func openForWritingRefusesTheBootedSlotWithoutTouchingIt() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let before = try readFile("\(dir)/rootfs_a.img")
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            expectFerryError(.deviceBooted) {
                try access.openForWriting(try #require(configuration.slot(named: "rootfs_a")))
            }
            #expect(try readFile("\(dir)/rootfs_a.img") == before)
            // Nothing holds it either.
            try BlockDevice.openExclusive("\(dir)/rootfs_a.img").close()
        }
    }

    @Test func openForWritingReportsAMissingOrTooSmallImageFile() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            try makeFile("\(dir)/rootfs_b.img", size: 4096)
            expectFerryError(.deviceTooSmall) {
                try access.openForWriting(try #require(configuration.slot(named: "rootfs_b")))
            }
            try Shell.check(["rm", "\(dir)/modem_b.img"])
            expectFerryError(.deviceNotFound) {
                try access.openForWriting(try #require(configuration.slot(named: "modem_b")))
            }
        }
    }

    @Test func aSandboxWithPerSlotImageFilesOpensTheInactiveSlot() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir, sandbox: true)
            try StateStore(directory: configuration.stateDirectory).setSandboxBootedGroup("B")
            let access = try makeAccess(configuration, commandLine: "")
            #expect(access.booted.bootname == "B")
            expectFerryError(.deviceBooted) {
                try access.openForWriting(try #require(configuration.slot(named: "modem_b")))
            }
            let open = try access.openForWriting(try #require(configuration.slot(named: "modem_a")))
            #expect(open.devicePath == "\(dir)/modem_a.img")
            expectFerryError(.deviceInUse) {
                try access.openForWriting(try #require(configuration.slot(named: "modem_a")))
            }
            try open.close()
        }
    }

    // MARK: - slot(forDevice:)

    @Test func slotForDeviceFindsAConfiguredFile() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            #expect(try access.slot(forDevice: "\(dir)/rootfs_b.img").name == "rootfs_b")
            #expect(try access.slot(forDevice: "\(dir)/modem_a.img").name == "modem_a")
            // Another path to the same file is the same slot.
            #expect(try access.slot(forDevice: "\(dir)/./rootfs_a.img").name == "rootfs_a")
            try Shell.check(["ln", "-s", "\(dir)/modem_b.img", "\(dir)/alias.img"])
            #expect(try access.slot(forDevice: "\(dir)/alias.img").name == "modem_b")
        }
    }

    @Test func slotForDeviceRefusesAnUnconfiguredFile() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let access = try makeAccess(configuration, commandLine: "ferry.slot=A")
            try makeFile("\(dir)/stranger.img", size: ImageFileDevice.rootfsSize)
            expectFerryError(.deviceNotConfigured) { try access.slot(forDevice: "\(dir)/stranger.img") }
            // A copy of a slot's file is not the slot.
            try Shell.check(["cp", "\(dir)/rootfs_b.img", "\(dir)/copy.img"])
            expectFerryError(.deviceNotConfigured) { try access.slot(forDevice: "\(dir)/copy.img") }
            expectFerryError(.deviceNotFound) { try access.slot(forDevice: "\(dir)/missing.img") }
        }
    }
}
