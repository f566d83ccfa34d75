import FerrySystem
import FerryTestSupport
import Testing

/// Reads `count` bytes at `offset` of `device`.
func readBytes(_ device: some BlockTarget, at offset: Int64, count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    try bytes.withUnsafeMutableBytes { try device.read(into: $0, at: offset) }
    return bytes
}

/// Writes `bytes` at `offset` of `device`.
func writeBytes(_ bytes: [UInt8], to device: some BlockTarget, at offset: Int64) throws {
    try bytes.withUnsafeBytes { try device.write($0, at: offset) }
}

/// The names in a directory (without `.` and `..`), sorted.
func directoryEntries(_ path: String) throws -> [String] {
    try Shell.check(["ls", "-A", path]).split(separator: "\n").map(String.init).sorted()
}
