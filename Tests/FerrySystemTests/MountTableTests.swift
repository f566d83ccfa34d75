import FerrySystem
import FerryTestSupport
import Testing

/// Parsing `/proc/self/mountinfo` (proc(5)).
@Suite struct MountTableTests {
    /// Optional fields (`shared:`, `master:`, `propagate_from:`) before the `-`, escaped spaces
    /// and tabs, a bind mount of the same device, and lines the parser must skip.
    static let sample = """
        22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
        25 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
        31 22 8:3 / /mnt/my\\040disk rw,relatime shared:20 master:3 propagate_from:2 - ext4 /dev/sda3 rw
        32 22 7:1 / /media/usb\\011stick rw,relatime - vfat /dev/disk\\040one rw,fmask=0022
        40 22 8:3 /sub /srv/bind rw,relatime - ext4 /dev/sda3 rw
        41 22 259:12 / /back\\134slash rw - xfs /dev/nvme0n1p4 rw
        42 22 179:2 / /ro ro,relatime - ext4 /dev/mmcblk0p2 ro,noload
        not a mountinfo line
        50 22 x:y / /bad rw - ext4 /dev/sdz1 rw
        51 22 8:9 / /noseparator rw shared:9 ext4 /dev/sda9 rw
        52 22 8:10 / /truncated rw -
        """

    @Test func parsesEveryWellFormedLineAndSkipsTheRest() {
        let table = MountTable(parsing: Self.sample)
        #expect(
            table.mounts.map(\.mountPoint) == [
                "/", "/proc", "/mnt/my disk", "/media/usb\tstick", "/srv/bind", "/back\\slash", "/ro",
            ])
    }

    @Test func aReadOnlyFileSystemIsToldBySuperOptions() {
        let table = MountTable(parsing: Self.sample)
        #expect(table.mounts.map(\.isReadOnly) == [false, false, false, false, false, false, true])
    }

    @Test func readsDeviceNumbersSourcesAndTypes() throws {
        let table = MountTable(parsing: Self.sample)
        let first = try #require(table.mounts.first)
        #expect(first.major == 8 && first.minor == 2)
        #expect(first.mountPoint == "/")
        #expect(first.source == "/dev/sda2")
        #expect(first.fileSystemType == "ext4")
        let proc = table.mounts[1]
        #expect(proc.major == 0 && proc.minor == 23)
        #expect(proc.source == "proc")
        #expect(proc.fileSystemType == "proc")
        let nvme = table.mounts[5]
        #expect(nvme.major == 259 && nvme.minor == 12)
        #expect(nvme.fileSystemType == "xfs")
    }

    @Test func aLineWithOptionalFieldsIsReadFromTheSeparator() {
        let table = MountTable(parsing: Self.sample)
        let mount = table.mounts[2]
        #expect(mount.major == 8 && mount.minor == 3)
        #expect(mount.mountPoint == "/mnt/my disk")
        #expect(mount.source == "/dev/sda3")
        #expect(mount.fileSystemType == "ext4")
    }

    @Test func escapedSourcesAreDecodedToo() {
        let table = MountTable(parsing: Self.sample)
        #expect(table.mounts[3].source == "/dev/disk one")
        #expect(table.mounts[3].fileSystemType == "vfat")
    }

    @Test(arguments: [
        (UInt32(8), UInt32(3), ["/mnt/my disk", "/srv/bind"]),
        (8, 2, ["/"]),
        (7, 1, ["/media/usb\tstick"]),
        (259, 12, ["/back\\slash"]),
        (8, 9, []),
        (3, 8, []),
    ])
    func mountsOfADeviceAreFoundByNumber(major: UInt32, minor: UInt32, mountPoints: [String]) {
        let table = MountTable(parsing: Self.sample)
        #expect(table.mounts(ofDevice: major, minor).map(\.mountPoint) == mountPoints)
    }

    @Test func rootIsTheLastMountOnSlash() {
        #expect(MountTable(parsing: Self.sample).root?.source == "/dev/sda2")
        let overmounted = Self.sample + "\n60 22 0:40 / / rw - overlay overlay rw,lowerdir=/x\n"
        let root = MountTable(parsing: overmounted).root
        #expect(root?.fileSystemType == "overlay")
        #expect(root?.major == 0 && root?.minor == 40)
        #expect(MountTable(parsing: "25 22 0:23 / /proc rw - proc proc rw").root == nil)
        #expect(MountTable(parsing: "").mounts.isEmpty)
    }

    @Test func theInitializerKeepsTheGivenMounts() {
        let mounts = MountTable(parsing: Self.sample).mounts
        #expect(MountTable(mounts: Array(mounts.prefix(2))).mounts == Array(mounts.prefix(2)))
        #expect(MountTable(mounts: []).root == nil)
    }

    @Test func currentReadsTheMountTableOfThisProcess() throws {
        let table = try MountTable.current()
        #expect(!table.mounts.isEmpty)
        #expect(table.root != nil)
        #expect(table.mounts.contains { $0.fileSystemType == "proc" })
    }

    @Test func currentReadsAGivenFile() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/mountinfo", bytes: Array(Self.sample.utf8))
            let table = try MountTable.current(path: "\(dir)/mountinfo")
            #expect(table.mounts == MountTable(parsing: Self.sample).mounts)
            #expect(throws: FerryError.self) { try MountTable.current(path: "\(dir)/missing") }
        }
    }
}
