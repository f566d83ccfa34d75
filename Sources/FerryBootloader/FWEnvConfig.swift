import FerrySystem

/// Where one copy of a U-Boot environment lives.
public struct UBootEnvironmentLocation: Sendable, Equatable {
    /// A block device or a file.
    public var device: String
    /// Byte offset; negative counts from the end of the device or file.
    public var offset: Int64
    /// Bytes of the copy (`CONFIG_ENV_SIZE`).
    public var size: Int
    /// Erase-block size, if given (informational: Ferry does not write MTD devices).
    public var sectorSize: Int?

    public init(device: String, offset: Int64, size: Int, sectorSize: Int? = nil) {
        self.device = device
        self.offset = offset
        self.size = size
        self.sectorSize = sectorSize
    }
}

/// An `fw_env.config` (the libubootenv/`fw_printenv` legacy configuration): one line per copy,
/// two lines mean a redundant environment (FORMATS.md §1).
///
///     # device      offset     size     [sector size] [sectors] [disable lock]
///     /dev/mmcblk0  0xC0000    0x20000
///     /dev/mmcblk0  -0x20000   0x20000
public struct FWEnvConfig: Sendable, Equatable {
    public var locations: [UBootEnvironmentLocation]

    public var isRedundant: Bool { locations.count == 2 }

    /// Reads and parses a file; relative device paths resolve against the file's folder.
    /// - Throws: `.bootEnvironmentInvalid` naming the file and line.
    public static func load(_ path: String) throws(FerryError) -> FWEnvConfig {
        let text: String
        do { text = try TextFile.read(path, limit: 64 << 10) } catch {
            throw FerryError(
                code: .bootEnvironmentInvalid,
                message: "cannot read the U-Boot environment configuration: \(error.message)",
                cause: error)
        }
        let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        return try parse(text, name: path, directory: folder.isEmpty ? "/" : folder)
    }

    /// Parses the text of an `fw_env.config`.
    public static func parse(_ text: String, name: String, directory: String) throws(FerryError) -> FWEnvConfig {
        var locations: [UBootEnvironmentLocation] = []
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty { continue }
            func invalid(_ problem: String) -> FerryError {
                FerryError(code: .bootEnvironmentInvalid, message: "\(name):\(number + 1): \(problem)")
            }
            guard fields.count >= 3, fields.count <= 6 else {
                throw invalid(
                    "expected 'device offset size [sector-size [sectors [disable-lock]]]', got \(fields.count) fields")
            }
            var device = String(fields[0])
            if device.hasPrefix("/dev/mtd") || device.hasPrefix("/dev/ubi") || device.contains(":") {
                throw FerryError(
                    code: .bootEnvironmentUnsupported,
                    message: "\(name):\(number + 1): MTD/UBI environment '\(device)' is not supported by Ferry yet")
            }
            if !device.hasPrefix("/") { device = "\(directory)/\(device)" }
            guard let offset = parseNumber(fields[1]) else { throw invalid("offset '\(fields[1])' is not a number") }
            guard let size = parseNumber(fields[2]), size > 5, size <= 16 << 20 else {
                throw invalid("size '\(fields[2])' is not a number between 6 and 16 MiB")
            }
            var sector: Int? = nil
            if fields.count >= 4 {
                guard let value = parseNumber(fields[3]), value >= 0 else {
                    throw invalid("sector size '\(fields[3])' is not a number")
                }
                sector = value == 0 ? nil : Int(value)
            }
            if fields.count >= 5 {
                guard parseNumber(fields[4]) != nil else {
                    throw invalid("sector count '\(fields[4])' is not a number")
                }
            }
            locations.append(
                UBootEnvironmentLocation(device: device, offset: offset, size: Int(size), sectorSize: sector))
        }
        guard !locations.isEmpty else {
            throw FerryError(
                code: .bootEnvironmentInvalid, message: "\(name): no environment location (expected one or two lines)")
        }
        guard locations.count <= 2 else {
            throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): more than two environment copies")
        }
        if locations.count == 2, locations[0].size != locations[1].size {
            throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): the two copies have different sizes")
        }
        if locations.count == 2, locations[0].device == locations[1].device, locations[0].offset == locations[1].offset
        {
            throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): both copies are at the same place")
        }
        return FWEnvConfig(locations: locations)
    }

    /// `0x…` hex, decimal, or either with a leading `-`.
    static func parseNumber(_ text: Substring) -> Int64? {
        var digits = text
        var negative = false
        if digits.hasPrefix("-") {
            negative = true
            digits = digits.dropFirst()
        }
        let isHex = digits.hasPrefix("0x") || digits.hasPrefix("0X")
        if isHex { digits = digits.dropFirst(2) }
        // Digits only: Int64's parser would also take a second sign ("--0x…", "-0x-8…"), and the
        // negation of its -2^63 traps.
        guard let first = digits.first, first.isHexDigit else { return nil }
        guard let value = isHex ? Int64(digits, radix: 16) : Int64(digits) else { return nil }
        return negative ? -value : value
    }
}
