import FerrySystem

/// GRUB's environment block (`grubenv`), read and written natively (no grub-editenv).
///
/// The file is exactly 1024 bytes: `# GRUB Environment Block\n`, `name=value\n` lines (a
/// backslash escapes a backslash or a newline in a value), padded with `#`. GRUB checks only the
/// signature and rewrites the file in place, so its size must never change. Ferry writes a new
/// file, syncs it, renames it over and syncs the directory: a cut leaves the old or the new block.
public final class GRUBEnvironment: BootEnvironment {
    public static let signature = Array("# GRUB Environment Block\n".utf8)
    public static let blockSize = 1024

    public let name: String
    public let path: String

    public init(path: String) {
        self.path = path
        self.name = path
    }

    public func read() throws(FerryError) -> [String: String] {
        let bytes: [UInt8]
        do { bytes = try TextFile.readBytes(path, limit: 64 << 10) } catch {
            throw FerryError(
                code: .bootEnvironmentInvalid, message: "cannot read the GRUB environment: \(error.message)",
                cause: error)
        }
        return try Self.decode(bytes, name: name)
    }

    public func update(_ changes: [String: String?]) throws(FerryError) {
        var variables = try read()
        for (key, value) in changes { variables[key] = value }
        try DurableFile.write(try Self.encode(variables, name: name), to: path)
    }

    /// Decodes a block.
    /// - Throws: `.bootEnvironmentInvalid` for a wrong size or signature or a malformed line.
    public static func decode(_ bytes: [UInt8], name: String) throws(FerryError) -> [String: String] {
        guard bytes.count == blockSize else {
            throw FerryError(
                code: .bootEnvironmentInvalid,
                message: "\(name): a GRUB environment block must be \(blockSize) bytes, not \(bytes.count)")
        }
        guard bytes.starts(with: signature) else {
            throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): no '# GRUB Environment Block' signature")
        }
        var variables: [String: String] = [:]
        var index = signature.count
        while index < bytes.count {
            // One logical line: up to an unescaped newline.
            var line: [UInt8] = []
            var escaped = false
            var terminated = false
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                if escaped {
                    line.append(byte)
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\n") {
                    terminated = true
                    break
                } else {
                    line.append(byte)
                }
            }
            if line.isEmpty || line[0] == UInt8(ascii: "#") { continue }
            guard terminated else { break }  // an unterminated tail is padding GRUB ignores too
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")), equals > 0 else {
                throw FerryError(
                    code: .bootEnvironmentInvalid,
                    message: "\(name): line '\(String(decoding: line.prefix(40), as: UTF8.self))' is not name=value")
            }
            variables[String(decoding: line[..<equals], as: UTF8.self)] = String(
                decoding: line[(equals + 1)...], as: UTF8.self)
        }
        return variables
    }

    /// Encodes variables (sorted by name) into a block padded with `#`.
    /// - Throws: `.bootEnvironmentTooSmall` when they do not fit in 1024 bytes.
    public static func encode(_ variables: [String: String], name: String) throws(FerryError) -> [UInt8] {
        var bytes = signature
        for key in variables.keys.sorted() {
            guard !key.isEmpty, !key.utf8.contains(UInt8(ascii: "=")), !key.utf8.contains(UInt8(ascii: "\n")),
                !key.hasPrefix("#"), !key.utf8.contains(UInt8(ascii: "\\"))
            else {
                throw FerryError(code: .bootEnvironmentInvalid, message: "\(name): invalid variable name '\(key)'")
            }
            bytes.append(contentsOf: key.utf8)
            bytes.append(UInt8(ascii: "="))
            for byte in variables[key]!.utf8 {
                if byte == UInt8(ascii: "\\") || byte == UInt8(ascii: "\n") { bytes.append(UInt8(ascii: "\\")) }
                bytes.append(byte)
            }
            bytes.append(UInt8(ascii: "\n"))
        }
        guard bytes.count <= blockSize else {
            throw FerryError(
                code: .bootEnvironmentTooSmall,
                message:
                    "\(name): the variables need \(bytes.count) bytes but a GRUB environment block holds \(blockSize)")
        }
        bytes.append(contentsOf: repeatElement(UInt8(ascii: "#"), count: blockSize - bytes.count))
        return bytes
    }
}
