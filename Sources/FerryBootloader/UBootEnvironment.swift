import FerrySystem

/// A U-Boot environment on block devices or files, read and written natively (no fw_setenv).
///
/// Redundant environments are changed by writing the non-current copy only, with the next flag
/// (or, in the boolean scheme, flag 1 followed by clearing the old copy's flag), then syncing: the
/// current copy is never touched before the new one is complete and durable, so a torn write
/// leaves the old environment selected. A corrupt copy is the one written next (repaired).
/// A single copy is replaced atomically only when it is a whole file (new file, sync, rename);
/// a single raw copy elsewhere cannot be written atomically and needs `allowSingleRawCopy`.
public final class UBootEnvironment: BootEnvironment {
    public let name: String
    public let locations: [UBootEnvironmentLocation]
    public let format: UBootEnvironmentFormat
    public let allowSingleRawCopy: Bool

    public init(
        locations: [UBootEnvironmentLocation], name: String, byteOrder: UBootEnvironmentFormat.ByteOrder = .little,
        flagScheme: UBootEnvironmentFormat.FlagScheme = .incremental, allowSingleRawCopy: Bool = false
    ) {
        precondition(!locations.isEmpty && locations.count <= 2, "a U-Boot environment has one or two copies")
        self.name = name
        self.locations = locations
        self.format = UBootEnvironmentFormat(
            size: locations[0].size, redundant: locations.count == 2, byteOrder: byteOrder, flagScheme: flagScheme)
        self.allowSingleRawCopy = allowSingleRawCopy
    }

    /// The environment an `fw_env.config` describes.
    public convenience init(
        fwEnvConfig path: String, byteOrder: UBootEnvironmentFormat.ByteOrder = .little,
        flagScheme: UBootEnvironmentFormat.FlagScheme = .incremental, allowSingleRawCopy: Bool = false
    ) throws(FerryError) {
        let config = try FWEnvConfig.load(path)
        self.init(
            locations: config.locations, name: path, byteOrder: byteOrder, flagScheme: flagScheme,
            allowSingleRawCopy: allowSingleRawCopy)
    }

    /// The raw bytes of every copy, as stored.
    public func readCopies() throws(FerryError) -> [[UInt8]] {
        var copies: [[UInt8]] = []
        for location in locations {
            let device: BlockDevice
            do { device = try BlockDevice.openForReading(location.device) } catch {
                throw FerryError(
                    code: .bootEnvironmentInvalid,
                    message: "\(name): cannot open '\(location.device)': \(error.message)",
                    cause: error)
            }
            defer { try? device.close() }
            let offset = try absoluteOffset(location, deviceSize: device.byteCount)
            copies.append(try device.read(at: offset, count: location.size))
        }
        return copies
    }

    /// The decoded copies (nil where the CRC fails) and the index of the current one.
    /// - Throws: `.bootEnvironmentInvalid` when no copy is valid.
    public func readState() throws(FerryError) -> (copies: [UBootEnvironmentCopy?], current: Int) {
        let raw = try readCopies()
        var copies: [UBootEnvironmentCopy?] = []
        for (index, bytes) in raw.enumerated() {
            copies.append(try UBootEnvironmentCodec.decode(bytes, format: format, name: "\(name) copy \(index + 1)"))
        }
        let current =
            format.redundant ? UBootEnvironmentCodec.currentIndex(copies[0], copies[1]) : (copies[0] == nil ? nil : 0)
        guard let current else {
            throw FerryError(
                code: .bootEnvironmentInvalid,
                message: format.redundant
                    ? "\(name): both copies of the U-Boot environment are corrupt (bad CRC); refusing to write"
                    : "\(name): the U-Boot environment is corrupt (bad CRC); refusing to write")
        }
        return (copies, current)
    }

    public func read() throws(FerryError) -> [String: String] {
        let state = try readState()
        return state.copies[state.current]!.variables
    }

    public func update(_ changes: [String: String?]) throws(FerryError) {
        let state = try readState()
        let current = state.copies[state.current]!
        var variables = current.variables
        for (key, value) in changes { variables[key] = value }
        if format.redundant {
            try writeRedundant(variables, current: state.current, currentCopy: current)
        } else {
            try writeSingle(variables, padByte: current.padByte)
        }
    }

    private func writeRedundant(_ variables: [String: String], current: Int, currentCopy: UBootEnvironmentCopy)
        throws(FerryError)
    {
        let target = 1 - current
        let flags: UInt8 = format.flagScheme == .incremental ? (currentCopy.flags ?? 0) &+ 1 : 1
        let bytes = try UBootEnvironmentCodec.encode(
            variables, flags: flags, padByte: currentCopy.padByte, format: format, name: name)
        // 1. The non-current copy, complete and durable: until this returns, the old one is selected.
        try write(bytes, at: locations[target], byteOffset: 0)
        // 2. Boolean scheme: only now mark the old copy obsolete (a NOR write that only clears bits).
        if format.flagScheme == .boolean {
            try write([0], at: locations[current], byteOffset: 4)
        }
    }

    private func writeSingle(_ variables: [String: String], padByte: UInt8) throws(FerryError) {
        let location = locations[0]
        let bytes = try UBootEnvironmentCodec.encode(
            variables, flags: nil, padByte: padByte, format: format, name: name)
        let status = try? BlockDevice.openForReading(location.device)
        let isWholeFile =
            status.map { $0.kind == .imageFile && location.offset == 0 && $0.byteCount == Int64(location.size) }
            ?? false
        try? status?.close()
        if isWholeFile {
            // A whole file: new file, sync, rename over, sync the directory.
            try DurableFile.write(bytes, to: location.device)
            return
        }
        guard allowSingleRawCopy else {
            throw FerryError(
                code: .bootEnvironmentUnsupported,
                message:
                    "\(name): a single raw U-Boot environment copy cannot be written atomically; configure a redundant environment or opt in with allowSingleRawCopy"
            )
        }
        try write(bytes, at: location, byteOffset: 0)
    }

    private func write(_ bytes: [UInt8], at location: UBootEnvironmentLocation, byteOffset: Int64) throws(FerryError) {
        let device: BlockDevice
        do { device = try BlockDevice.openSharedForWriting(location.device) } catch {
            throw error.prefixed("\(name)")
        }
        defer { try? device.close() }
        let offset = try absoluteOffset(location, deviceSize: device.byteCount) + byteOffset
        try device.write(bytes, at: offset)
        try device.synchronize()
    }

    private func absoluteOffset(_ location: UBootEnvironmentLocation, deviceSize: Int64) throws(FerryError) -> Int64 {
        let offset = location.offset < 0 ? deviceSize + location.offset : location.offset
        // Compared without adding: an fw_env.config offset may be anything up to 2^63 - 1.
        guard offset >= 0, offset <= deviceSize, Int64(location.size) <= deviceSize - offset else {
            throw FerryError(
                code: .bootEnvironmentInvalid,
                message:
                    "\(name): the environment at offset \(location.offset) (\(location.size) bytes) lies outside '\(location.device)' (\(deviceSize) bytes)"
            )
        }
        return offset
    }
}
