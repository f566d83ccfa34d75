import FerrySystem
import FerryXZ

/// The binary shape of a U-Boot environment copy (FORMATS.md §1).
///
/// A copy is `crc u32` + (`flags u8`, redundant only) + data area. The data area holds
/// `name=value\0…\0\0` and padding; the CRC-32 covers the whole data area, padding included.
public struct UBootEnvironmentFormat: Sendable, Equatable {
    public enum ByteOrder: String, Sendable { case little, big }
    /// How redundant copies say which one is current.
    public enum FlagScheme: String, Sendable {
        /// Each save writes the other copy with `flags + 1` (U-Boot's default; eMMC, files, NAND).
        case incremental
        /// The new copy gets 1 (active), then the old copy's flag byte is overwritten with 0
        /// (obsolete): the NOR scheme, where bits can be cleared without an erase.
        case boolean
    }

    /// Bytes per copy (`CONFIG_ENV_SIZE`).
    public var size: Int
    public var redundant: Bool
    public var byteOrder: ByteOrder
    public var flagScheme: FlagScheme

    public init(size: Int, redundant: Bool, byteOrder: ByteOrder = .little, flagScheme: FlagScheme = .incremental) {
        self.size = size
        self.redundant = redundant
        self.byteOrder = byteOrder
        self.flagScheme = flagScheme
    }

    public var headerSize: Int { redundant ? 5 : 4 }
    public var dataSize: Int { size - headerSize }
}

/// One decoded copy with a valid CRC.
public struct UBootEnvironmentCopy: Sendable, Equatable {
    /// The redundancy flag (nil for a single-copy environment).
    public var flags: UInt8?
    public var variables: [String: String]
    /// The byte that fills the data area after the variables (kept on rewrite).
    public var padByte: UInt8

    public init(flags: UInt8?, variables: [String: String], padByte: UInt8) {
        self.flags = flags
        self.variables = variables
        self.padByte = padByte
    }
}

/// Encodes and decodes U-Boot environment copies. Pure: no I/O.
public enum UBootEnvironmentCodec {
    /// Decodes one copy; nil when its CRC does not match (torn, erased or never written).
    /// - Throws: `.bootEnvironmentInvalid` when the CRC matches but the data is not `name=value` entries.
    public static func decode(_ bytes: [UInt8], format: UBootEnvironmentFormat, name: String) throws(FerryError)
        -> UBootEnvironmentCopy?
    {
        guard bytes.count == format.size, format.dataSize > 2 else { return nil }
        let stored =
            format.byteOrder == .little
            ? UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
            : UInt32(bytes[3]) | UInt32(bytes[2]) << 8 | UInt32(bytes[1]) << 16 | UInt32(bytes[0]) << 24
        let data = bytes[format.headerSize...]
        guard CRC32.checksum(data) == stored else { return nil }
        var variables: [String: String] = [:]
        var index = data.startIndex
        var padByte: UInt8 = 0
        while index < data.endIndex {
            guard let end = data[index...].firstIndex(of: 0) else {
                throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): a variable is not NUL-terminated")
            }
            if end == index {
                // Empty entry: the end of the list. The byte after it shows the padding.
                if end + 1 < data.endIndex { padByte = data[end + 1] }
                break
            }
            let entry = data[index..<end]
            guard let equals = entry.firstIndex(of: UInt8(ascii: "=")), equals > entry.startIndex else {
                throw FerryError(
                    code: .bootEnvironmentInvalid,
                    message: "\(name): entry '\(String(decoding: entry.prefix(40), as: UTF8.self))' is not name=value")
            }
            let key = String(decoding: entry[..<equals], as: UTF8.self)
            variables[key] = String(decoding: entry[(equals + 1)...], as: UTF8.self)
            index = end + 1
        }
        return UBootEnvironmentCopy(flags: format.redundant ? bytes[4] : nil, variables: variables, padByte: padByte)
    }

    /// Encodes variables (sorted by name, as U-Boot's `env export` does) into one copy.
    /// - Throws: `.bootEnvironmentTooSmall` when they do not fit; `.bootEnvironmentInvalid` for a
    ///   name with `=` or NUL, or a value with NUL.
    public static func encode(
        _ variables: [String: String], flags: UInt8?, padByte: UInt8, format: UBootEnvironmentFormat, name: String
    ) throws(FerryError) -> [UInt8] {
        var data: [UInt8] = []
        for key in variables.keys.sorted() {
            try validate(name: key, value: variables[key]!, environment: name)
            data.append(contentsOf: key.utf8)
            data.append(UInt8(ascii: "="))
            data.append(contentsOf: variables[key]!.utf8)
            data.append(0)
        }
        data.append(0)
        if data.count == 1 { data.append(0) }
        guard data.count <= format.dataSize else {
            throw FerryError(
                code: .bootEnvironmentTooSmall,
                message: "\(name): the variables need \(data.count) bytes but the environment holds \(format.dataSize)")
        }
        data.append(contentsOf: repeatElement(padByte, count: format.dataSize - data.count))
        let crc = CRC32.checksum(data)
        var bytes: [UInt8] =
            format.byteOrder == .little
            ? [UInt8(crc & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc >> 16 & 0xff), UInt8(crc >> 24)]
            : [UInt8(crc >> 24), UInt8(crc >> 16 & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc & 0xff)]
        if format.redundant { bytes.append(flags ?? 1) }
        bytes.append(contentsOf: data)
        return bytes
    }

    static func validate(name: String, value: String, environment: String) throws(FerryError) {
        guard !name.isEmpty, !name.utf8.contains(UInt8(ascii: "=")), !name.utf8.contains(0),
            !name.utf8.contains(UInt8(ascii: "\n"))
        else {
            throw FerryError(code: .bootEnvironmentInvalid, message: "\(environment): invalid variable name '\(name)'")
        }
        guard !value.utf8.contains(0) else {
            throw FerryError(
                code: .bootEnvironmentInvalid, message: "\(environment): the value of '\(name)' contains NUL")
        }
    }

    /// Which of two redundant copies is current (0 or 1), by U-Boot's `env_check_redund` rule:
    /// the only valid one; else the higher flag, except that 0 is newer than 255 (wrap-around);
    /// equal flags pick the first copy. nil when neither is valid.
    public static func currentIndex(_ first: UBootEnvironmentCopy?, _ second: UBootEnvironmentCopy?) -> Int? {
        switch (first, second) {
        case (nil, nil): return nil
        case (_?, nil): return 0
        case (nil, _?): return 1
        case (let a?, let b?):
            let x = a.flags ?? 0
            let y = b.flags ?? 0
            if x == 255 && y == 0 { return 1 }
            if y == 255 && x == 0 { return 0 }
            return y > x ? 1 : 0
        }
    }
}
