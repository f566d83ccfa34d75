import FerryCore
import FerrySystem
import FerryTestSupport
import Testing

/// Locating configured slots on disk images and image files, read-only and unprivileged.
@Suite struct SlotResolverTests {
    static let mebibyte: Int64 = 1 << 20

    /// The sandbox's slots with their partition number, offset and size (Images/README.md, S = 16 MiB).
    static let sandboxLayout: [(name: String, number: Int, offset: Int64, size: Int64)] = [
        ("modem_a", 4, 41 * mebibyte, 8 * mebibyte),
        ("rootfs_a", 2, 9 * mebibyte, 16 * mebibyte),
        ("tee_a", 6, 57 * mebibyte, 4 * mebibyte),
        ("modem_b", 5, 49 * mebibyte, 8 * mebibyte),
        ("rootfs_b", 3, 25 * mebibyte, 16 * mebibyte),
        ("tee_b", 7, 61 * mebibyte, 4 * mebibyte),
    ]

    @Test func resolvesEverySlotOfTheSandbox() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, slotSize: "16M")
            let configuration = try sandbox.configuration()
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            #expect(slots.map(\.slot.name) == Self.sandboxLayout.map(\.name))
            let disk = "\(configuration.directory)/disk.img"
            for (slot, expected) in zip(slots, Self.sandboxLayout) {
                #expect(slot.byteCount == expected.size, "\(expected.name)")
                guard case .diskPartition(let slotDisk, let partition) = slot.location else {
                    Issue.record("\(expected.name) is not a disk partition: \(slot.location)")
                    continue
                }
                #expect(slotDisk == disk)
                #expect(partition.number == expected.number)
                #expect(partition.startOffset == expected.offset)
                #expect(partition.byteCount == expected.size)
                #expect(partition.name == expected.name)
                #expect(slot.locationDescription == "\(disk) partition \(expected.number)")
            }
            // The factory rootfs is an ext4 file system labelled "rootfs"; group B is empty.
            let rootfsA = try #require(slots.first { $0.slot.name == "rootfs_a" })
            if case .diskPartition(_, let partition) = rootfsA.location {
                #expect(partition.fileSystem?.label == "rootfs")
                #expect(partition.fileSystem?.type == "ext4")
            }
        }
    }

    @Test func aLargerSlotSizeIsReflected() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, slotSize: "32M")
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(try sandbox.configuration())
            #expect(slots.first { $0.slot.name == "rootfs_b" }?.byteCount == 32 * Self.mebibyte)
            #expect(slots.first { $0.slot.name == "modem_b" }?.byteCount == 8 * Self.mebibyte)
        }
    }

    @Test func resolvingOneSlotWorksAlone() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            var resolver = SlotResolver()
            let slot = try #require(configuration.slot(named: "tee_b"))
            let resolved = try resolver.resolve(slot, configuration: configuration)
            #expect(resolved.slot == slot)
            #expect(resolved.byteCount == 4 * Self.mebibyte)
        }
    }

    @Test func aMissingDiskImageThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            try Shell.check(["rm", sandbox.diskPath])
            var resolver = SlotResolver()
            expectFerryError(.deviceNotFound) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func aMissingPartitionThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try writeConfiguration(
                configurationText(
                    sandbox: true,
                    slots: [
                        .partition("rootfs_a", "rootfs", "A", "PARTLABEL=rootfs_a"),
                        .partition("rootfs_b", "rootfs", "B", "PARTLABEL=rootfs_c"),
                    ]), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            expectFerryError(.deviceNotFound) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func aSlotWhoseImageFileIsMissingThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            try Shell.check(["rm", "\(dir)/rootfs_b.img"])
            var resolver = SlotResolver()
            expectFerryError(.deviceNotFound) { try resolver.resolveAll(configuration) }
            let slot = try #require(configuration.slot(named: "rootfs_b"))
            expectFerryError(.deviceNotFound) { try resolver.resolve(slot, configuration: configuration) }
            // The other slots still resolve one by one.
            let other = try #require(configuration.slot(named: "rootfs_a"))
            #expect(try resolver.resolve(other, configuration: configuration).byteCount == ImageFileDevice.rootfsSize)
        }
    }

    @Test func aSlotThatIsADirectoryThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            try Shell.check(["rm", "\(dir)/modem_a.img"])
            try DurableFile.createDirectory("\(dir)/modem_a.img")
            var resolver = SlotResolver()
            expectFerryError(.deviceNotFound) { try resolver.resolveAll(configuration) }
        }
    }

    @Test(
        arguments: [
            ("rootfs_b", 16 * SlotResolverTests.mebibyte + 512),
            ("rootfs_b", 17 * SlotResolverTests.mebibyte),
            ("tee_b", 4 * SlotResolverTests.mebibyte + 1),
            ("modem_a", Int64(1) << 40),
        ] as [(String, Int64)])
    func aDeclaredSizeLargerThanThePartitionThrowsDeviceTooSmall(slot name: String, declared: Int64) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let specs: [SlotSpec] = ["rootfs", "modem", "tee"].flatMap { slotClass in
                [("a", "A"), ("b", "B")].map { suffix, bootname in
                    let slotName = "\(slotClass)_\(suffix)"
                    return SlotSpec.partition(
                        slotName, slotClass, bootname, "PARTLABEL=\(slotName)", size: slotName == name ? declared : nil)
                }
            }
            let configuration = try writeConfiguration(
                configurationText(sandbox: true, slots: specs), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            expectFerryError(.deviceTooSmall) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func aDeclaredSizeEqualToThePartitionIsFine() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try writeConfiguration(
                configurationText(
                    sandbox: true,
                    slots: [
                        .partition("rootfs_a", "rootfs", "A", "PARTLABEL=rootfs_a", size: 16 * Self.mebibyte),
                        .partition("rootfs_b", "rootfs", "B", "PARTLABEL=rootfs_b", size: 1),
                    ]), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            #expect(
                try resolver.resolveAll(configuration).map(\.byteCount) == [16 * Self.mebibyte, 16 * Self.mebibyte])
        }
    }

    @Test func anImageFileSmallerThanDeclaredThrowsDeviceTooSmall() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            // Shrink rootfs_b.img below its declared 1 MiB.
            try makeFile("\(dir)/rootfs_b.img", size: ImageFileDevice.rootfsSize - 4096)
            var resolver = SlotResolver()
            expectFerryError(.deviceTooSmall) { try resolver.resolveAll(configuration) }
        }
    }

    /// `rootfs_b` by PARTLABEL, and `modem_b` naming the same partition 3 another way.
    @Test(arguments: [
        "3",
        "PARTUUID=FE77E000-0000-4000-8000-000000000003",
        "PARTUUID=fe77e000-0000-4000-8000-000000000003",
    ])
    func twoSlotsNamingOnePartitionByDifferentTagsAreConfigurationInvalid(modemB partition: String) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try writeConfiguration(
                configurationText(
                    sandbox: true,
                    slots: [
                        .partition("rootfs_a", "rootfs", "A", "PARTLABEL=rootfs_a"),
                        .partition("rootfs_b", "rootfs", "B", "PARTLABEL=rootfs_b"),
                        .partition("modem_a", "modem", "A", "PARTLABEL=modem_a"),
                        .partition("modem_b", "modem", "B", partition),
                    ]), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            expectFerryError(.configurationInvalid) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func aFileSystemLabelInsideAnotherSlotIsTheSameDevice() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            // LABEL=rootfs is the factory file system in partition rootfs_a.
            let configuration = try writeConfiguration(
                configurationText(
                    sandbox: true,
                    slots: [
                        .partition("rootfs_a", "rootfs", "A", "LABEL=rootfs"),
                        .partition("rootfs_b", "rootfs", "B", "PARTLABEL=rootfs_b"),
                        .partition("tee_a", "tee", "A", "PARTLABEL=rootfs_a"),
                        .partition("tee_b", "tee", "B", "PARTLABEL=tee_b"),
                    ]), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            expectFerryError(.configurationInvalid) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func theSameDiskThroughAnotherPathIsRecognized() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try Shell.check(["ln", "-s", "disk.img", "\(sandbox.directory)/other.img"])
            let configuration = try writeConfiguration(
                configurationText(
                    sandbox: true,
                    slots: [
                        .partition("rootfs_a", "rootfs", "A", "PARTLABEL=rootfs_a"),
                        .partition("rootfs_b", "rootfs", "B", disk: "other.img", "PARTLABEL=rootfs_a"),
                    ]), in: sandbox.directory, name: "custom.json")
            var resolver = SlotResolver()
            expectFerryError(.configurationInvalid) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func theSameImageFileThroughALinkIsConfigurationInvalid() async throws {
        try await withTemporaryDirectory { dir in
            try ImageFileDevice.make(in: dir)
            try Shell.check(["ln", "-s", "rootfs_a.img", "\(dir)/link.img"])
            let configuration = try writeConfiguration(
                configurationText(
                    slots: [
                        .device("rootfs_a", "rootfs", "A", "rootfs_a.img"),
                        .device("rootfs_b", "rootfs", "B", "link.img"),
                    ]), in: dir, name: "linked.json")
            var resolver = SlotResolver()
            expectFerryError(.configurationInvalid) { try resolver.resolveAll(configuration) }
        }
    }

    @Test func perSlotImageFilesResolveAsImageFiles() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            #expect(slots.map(\.slot.name) == ["modem_a", "rootfs_a", "modem_b", "rootfs_b"])
            for slot in slots {
                #expect(slot.location == .imageFile(path: "\(dir)/\(slot.slot.name).img"))
                #expect(slot.locationDescription == "\(dir)/\(slot.slot.name).img")
                let expectedSize =
                    slot.slot.slotClass == "rootfs" ? ImageFileDevice.rootfsSize : ImageFileDevice.modemSize
                #expect(slot.byteCount == expectedSize)
            }
        }
    }

    @Test func imageFilesInASandboxResolveToo() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir, sandbox: true)
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            #expect(slots.count == 4)
            #expect(slots.allSatisfy { if case .imageFile = $0.location { true } else { false } })
        }
    }
}
