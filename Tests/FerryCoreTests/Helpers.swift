import FerryCore
import FerrySystem
import FerryTestSupport
import Testing

/// One slot of a test configuration.
struct SlotSpec: Sendable {
    var name: String
    var slotClass: String
    var bootname: String
    /// The location members: `"device": "rootfs_a.img"` or `"disk": "disk.img", "partition": "…"`.
    var location: String
    var size: Int64?

    /// A slot on a file (or device path, or tag) given by `device`.
    static func device(
        _ name: String, _ slotClass: String, _ bootname: String, _ device: String, size: Int64? = nil
    )
        -> SlotSpec
    {
        SlotSpec(name: name, slotClass: slotClass, bootname: bootname, location: #""device": "\#(device)""#, size: size)
    }

    /// A slot on a partition of a disk image.
    static func partition(
        _ name: String, _ slotClass: String, _ bootname: String, disk: String = "disk.img", _ partition: String,
        size: Int64? = nil
    ) -> SlotSpec {
        SlotSpec(
            name: name, slotClass: slotClass, bootname: bootname,
            location: #""disk": "\#(disk)", "partition": "\#(partition)""#, size: size)
    }

    var json: String {
        let sizeMember = size.map { #", "size": \#($0)"# } ?? ""
        return #""\#(name)": { "class": "\#(slotClass)", "bootname": "\#(bootname)", \#(location)\#(sizeMember) }"#
    }
}

/// The text of a system configuration with the given slots (paths relative to its folder).
func configurationText(
    sandbox: Bool = false, slots: [SlotSpec],
    bootloader: String = #"{ "type": "uboot", "fwEnvConfig": "fw_env.config" }"#, extra: [String] = []
) -> String {
    var members = [
        #""formatVersion": 1"#, #""compatible": "test-board""#, #""sandbox": \#(sandbox)"#,
        #""stateDirectory": "state""#, #""bootloader": \#(bootloader)"#,
    ]
    members += extra
    members.append("\"slots\": {\n    " + slots.map(\.json).joined(separator: ",\n    ") + "\n  }")
    return "{\n  " + members.joined(separator: ",\n  ") + "\n}\n"
}

/// Writes a configuration file into `dir` and loads it.
@discardableResult
func writeConfiguration(_ text: String, in dir: String, name: String = "system.json") throws -> SystemConfiguration {
    let path = "\(dir)/\(name)"
    try makeFile(path, bytes: Array(text.utf8))
    return try SystemConfiguration.load(path)
}

/// A device whose slots are plain image files: `rootfs_{a,b}.img` (1 MiB, declared) and
/// `modem_{a,b}.img` (256 KiB) in `dir`.
enum ImageFileDevice {
    static let rootfsSize: Int64 = 1 << 20
    static let modemSize: Int64 = 256 << 10

    static let slots: [SlotSpec] = [
        .device("rootfs_a", "rootfs", "A", "rootfs_a.img", size: rootfsSize),
        .device("rootfs_b", "rootfs", "B", "rootfs_b.img", size: rootfsSize),
        .device("modem_a", "modem", "A", "modem_a.img"),
        .device("modem_b", "modem", "B", "modem_b.img"),
    ]

    /// Creates the image files (seeded, so writes are visible) and the configuration.
    @discardableResult
    static func make(in dir: String, sandbox: Bool = false) throws -> SystemConfiguration {
        for (index, name) in ["rootfs_a", "rootfs_b"].enumerated() {
            try makeFile("\(dir)/\(name).img", bytes: seededBytes(count: Int(rootfsSize), seed: UInt64(100 + index)))
        }
        for (index, name) in ["modem_a", "modem_b"].enumerated() {
            try makeFile("\(dir)/\(name).img", bytes: seededBytes(count: Int(modemSize), seed: UInt64(200 + index)))
        }
        return try writeConfiguration(configurationText(sandbox: sandbox, slots: slots), in: dir)
    }
}

/// Reads `count` bytes at `offset` of `device`.
func readBytes(_ device: some BlockTarget, at offset: Int64, count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    try bytes.withUnsafeMutableBytes { try device.read(into: $0, at: offset) }
    return bytes
}
