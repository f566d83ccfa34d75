import FerrySystem
import FerryTestSupport
import FoundationEssentials
import Testing

/// Reading GPT and MBR partition tables of image files (made by `sfdisk`, unprivileged) with libblkid.
@Suite struct PartitionTableTests {
    static let linuxType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    static let espType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    static let diskID = "FE77E000-1111-4222-8333-444444444444"
    static let filesystemUUID = "12345678-9abc-4def-8123-456789abcdef"
    static let betaOffset: Int64 = 3 << 20

    /// A 12 MiB GPT disk: alpha (2 MiB, ESP type), beta (4 MiB, ext4 labelled `mylabel`), gamma (3 MiB).
    static func makeGPTDisk(in dir: String) throws -> String {
        let path = "\(dir)/disk.img"
        try makeFile(path, size: 12 << 20)
        let script = """
            label: gpt
            label-id: \(diskID)
            unit: sectors
            first-lba: 2048
            start=2048, size=2MiB, type=\(espType), uuid=AAAAAAAA-0000-4000-8000-000000000001, name="alpha"
            size=4MiB, type=\(linuxType), uuid=AAAAAAAA-0000-4000-8000-000000000002, name="beta"
            size=3MiB, type=\(linuxType), uuid=AAAAAAAA-0000-4000-8000-000000000003, name="gamma"

            """
        try sfdisk(path, script: script, in: dir)
        try Shell.check([
            "mkfs.ext4", "-q", "-F", "-L", "mylabel", "-U", filesystemUUID, "-E", "offset=\(betaOffset)", path, "4096k",
        ])
        return path
    }

    /// Partitions `path` with an sfdisk script (written to a file: `Shell` has no stdin).
    static func sfdisk(_ path: String, script: String, in dir: String) throws {
        let scriptPath = "\(dir)/layout-\(path.split(separator: "/").last ?? "disk").sfdisk"
        try makeFile(scriptPath, bytes: Array(script.utf8))
        try Shell.check(["sh", "-c", "sfdisk -q --no-reread --no-tell-kernel \"$1\" < \"$2\"", "sh", path, scriptPath])
    }

    /// What `sfdisk --json` says about a disk (the reference the libblkid reading is compared with).
    struct SfdiskDump: Decodable {
        struct Table: Decodable {
            var label: String
            var id: String
            var sectorsize: Int64?
            var partitions: [Entry]
        }
        struct Entry: Decodable {
            var node: String
            var start: Int64
            var size: Int64
            var type: String
            var uuid: String?
            var name: String?
        }
        var partitiontable: Table

        static func of(_ path: String) throws -> Table {
            let json = try Shell.check(["sfdisk", "--json", path])
            return try JSONDecoder().decode(SfdiskDump.self, from: Data(json.utf8)).partitiontable
        }
    }

