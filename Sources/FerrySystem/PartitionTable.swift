internal import CBlkid
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A lookup key for a partition or file system: what a configuration's `device`/`partition` says.
public enum DeviceTag: Sendable, Equatable, CustomStringConvertible {
    /// GPT partition name.
    case partitionLabel(String)
    /// GPT partition GUID or MBR `<disk id>-<nn>`.
    case partitionUUID(String)
    /// File system label.
    case label(String)
    /// File system UUID.
    case uuid(String)
    /// Partition number (1-based), only meaningful inside one disk.
    case number(Int)

    /// Parses `PARTLABEL=`, `PARTUUID=`, `LABEL=`, `UUID=` or a bare partition number; nil for anything else.
    public init?(parsing text: String) {
        if let number = Int(text), number > 0 {
            self = .number(number)
            return
        }
        guard let equals = text.firstIndex(of: "=") else { return nil }
        let value = String(text[text.index(after: equals)...])
        guard !value.isEmpty else { return nil }
        switch text[..<equals] {
        case "PARTLABEL": self = .partitionLabel(value)
        case "PARTUUID": self = .partitionUUID(value)
        case "LABEL": self = .label(value)
        case "UUID": self = .uuid(value)
        default: return nil
        }
    }

    /// The tag's name as blkid spells it (`PARTLABEL`, …).
    var tagName: String {
        switch self {
        case .partitionLabel: "PARTLABEL"
        case .partitionUUID: "PARTUUID"
        case .label: "LABEL"
        case .uuid: "UUID"
        case .number: "PARTN"
        }
    }

    var tagValue: String {
        switch self {
        case .partitionLabel(let v), .partitionUUID(let v), .label(let v), .uuid(let v): v
        case .number(let n): "\(n)"
        }
    }

    public var description: String { "\(tagName)=\(tagValue)" }
}

/// One partition of a disk, as read from its partition table by libblkid.
public struct Partition: Sendable, Equatable {
    /// 1-based partition number.
    public var number: Int
    /// Byte offset of the partition from the start of the disk.
    public var startOffset: Int64
    public var byteCount: Int64
    /// GPT partition name (PARTLABEL), if any.
    public var name: String?
    /// PARTUUID.
    public var uuid: String?
    /// Partition type (GPT type GUID or MBR type as hex).
    public var type: String?
    /// File system found inside the partition, if any.
    public var fileSystem: FileSystemIdentity?

    /// The byte range of the partition on its disk.
    public var range: Range<Int64> { startOffset..<(startOffset + byteCount) }

    /// Whether `tag` names this partition.
    public func matches(_ tag: DeviceTag) -> Bool {
        switch tag {
        case .partitionLabel(let value): name == value
        case .partitionUUID(let value): uuid?.lowercased() == value.lowercased()
        case .label(let value): fileSystem?.label == value
        case .uuid(let value): fileSystem?.uuid?.lowercased() == value.lowercased()
        case .number(let value): number == value
        }
    }
}

/// A file system's identity as probed from its superblock.
public struct FileSystemIdentity: Sendable, Equatable {
    public var type: String?
    public var label: String?
    public var uuid: String?
}

/// The partition table of a disk (a block device or a disk image file), read with libblkid.
///
/// Ferry reads partition tables itself instead of relying on the kernel's partition scan: some
/// kernels are built without partition-table parsers, and image files have no kernel view at all.
public struct PartitionTable: Sendable {
    /// `gpt` or `dos`.
    public var type: String
    /// Disk GUID (GPT) or disk identifier (MBR).
    public var id: String?
    public var partitions: [Partition]

    /// Reads the partition table of `path`, and the file system identity of each partition.
    ///
    /// - Throws: `.deviceNotFound` when the file is missing or has no partition table, `.io` on read errors.
    public static func read(_ path: String) throws(FerryError) -> PartitionTable {
        let device = try BlockDevice.openForReading(path)
        defer { try? device.close() }
        return try read(device)
    }

