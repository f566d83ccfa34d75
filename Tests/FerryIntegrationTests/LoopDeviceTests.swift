import FerryCore
import FerryCrypto
import FerrySystem
import FerryTestSupport
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Root-only tests on loop devices backed by image files the tests create. Every loop device is
/// detached in teardown, also on failure; each test checks that nothing it attached is left.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct LoopDeviceTests {
    @Test func attachAddsEveryPartitionAndDetachLeavesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let table = try PartitionTable.read(sandbox.diskPath)
            #expect(table.partitions.count == 8)
            try await withLoopDevice(sandbox.diskPath) { loop in
                #expect(loop.isAttachedByUs)
                #expect(TextFile.attribute("/sys/block/loop\(loop.number)/loop/autoclear") == "1")
                for partition in table.partitions {
                    let node = try loop.partitionDevice(partition)
                    #expect(node == "/dev/loop\(loop.number)p\(partition.number)")
                    let device = try BlockDevice.openForReading(node)
                    #expect(device.kind == .blockDevice)
                    #expect(device.byteCount == partition.byteCount)
                    try device.close()
                }
                // Asking again for a partition that is already there reuses it.
                let again = try loop.partitionDevice(table.partitions[1])
                #expect(again == "/dev/loop\(loop.number)p2")
            }
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func writesThroughThePartitionNodeLandInTheImageFile() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let table = try PartitionTable.read(sandbox.diskPath)
            let rootfsB = try table.partition(.partitionLabel("rootfs_b"), disk: sandbox.diskPath)
            let data = seededBytes(count: 3 << 20, seed: 42)
            try await withLoopDevice(sandbox.diskPath) { loop in
                let device = try BlockDevice.openExclusive(try loop.partitionDevice(rootfsB))
                try data.withUnsafeBytes { try device.write($0, at: 4096) }
                try device.synchronize()
                try device.dropCaches()
                try device.close()
            }
            let file = try BlockDevice.openForReading(sandbox.diskPath, window: rootfsB.range)
            var back = [UInt8](repeating: 0, count: data.count)
            try back.withUnsafeMutableBytes { try file.read(into: $0, at: 4096) }
            #expect(back == data)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func reusesAnExistingLoopDeviceAndLeavesItAttached() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            // An operator's own loop device, without partition scanning.
            let existing =
                try Shell.check(["losetup", "--find", "--show", sandbox.diskPath])
                .split(separator: "\n").first.map(String.init) ?? ""
            defer { _ = try? Shell.run(["losetup", "--detach", existing]) }
            try await withLoopDevice(sandbox.diskPath) { loop in
                #expect(!loop.isAttachedByUs)
                #expect(loop.path == existing)
                let table = try PartitionTable.read(sandbox.diskPath)
                let node = try loop.partitionDevice(table.partitions[2])
                #expect(node.hasPrefix(existing + "p"))
            }
            #expect(LoopDevice.devices(backing: sandbox.diskPath).map(\.path) == [existing])
            try Shell.check(["losetup", "--detach", existing])
            for _ in 0..<100 where !LoopDevice.devices(backing: sandbox.diskPath).isEmpty { usleepMilliseconds(10) }
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }

    @Test func systemWideLookupByPartlabelLabelAndUUID() async throws {
        try await withTemporaryDirectory { dir in
            // Unique names so that no real disk of the machine can match.
            let suffix = String(UInt64.random(in: 1..<UInt64.max), radix: 16).prefix(8)
            let disk = "\(dir)/lookup.img"
            try makeFile(disk, size: 40 << 20)
            try Shell.check([
                "sh", "-c",
                "printf 'label: gpt\\nsize=16MiB, name=ferry-\(suffix)-a\\nsize=16MiB, name=ferry-\(suffix)-b\\n' | sfdisk -q \(disk)",
            ])
            let label = "fl\(suffix)"
            let fsUUID = "f0e1d2c3-0000-4000-8000-0000\(String(repeating: "0", count: 8 - suffix.count))\(suffix)"
            let table = try PartitionTable.read(disk)
            #expect(table.partitions.count == 2)
            try await withLoopDevice(disk) { loop in
                let first = try loop.partitionDevice(table.partitions[0])
                let second = try loop.partitionDevice(table.partitions[1])
                try Shell.check(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fsUUID, second])
                #expect(DeviceLookup.device(for: .partitionLabel("ferry-\(suffix)-a")) == first)
                #expect(DeviceLookup.device(for: .partitionUUID(try #require(table.partitions[0].uuid))) == first)
                #expect(DeviceLookup.device(for: .label(label)) == second)
                #expect(DeviceLookup.device(for: .uuid(fsUUID)) == second)
                #expect(DeviceLookup.device(for: .label("no-such-\(suffix)")) == nil)

                // A configuration naming its slots by tag resolves them to these nodes.
                let json = """
                    {"compatible": "t", "sandbox": false, "stateDirectory": "state",
                     "bootloader": {"type": "grub", "grubenv": "grubenv"},
                     "slots": {"rootfs_a": {"class": "rootfs", "bootname": "A", "device": "PARTLABEL=ferry-\(suffix)-a"},
                               "rootfs_b": {"class": "rootfs", "bootname": "B", "device": "UUID=\(fsUUID)", "size": 16777216}}}
                    """
                let configuration = try SystemConfiguration.parse(Array(json.utf8), path: "\(dir)/system.json")
                var resolver = SlotResolver()
                let slots = try resolver.resolveAll(configuration)
                #expect(slots.map(\.locationDescription) == [first, second])
                #expect(slots.map(\.byteCount) == [16 << 20, 16 << 20])
            }
            #expect(LoopDevice.devices(backing: disk).isEmpty)
        }
    }
}

func usleepMilliseconds(_ milliseconds: Int) {
    var remaining = timespec(tv_sec: 0, tv_nsec: milliseconds * 1_000_000)
    nanosleep(&remaining, nil)
}
