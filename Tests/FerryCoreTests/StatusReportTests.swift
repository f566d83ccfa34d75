import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// `ferry status` as data, gathered from a make-test-disk sandbox.
@Suite struct StatusReportTests {
    static let noMounts = MountTable(mounts: [])

    func gather(_ sandbox: Sandbox, commandLine: String = "") throws -> StatusReport {
        try StatusReport.gather(
            configuration: try sandbox.configuration(), commandLine: KernelCommandLine(commandLine),
            mounts: Self.noMounts)
    }

    @Test func gathersTheSandboxStatus() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            let report = try gather(sandbox)
            #expect(report.formatVersion == 1)
            #expect(report.compatible == "ferry-demo-x86_64")
            #expect(report.configuration == configuration.path)
            #expect(report.sandbox)
            #expect(report.booted == "A")
            #expect(!report.bootedSource.isEmpty)
            #expect(report.bootloader == "uboot (fw_env.config)")
            #expect(report.stateDirectory == configuration.stateDirectory)

            #expect(report.groups.map(\.bootname) == ["A", "B"])
            #expect(report.groups.map(\.booted) == [true, false])
            #expect(report.groups[0].slots.map(\.name) == ["modem_a", "rootfs_a", "tee_a"])
            #expect(report.groups[1].slots.map(\.name) == ["modem_b", "rootfs_b", "tee_b"])
            #expect(report.groups[0].slots.allSatisfy { $0.state == "booted" })
            #expect(report.groups[1].slots.allSatisfy { $0.state == "inactive" })
            // Group B is empty: nothing installed there.
            #expect(report.groups[1].slots.allSatisfy { $0.installed == nil })

            let rootfsA = try #require(report.groups[0].slots.first { $0.name == "rootfs_a" })
            #expect(rootfsA.slotClass == "rootfs")
            #expect(rootfsA.device == "disk.img partition PARTLABEL=rootfs_a")
            #expect(rootfsA.location == "disk.img partition 2")
            #expect(rootfsA.size == 16 << 20)
            let sizes: [Int64] = report.groups.flatMap(\.slots).map(\.size)
            let expectedSizes: [Int64] = [8 << 20, 16 << 20, 4 << 20, 8 << 20, 16 << 20, 4 << 20]
            #expect(sizes == expectedSizes)
        }
    }

    @Test func theInstalledRootfsIsTheFactoryImage() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let report = try gather(sandbox)
            let rootfsA = try #require(report.groups[0].slots.first { $0.name == "rootfs_a" })
            let installed = try #require(rootfsA.installed)
            #expect(installed.version == "1.0.0")
            #expect(installed.source == "factory")
            #expect(installed.size == 16 << 20)
            #expect(installed.installedAt != nil)

            let factory = try BlockDevice.openForReading("\(sandbox.directory)/images/factory-rootfs.img")
            let factoryDigest = try SHA256Hasher.hash(factory)
            #expect(installed.sha256 == factoryDigest.hex)

            // And the slot itself holds exactly that image.
            let table = try PartitionTable.read(sandbox.diskPath)
            let partition = try table.partition(.partitionLabel("rootfs_a"), disk: sandbox.diskPath)
            let slot = try BlockDevice.openForReading(sandbox.diskPath, window: partition.range)
            #expect(try SHA256Hasher.hash(slot, byteCount: installed.size) == factoryDigest)
        }
    }

    @Test func everyFactoryRecordMatchesItsImage() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let report = try gather(sandbox)
            for (name, image) in [("rootfs_a", "rootfs"), ("modem_a", "modem"), ("tee_a", "tee")] {
                let slot = try #require(report.groups[0].slots.first { $0.name == name })
                let file = try BlockDevice.openForReading("\(sandbox.directory)/images/factory-\(image).img")
                #expect(try slot.installed?.sha256 == SHA256Hasher.hash(file).hex, "\(name)")
                #expect(slot.installed?.size == file.byteCount, "\(name)")
            }
        }
    }

    @Test func theJSONEncodingHasFormatVersion1() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let report = try gather(sandbox)
            let json = try JSONValue.parse(report.json.serialized(), what: "status", code: .internal)
            let object = try #require(json.objectValue)
            #expect(object["formatVersion"] == .number(1))
            #expect(object["booted"] == .string("A"))
            #expect(object["sandbox"] == .bool(true))
            // Slots use "class", not the Swift property name.
            guard case .array(let groups)? = object["groups"], case .object(let group)? = groups.first,
                case .array(let slots)? = group["slots"], case .object(let slot)? = slots.first
            else {
                Issue.record("unexpected JSON shape: \(json)")
                return
            }
            #expect(slot["class"] == .string("modem"))
            #expect(slot["slotClass"] == nil)
            #expect(slot["installed"]?.objectValue?["version"] == .string("1.0.0"))
        }
    }

    @Test func anUnknownBootedGroupMakesEveryStateUnknown() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try Shell.check(["rm", "\(sandbox.directory)/state/booted"])
            let report = try gather(sandbox)
            #expect(report.booted == nil)
            #expect(report.groups.allSatisfy { !$0.booted })
            #expect(report.groups.flatMap(\.slots).allSatisfy { $0.state == "unknown" })
        }
    }

    @Test func groupBCanBeBooted() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try StateStore(directory: "\(sandbox.directory)/state").setSandboxBootedGroup("B")
            let report = try gather(sandbox)
            #expect(report.booted == "B")
            #expect(report.groups.map(\.booted) == [false, true])
            #expect(report.groups[1].slots.allSatisfy { $0.state == "booted" })
        }
    }

    @Test func aGrubSandboxNamesItsEnvironmentFile() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: "grub")
            #expect(try gather(sandbox).bootloader == "grub (grubenv)")
        }
    }

    @Test func gatherPropagatesConfigurationAndStateErrors() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            expectFerryError(.configurationInvalid) { try gather(sandbox, commandLine: "ferry.slot=A") }
            try makeFile("\(sandbox.directory)/state/slots.json", bytes: Array("{".utf8))
            expectFerryError(.stateInvalid) { try gather(sandbox) }
            try Shell.check(["rm", sandbox.diskPath])
            expectFerryError(.deviceNotFound) { try gather(sandbox) }
        }
    }

    @Test func imageFileSlotsAreShownRelativeToTheConfiguration() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            let report = try StatusReport.gather(
                configuration: configuration, commandLine: KernelCommandLine("ferry.slot=B"), mounts: Self.noMounts)
            #expect(!report.sandbox)
            #expect(report.booted == "B")
            let rootfsA = try #require(report.groups[0].slots.first { $0.name == "rootfs_a" })
            #expect(rootfsA.device == "rootfs_a.img")
            #expect(rootfsA.location == "rootfs_a.img")
            #expect(rootfsA.size == ImageFileDevice.rootfsSize)
            #expect(rootfsA.state == "inactive")
            #expect(rootfsA.installed == nil)
        }
    }
}
