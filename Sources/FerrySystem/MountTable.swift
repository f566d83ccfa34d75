/// The mounts of this process's mount namespace, from `/proc/self/mountinfo`.
///
/// Used to refuse writing to a mounted device: a block device is mounted when a mount's device
/// number (`major:minor`) equals the device's; an image file is mounted when a loop device backed
/// by it is (see `LoopDevice.devices(backing:)`).
public struct MountTable: Sendable {
    public struct Mount: Sendable, Equatable {
        /// The device number of the mounted file system (`major:minor`, field 3).
        public var major: UInt32
        public var minor: UInt32
        /// Where it is mounted (field 5, octal escapes decoded).
        public var mountPoint: String
        /// The mount source (first field after the separator), e.g. `/dev/mmcblk0p2`.
        public var source: String
        public var fileSystemType: String
        /// Whether the file system itself is read-only (the super options after the separator
        /// hold `ro`): no mount of it, bind mounts included, can write to the device.
        public var isReadOnly: Bool = false
    }

    public var mounts: [Mount]

    public init(mounts: [Mount]) { self.mounts = mounts }

    /// Reads the current mount table.
    /// - Throws: `.deviceNotFound` when `/proc/self/mountinfo` is missing (no /proc: Ferry refuses to
    ///   guess), `.io`/`.permissionDenied` when it cannot be read.
    public static func current(path: String = "/proc/self/mountinfo") throws(FerryError) -> MountTable {
        try MountTable(parsing: TextFile.read(path))
    }

    /// Parses the text of a mountinfo file (proc(5)).
    public init(parsing text: String) {
        var mounts: [Mount] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 7, let separator = fields.firstIndex(of: "-"), separator + 2 < fields.count else {
                continue
            }
            let numbers = fields[2].split(separator: ":")
            guard numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) else { continue }
            mounts.append(
                Mount(
                    major: major, minor: minor, mountPoint: Self.unescape(fields[4]),
                    source: Self.unescape(fields[separator + 2]), fileSystemType: String(fields[separator + 1]),
                    isReadOnly: separator + 3 < fields.count
                        && fields[separator + 3].split(separator: ",").contains("ro")))
        }
        self.mounts = mounts
    }

    /// The mounts whose file system lives on the device `major:minor`.
    public func mounts(ofDevice major: UInt32, _ minor: UInt32) -> [Mount] {
        mounts.filter { $0.major == major && $0.minor == minor }
    }

    /// The mount of `/`, if any.
    public var root: Mount? { mounts.last { $0.mountPoint == "/" } }

    /// Decodes the `\040`-style octal escapes the kernel uses for spaces, tabs, newlines, backslashes.
    static func unescape(_ field: Substring) -> String {
        guard field.contains("\\") else { return String(field) }
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
                let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