    /// Reads the partition table of an opened disk.
    public static func read(_ disk: BlockDevice) throws(FerryError) -> PartitionTable {
        guard let probe = BlkidProbe(device: disk, window: 0..<disk.byteCount) else {
            throw FerryError(code: .io, message: "libblkid could not probe '\(disk.path)'")
        }
        blkid_probe_enable_superblocks(probe.handle, 0)
        blkid_probe_enable_partitions(probe.handle, 1)
        blkid_probe_set_partitions_flags(probe.handle, CBlkid_PARTS_ENTRY_DETAILS)
        let result = blkid_do_safeprobe(probe.handle)
        guard result >= 0, let list = blkid_probe_get_partitions(probe.handle),
            let table = blkid_partlist_get_table(list)
        else {
            throw FerryError(
                code: .deviceNotFound,
                message: "'\(disk.path)' has no partition table that libblkid can read (expected GPT or MBR)")
        }
        let type = blkid_parttable_get_type(table).map { String(cString: $0) } ?? "unknown"
        let id = blkid_parttable_get_id(table).map { String(cString: $0) }
        var partitions: [Partition] = []
        let count = blkid_partlist_numof_partitions(list)
        for index in 0..<max(count, 0) {
            guard let entry = blkid_partlist_get_partition(list, index) else { continue }
            // libblkid counts in 512-byte sectors whatever the device's sector size.
            let start = Int64(blkid_partition_get_start(entry)) * 512
            let size = Int64(blkid_partition_get_size(entry)) * 512
            let name = blkid_partition_get_name(entry).map { String(cString: $0) }
            partitions.append(
                Partition(
                    number: Int(blkid_partition_get_partno(entry)), startOffset: start, byteCount: size,
                    name: (name?.isEmpty ?? true) ? nil : name,
                    uuid: blkid_partition_get_uuid(entry).map { String(cString: $0) },
                    type: blkid_partition_get_type_string(entry).map { String(cString: $0) }
                        ?? String(blkid_partition_get_type(entry), radix: 16),
                    fileSystem: nil))
        }
        for index in partitions.indices where partitions[index].range.upperBound <= disk.byteCount {
            partitions[index].fileSystem = FileSystemIdentity.probe(disk, window: partitions[index].range)
        }
        return PartitionTable(type: type, id: id, partitions: partitions)
    }

    /// The one partition that `tag` names.
    /// - Throws: `.deviceNotFound` when none matches; `.configurationInvalid` when several do.
    public func partition(_ tag: DeviceTag, disk: String) throws(FerryError) -> Partition {
        let matches = partitions.filter { $0.matches(tag) }
        guard let first = matches.first else {
            throw FerryError(code: .deviceNotFound, message: "no partition \(tag) on '\(disk)'")
        }
        guard matches.count == 1 else {
            throw FerryError(
                code: .configurationInvalid,
                message: "\(tag) names \(matches.count) partitions on '\(disk)' (numbers \(matches.map(\.number)))")
        }
        return first
    }
}

extension FileSystemIdentity {
    /// Probes the file system superblock inside `window` of `device`; nil when none is recognized.
    static func probe(_ device: BlockDevice, window: Range<Int64>) -> FileSystemIdentity? {
        guard let probe = BlkidProbe(device: device, window: window) else { return nil }
        blkid_probe_enable_partitions(probe.handle, 0)
        blkid_probe_enable_superblocks(probe.handle, 1)
        blkid_probe_set_superblocks_flags(probe.handle, CBlkid_SUBLKS_LABEL_UUID_TYPE)
        guard blkid_do_safeprobe(probe.handle) == 0 else { return nil }
        let identity = FileSystemIdentity(
            type: probe.value("TYPE"), label: probe.value("LABEL"), uuid: probe.value("UUID"))
        return identity.type == nil && identity.label == nil && identity.uuid == nil ? nil : identity
    }

    /// Probes the file system of a whole device or file.
    public static func probe(_ device: BlockDevice) -> FileSystemIdentity? {
        probe(device, window: 0..<device.byteCount)
    }
}

/// Owns a `blkid_probe` over a window of an opened device (libblkid reads through our descriptor).
private final class BlkidProbe {
    let handle: OpaquePointer

    init?(device: BlockDevice, window: Range<Int64>) {
        guard let handle = blkid_new_probe() else { return nil }
        self.handle = handle
        let fd = device.rawDescriptor
        guard
            blkid_probe_set_device(
                handle, fd, device.windowOffset + window.lowerBound, Int64(window.upperBound - window.lowerBound)) == 0
        else {
            blkid_free_probe(handle)
            return nil
        }
    }

    deinit { blkid_free_probe(handle) }

    func value(_ name: String) -> String? {
        var data: UnsafePointer<CChar>? = nil
        var length = 0
        guard blkid_probe_lookup_value(handle, name, &data, &length) == 0, let data else { return nil }
        let text = String(cString: data)
        return text.isEmpty ? nil : text
    }
}

/// System-wide lookup of a tag (`PARTLABEL=`, `LABEL=`, …) among the block devices the kernel
/// lists in /proc/partitions, through libblkid (no udev needed).
public enum DeviceLookup {
    /// The device node `tag` names, or nil when no device carries it.
    public static func device(for tag: DeviceTag) -> String? {
        if case .number = tag { return nil }
        // A NULL cache makes libblkid probe devices directly instead of trusting a stale cache file.
        guard let result = blkid_evaluate_tag(tag.tagName, tag.tagValue, nil) else { return nil }
        defer { free(result) }
        return String(cString: result)
    }
}
