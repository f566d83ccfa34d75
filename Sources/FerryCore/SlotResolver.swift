import FerrySystem
import SystemPackage

/// A configured slot located on the machine: which device or file region it is, and its size.
public struct ResolvedSlot: Sendable {
    public enum Location: Sendable, Equatable {
        /// A block device node (found by path or by tag).
        case blockDevice(path: String, deviceNumber: UInt64)
        /// A whole regular file.
        case imageFile(path: String)
        /// A partition of a disk image file.
        case diskPartition(disk: String, partition: Partition)
    }

    public var slot: SlotConfiguration
    public var location: Location
    public var byteCount: Int64

    /// A short human description of where the slot is.
    public var locationDescription: String {
        switch location {
        case .blockDevice(let path, _): path
        case .imageFile(let path): path
        case .diskPartition(let disk, let partition): "\(disk) partition \(partition.number)"
        }
    }
}

/// Finds every slot's device and checks it against the configuration: exists, is large enough,
/// and is not shared with another slot. Read-only: nothing is attached or opened for writing.
public struct SlotResolver {
    private var partitionTables: [String: PartitionTable] = [:]

    public init() {}

    /// Resolves every slot of `configuration`.
    /// - Throws: `.deviceNotFound` (missing device, partition or tag), `.deviceTooSmall` (smaller than
    ///   declared), `.configurationInvalid` (two slots on one device or overlapping partitions).
    public mutating func resolveAll(_ configuration: SystemConfiguration) throws(FerryError) -> [ResolvedSlot] {
        var resolved: [ResolvedSlot] = []
        for slot in configuration.slots {
            let item = try resolve(slot, configuration: configuration)
            if let other = resolved.first(where: { $0.overlaps(item) }) {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(configuration.path): slots \(other.slot.name) and \(slot.name) are the same device (\(item.locationDescription))"
                )
            }
            resolved.append(item)
        }
        return resolved
    }

    /// Resolves one slot.
    public mutating func resolve(_ slot: SlotConfiguration, configuration: SystemConfiguration) throws(FerryError)
        -> ResolvedSlot
    {
        let key = "\(configuration.path): slots.\(slot.name)"
        let location: ResolvedSlot.Location
        let size: Int64
        switch slot.device {
        case .path(let path):
            (location, size) = try Self.locate(path: path, key: key)
        case .tag(let tag):
            guard let path = DeviceLookup.device(for: tag) else {
                throw FerryError(code: .deviceNotFound, message: "\(key): no block device has \(tag)")
            }
            (location, size) = try Self.locate(path: path, key: key)
        case .diskPartition(let disk, let tag):
            let table: PartitionTable
            if let cached = partitionTables[disk] {
                table = cached
            } else {
                do { table = try PartitionTable.read(disk) } catch { throw error.prefixed(key) }
                partitionTables[disk] = table
            }
            let partition: Partition
            do { partition = try table.partition(tag, disk: disk) } catch { throw error.prefixed(key) }
            location = .diskPartition(disk: disk, partition: partition)
            size = partition.byteCount
        }
        if let declared = slot.declaredSize, size < declared {
            throw FerryError(
                code: .deviceTooSmall,
                message: "\(key): '\(slot.device)' is \(size) bytes, smaller than the declared size \(declared)")
        }
        return ResolvedSlot(slot: slot, location: location, byteCount: size)
    }

    /// A path's kind and size: block devices by their sysfs size (no open, no privileges needed).
    static func locate(path: String, key: String) throws(FerryError) -> (ResolvedSlot.Location, Int64) {
        let status: Stat
        do { status = try FilePath(path).stat() } catch {
            if error == .noSuchFileOrDirectory {
                throw FerryError(
                    code: .deviceNotFound, message: "\(key): device '\(path)' does not exist", cause: error)
            }
            throw FerryError.syscall("\(key): inspecting", errno: error, path: path)
        }
        switch status.type {
        case .blockSpecial:
            let number = UInt64(status.specialDeviceID.rawValue)
            let (major, minor) = deviceNumberParts(number)
            let sectors = TextFile.attribute("/sys/dev/block/\(major):\(minor)/size").flatMap(Int64.init)
            let size: Int64
            if let sectors {
                size = sectors * 512
            } else {
                let device = try BlockDevice.openForReading(path)
                size = device.byteCount
                try? device.close()
            }
            return (.blockDevice(path: path, deviceNumber: number), size)
        case .regular:
            return (.imageFile(path: path), status.size)
        default:
            throw FerryError(
                code: .deviceNotFound, message: "\(key): '\(path)' is neither a block device nor a regular file")
        }
    }
}

extension ResolvedSlot {
    /// Whether two slots share storage (same device, same file, or overlapping partitions of one disk).
    func overlaps(_ other: ResolvedSlot) -> Bool {
        switch (location, other.location) {
        case (.blockDevice(_, let a), .blockDevice(_, let b)):
            return a == b
        case (.imageFile(let a), .imageFile(let b)):
            return Self.sameFile(a, b)
        case (.diskPartition(let diskA, let a), .diskPartition(let diskB, let b)):
            return Self.sameFile(diskA, diskB) && a.range.overlaps(b.range)
        case (.imageFile(let file), .diskPartition(let disk, _)), (.diskPartition(let disk, _), .imageFile(let file)):
            return Self.sameFile(file, disk)
        default:
            return false
        }
    }

    static func sameFile(_ a: String, _ b: String) -> Bool {
        guard let x = try? FilePath(a).stat(), let y = try? FilePath(b).stat() else { return a == b }
        return x.deviceID == y.deviceID && x.inode == y.inode
    }
}