    /// Checks every partition against `sfdisk --json`.
    func expectMatchesSfdisk(_ table: PartitionTable, path: String) throws {
        let reference = try SfdiskDump.of(path)
        let sector = reference.sectorsize ?? 512
        #expect(table.partitions.count == reference.partitions.count)
        for entry in reference.partitions {
            let number = try #require(Int(entry.node.dropFirst(path.count)))
            let partition = try #require(table.partitions.first { $0.number == number })
            #expect(partition.startOffset == entry.start * sector)
            #expect(partition.byteCount == entry.size * sector)
            #expect(partition.range == (entry.start * sector)..<((entry.start + entry.size) * sector))
            #expect(partition.type?.lowercased() == entry.type.lowercased())
            if let uuid = entry.uuid { #expect(partition.uuid?.lowercased() == uuid.lowercased()) }
            #expect(partition.name == entry.name)
        }
    }

    // MARK: - GPT

    @Test func readsAGPTDiskLikeSfdisk() async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeGPTDisk(in: dir)
            let table = try PartitionTable.read(path)
            #expect(table.type == "gpt")
            #expect(table.id?.lowercased() == Self.diskID.lowercased())
            #expect(table.partitions.map(\.number) == [1, 2, 3])
            #expect(table.partitions.map(\.name) == ["alpha", "beta", "gamma"])
            #expect(table.partitions.map(\.startOffset) == [1 << 20, 3 << 20, 7 << 20])
            #expect(table.partitions.map(\.byteCount) == [2 << 20, 4 << 20, 3 << 20])
            try expectMatchesSfdisk(table, path: path)
        }
    }

    @Test func probesTheFileSystemInsideEachPartition() async throws {
        try await withTemporaryDirectory { dir in
            let table = try PartitionTable.read(try Self.makeGPTDisk(in: dir))
            let beta = table.partitions[1]
            #expect(beta.fileSystem?.type == "ext4")
            #expect(beta.fileSystem?.label == "mylabel")
            #expect(beta.fileSystem?.uuid == Self.filesystemUUID)
            #expect(table.partitions[0].fileSystem == nil)
            #expect(table.partitions[2].fileSystem == nil)
        }
    }

    @Test(arguments: [
        ("PARTLABEL=alpha", 1),
        ("PARTLABEL=beta", 2),
        ("PARTLABEL=gamma", 3),
        ("PARTUUID=AAAAAAAA-0000-4000-8000-000000000002", 2),
        ("PARTUUID=aaaaaaaa-0000-4000-8000-000000000003", 3),
        ("LABEL=mylabel", 2),
        ("UUID=12345678-9abc-4def-8123-456789abcdef", 2),
        ("UUID=12345678-9ABC-4DEF-8123-456789ABCDEF", 2),
        ("1", 1),
        ("3", 3),
    ])
    func findsAPartitionByTag(tag text: String, number: Int) async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeGPTDisk(in: dir)
            let table = try PartitionTable.read(path)
            let tag = try #require(DeviceTag(parsing: text))
            let partition = try table.partition(tag, disk: path)
            #expect(partition.number == number)
            #expect(partition.matches(tag))
        }
    }

    @Test(arguments: [
        "PARTLABEL=delta", "PARTLABEL=Beta", "LABEL=otherlabel", "LABEL=beta",
        "UUID=12345678-9abc-4def-8123-000000000000", "PARTUUID=AAAAAAAA-0000-4000-8000-000000000009", "4",
    ])
    func aTagNamingNoPartitionThrowsDeviceNotFound(tag text: String) async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeGPTDisk(in: dir)
            let table = try PartitionTable.read(path)
            let tag = try #require(DeviceTag(parsing: text))
            expectFerryError(.deviceNotFound) { try table.partition(tag, disk: path) }
        }
    }

    @Test func aTagNamingTwoPartitionsThrowsConfigurationInvalid() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/twins.img"
            try makeFile(path, size: 8 << 20)
            try Self.sfdisk(
                path,
                script: """
                    label: gpt
                    start=2048, size=2MiB, type=\(Self.linuxType), name="twin"
                    size=2MiB, type=\(Self.linuxType), name="twin"

                    """, in: dir)
            let table = try PartitionTable.read(path)
            #expect(table.partitions.count == 2)
            expectFerryError(.configurationInvalid) { try table.partition(.partitionLabel("twin"), disk: path) }
            #expect(try table.partition(.number(2), disk: path).name == "twin")
        }
    }

    // MARK: - MBR

    /// A 16 MiB MBR disk: two primaries, an extended partition with a logical one, and a
    /// fourth primary; ext4 `mbrlabel` in the logical partition.
    static func makeMBRDisk(in dir: String) throws -> String {
        let path = "\(dir)/mbr.img"
        try makeFile(path, size: 16 << 20)
        try sfdisk(
            path,
            script: """
                label: dos
                label-id: 0x1234abcd
                unit: sectors
                start=2048, size=4MiB, type=83
                size=2MiB, type=c
                size=6MiB, type=5
                size=2MiB, type=83
                size=2MiB, type=83

                """, in: dir)
        let reference = try SfdiskDump.of(path)
        let logical = try #require(reference.partitions.first { $0.node == path + "5" })
        try Shell.check([
            "mkfs.ext4", "-q", "-F", "-L", "mbrlabel", "-E", "offset=\(logical.start * 512)", path,
            "\(logical.size / 2)k",
        ])
        return path
    }

    @Test func readsAnMBRDiskLikeSfdisk() async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeMBRDisk(in: dir)
            let table = try PartitionTable.read(path)
            #expect(table.type == "dos")
            #expect(table.id == "1234abcd")
            #expect(table.partitions.map(\.number).sorted() == [1, 2, 3, 4, 5])
            #expect(table.partitions.allSatisfy { $0.name == nil })
            try expectMatchesSfdisk(table, path: path)
            let first = try table.partition(.number(1), disk: path)
            #expect(first.startOffset == 1 << 20)
            #expect(first.byteCount == 4 << 20)
            #expect(first.type == "83")
            #expect(first.uuid == "1234abcd-01")
        }
    }

    @Test(arguments: [
        ("PARTUUID=1234abcd-02", 2),
        ("PARTUUID=1234ABCD-05", 5),
        ("LABEL=mbrlabel", 5),
        ("4", 4),
    ])
    func findsAnMBRPartitionByTag(tag text: String, number: Int) async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeMBRDisk(in: dir)
            let table = try PartitionTable.read(path)
            let partition = try table.partition(try #require(DeviceTag(parsing: text)), disk: path)
            #expect(partition.number == number)
        }
    }

    @Test func anMBRDiskHasNoPartitionLabels() async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeMBRDisk(in: dir)
            let table = try PartitionTable.read(path)
            expectFerryError(.deviceNotFound) { try table.partition(.partitionLabel("mbrlabel"), disk: path) }
        }
    }

    // MARK: - No partition table

    @Test func aFileWithoutAPartitionTableThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/zeros.img", size: 4 << 20)
            expectFerryError(.deviceNotFound) { try PartitionTable.read("\(dir)/zeros.img") }
            try makeFile("\(dir)/noise.img", bytes: seededBytes(count: 1 << 20, seed: 51))
            expectFerryError(.deviceNotFound) { try PartitionTable.read("\(dir)/noise.img") }
            // A bare file system is not a partitioned disk either.
            try makeFile("\(dir)/fs.img", size: 4 << 20)
            try Shell.check(["mkfs.ext4", "-q", "-F", "-L", "bare", "\(dir)/fs.img"])
            expectFerryError(.deviceNotFound) { try PartitionTable.read("\(dir)/fs.img") }
            try makeFile("\(dir)/empty.img")
            expectFerryError(.deviceNotFound) { try PartitionTable.read("\(dir)/empty.img") }
        }
    }

    @Test func aMissingFileThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.deviceNotFound) { try PartitionTable.read("\(dir)/missing.img") }
        }
    }

    @Test func readsFromAnOpenedDevice() async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeGPTDisk(in: dir)
            let device = try BlockDevice.openForReading(path)
            let table = try PartitionTable.read(device)
            #expect(table.partitions.map(\.name) == ["alpha", "beta", "gamma"])
            // The device stays usable.
            #expect(device.byteCount == 12 << 20)
            try device.close()
        }
    }

    // MARK: - File systems

    @Test func probesAWholeFileSystemImage() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/fs.img"
            try makeFile(path, size: 4 << 20)
            try Shell.check(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-U", Self.filesystemUUID, path])
            let identity = FileSystemIdentity.probe(try BlockDevice.openForReading(path))
            #expect(identity?.type == "ext4")
            #expect(identity?.label == "rootfs")
            #expect(identity?.uuid == Self.filesystemUUID)

            try makeFile("\(dir)/zeros.img", size: 1 << 20)
            #expect(FileSystemIdentity.probe(try BlockDevice.openForReading("\(dir)/zeros.img")) == nil)
        }
    }

    @Test func probesAFileSystemThroughAWindow() async throws {
        try await withTemporaryDirectory { dir in
            let path = try Self.makeGPTDisk(in: dir)
            let beta = try BlockDevice.openForReading(path, window: Self.betaOffset..<(Self.betaOffset + (4 << 20)))
            #expect(FileSystemIdentity.probe(beta)?.label == "mylabel")
            let alpha = try BlockDevice.openForReading(path, window: (1 << 20)..<(3 << 20))
            #expect(FileSystemIdentity.probe(alpha) == nil)
        }
    }

    // MARK: - DeviceTag

    @Test(
        arguments: [
            ("PARTLABEL=rootfs_a", DeviceTag.partitionLabel("rootfs_a")),
            ("PARTUUID=FE77E000-0000-4000-8000-000000000002", .partitionUUID("FE77E000-0000-4000-8000-000000000002")),
            ("PARTUUID=1234abcd-05", .partitionUUID("1234abcd-05")),
            ("LABEL=rootfs", .label("rootfs")),
            ("LABEL=a=b", .label("a=b")),
            ("LABEL=with space", .label("with space")),
            ("UUID=fe77e000-0000-4000-8000-0000000000a1", .uuid("fe77e000-0000-4000-8000-0000000000a1")),
            ("1", .number(1)),
            ("12", .number(12)),
            ("PARTLABEL=", nil),
            ("LABEL", nil),
            ("label=rootfs", nil),
            ("PARTNAME=rootfs", nil),
            ("=rootfs", nil),
            ("/dev/mmcblk0p2", nil),
            ("rootfs_a.img", nil),
            ("0", nil),
            ("-1", nil),
            ("", nil),
        ] as [(String, DeviceTag?)])
    func deviceTagParsing(text: String, expected: DeviceTag?) {
        #expect(DeviceTag(parsing: text) == expected)
    }

    @Test(arguments: ["PARTLABEL=rootfs_a", "PARTUUID=abc", "LABEL=x", "UUID=y"])
    func deviceTagDescriptionRoundTrips(text: String) throws {
        let tag = try #require(DeviceTag(parsing: text))
        #expect(tag.description == text)
        #expect(DeviceTag(parsing: tag.description) == tag)
    }
}
