import FerryCore
import FerrySystem
import FerryTestSupport
import Testing

/// Telling which slot group is booted: kernel command line, sandbox state, or nothing.
@Suite struct BootedGroupTests {
    static let noMounts = MountTable(mounts: [])

    // MARK: - Sandbox

    @Test func aSandboxReadsTheBootedFile() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: slots, commandLine: KernelCommandLine(""), mounts: Self.noMounts)
            #expect(booted.bootname == "A")
            #expect(!booted.source.isEmpty)

            // tools/sandbox-boot switches groups by rewriting the file.
            try StateStore(directory: configuration.stateDirectory).setSandboxBootedGroup("B")
            let switched = try BootedGroup.detect(
                configuration: configuration, slots: slots, commandLine: KernelCommandLine("quiet"),
                mounts: Self.noMounts)
            #expect(switched.bootname == "B")
        }
    }

    @Test(arguments: ["ferry.slot=A", "rauc.slot=B", "quiet ferry.slot=B", "ferry.slot=C"])
    func aSandboxIsRefusedWhenTheCommandLineNamesASlot(commandLine: String) async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try Sandbox.make(in: dir).configuration()
            expectFerryError(.configurationInvalid) {
                try BootedGroup.detect(
                    configuration: configuration, slots: [], commandLine: KernelCommandLine(commandLine),
                    mounts: Self.noMounts)
            }
        }
    }

    @Test func aSandboxWithoutABootedFileHasNoBootedGroup() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            try Shell.check(["rm", "\(configuration.stateDirectory)/booted"])
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: [], commandLine: KernelCommandLine(""), mounts: Self.noMounts)
            #expect(booted.bootname == nil)
            #expect(!booted.source.isEmpty)

            // An empty file says nothing either.
            try makeFile("\(configuration.stateDirectory)/booted", bytes: Array(" \n".utf8))
            let empty = try BootedGroup.detect(
                configuration: configuration, slots: [], commandLine: KernelCommandLine(""), mounts: Self.noMounts)
            #expect(empty.bootname == nil)
        }
    }

    @Test func aSandboxBootedFileNamingAnUnknownGroupIsStateInvalid() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try Sandbox.make(in: dir).configuration()
            try StateStore(directory: configuration.stateDirectory).setSandboxBootedGroup("C")
            expectFerryError(.stateInvalid) {
                try BootedGroup.detect(
                    configuration: configuration, slots: [], commandLine: KernelCommandLine(""), mounts: Self.noMounts)
            }
        }
    }

    // MARK: - Kernel command line

    @Test(arguments: [
        ("ferry.slot=B", "B", "ferry.slot"),
        ("console=ttyS0 ferry.slot=A rootwait", "A", "ferry.slot"),
        ("rauc.slot=A", "A", "rauc.slot"),
        ("rauc.slot=A ferry.slot=B", "B", "ferry.slot"),
        ("ferry.slot=A ferry.slot=B", "B", "ferry.slot"),
    ])
    func theCommandLineNamesTheBootedGroup(commandLine: String, bootname: String, parameter: String) async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: slots, commandLine: KernelCommandLine(commandLine),
                mounts: Self.noMounts)
            #expect(booted.bootname == bootname)
            #expect(booted.source.contains(parameter))
        }
    }

    @Test(arguments: ["ferry.slot=C", "rauc.slot=a", "ferry.slot=rootfs_a", #"ferry.slot="A B""#])
    func anUnknownGroupOnTheCommandLineIsConfigurationInvalid(commandLine: String) async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            expectFerryError(.configurationInvalid) {
                try BootedGroup.detect(
                    configuration: configuration, slots: [], commandLine: KernelCommandLine(commandLine),
                    mounts: Self.noMounts)
            }
        }
    }

    // MARK: - No information

    @Test func withoutAnyInformationTheBootedGroupIsUnknown() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: slots, commandLine: KernelCommandLine("quiet splash"),
                mounts: Self.noMounts)
            #expect(booted.bootname == nil)
            #expect(!booted.source.isEmpty)
        }
    }

    @Test func aRootThatIsNoSlotLeavesTheBootedGroupUnknown() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            var resolver = SlotResolver()
            let slots = try resolver.resolveAll(configuration)
            // root= names a regular file (no device number), and / is some device that is no slot:
            // image-file slots have no device number, so neither can match.
            let mounts = MountTable(parsing: "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw")
            #expect(mounts.root != nil)
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: slots,
                commandLine: KernelCommandLine("root=\(dir)/rootfs_a.img"), mounts: mounts)
            #expect(booted.bootname == nil)
        }
    }

    @Test func aNonSandboxConfigurationIgnoresASandboxBootedFile() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir)
            try StateStore(directory: configuration.stateDirectory).setSandboxBootedGroup("A")
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: [], commandLine: KernelCommandLine(""), mounts: Self.noMounts)
            #expect(booted.bootname == nil)
        }
    }
}
