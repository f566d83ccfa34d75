import FerryCrypto
import FerrySystem
import FerryXZ
import FerryZstd
import Logging

/// `ferry write-slot`: an operator action that writes an image straight into one slot (recovery,
/// factory), without a bundle. It still refuses the booted and mounted slots, marks the slot's
/// group bad first, reads the slot back, and records its SHA-256; it never raises the security
/// floor and never makes the group primary.
public struct SlotWriter {
    public let configuration: SystemConfiguration
    public let booted: BootedGroup
    public let logger: Logger
    public var progress: (ProgressEvent) -> Void = { _ in }

    public init(configuration: SystemConfiguration, booted: BootedGroup, logger: Logger) {
        self.configuration = configuration
        self.booted = booted
        self.logger = logger
    }

    /// Writes `image` (raw, or .xz decoded on the fly) into the slot named `slotName`.
    /// - Returns: the SHA-256 and size of what was written.
    /// - Throws: `.unknownSlot`, `.deviceBooted`, `.deviceInUse`, `.deviceTooSmall`, `.io`, xz errors.
    public func write(slotName: String, image: String) throws(FerryError) -> (SHA256Digest, Int64) {
        guard let slot = configuration.slot(named: slotName) else {
            throw FerryError(
                code: .unknownSlot,
                message: "no slot '\(slotName)' (slots: \(configuration.slots.map(\.name).joined(separator: ", ")))")
        }
        let access = SlotAccess(
            configuration: configuration, booted: booted, mounts: try MountTable.current(), logger: logger)
        try access.checkWritable(slot)
        var resolver = SlotResolver()
        let capacity = try resolver.resolve(slot, configuration: configuration).byteCount
        let source = try Self.openImage(image, slot: slot, capacity: capacity)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        /// Fills the buffer from the image; returns how many bytes (less at its end).
        func fill() throws(FerryError) -> Int {
            var filled = 0
            while filled < buffer.count {
                let count = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                if count == 0 { break }
                filled += count
            }
            return filled
        }

        // Everything that can refuse before a write does so before the boot environment changes:
        // the first piece of the image is read (a file that is not xz fails here), and the slot is
        // opened exclusively (booted, mounted, held by someone else, missing: refused here).
        var filled = try fill()
        guard filled > 0 else {
            throw FerryError(
                code: .bundleInvalid, message: "'\(image)' is empty: there is nothing to write into slot '\(slot.name)'"
            )
        }
        let session = try SlotWriteSession(slot, access: access)
        defer { try? session.close() }
        // The group must not boot while one of its slots is half written.
        let control = try BootControl(configuration: configuration, booted: booted, logger: logger)
        // (A single-copy slot belongs to no group: it is written in place, by opt-in.)
        if !slot.singleCopy { try control.markBad(slot.bootname) }
        let hasher = SHA256Hasher()
        var offset: Int64 = 0
        progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: 0, bytesTotal: capacity))
        while filled > 0 {
            guard offset + Int64(filled) <= capacity else {
                throw FerryError(
                    code: .deviceTooSmall,
                    message: "'\(image)' decodes to more than slot '\(slot.name)' holds (\(capacity) bytes)")
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[..<filled])
            hasher.update(chunk)
            try session.write(chunk, at: offset)
            offset += Int64(filled)
            progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: offset, bytesTotal: capacity))
            if filled < buffer.count { break }
            filled = try fill()
        }
        let digest = hasher.finalize()
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: 0, bytesTotal: offset))
        try session.readBack(byteCount: offset, sha256: digest, what: "what was written")
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: offset, bytesTotal: offset))
        try StateStore(directory: configuration.stateDirectory).setSlotRecord(
            InstalledSlotRecord(
                sha256: digest.hex, size: offset, version: nil,
                source: "write-slot \(image.split(separator: "/").last ?? "")",
                installedAt: WallClock.iso8601()), for: slot.name)
        return (digest, offset)
    }

    /// Opens `image` for reading its decoded bytes: an .xz or .zst image through its decoder, a raw
    /// one (file or device) as it is, refused at once when it is larger than the slot.
    static func openImage(_ image: String, slot: SlotConfiguration, capacity: Int64) throws(FerryError)
        -> any ByteSource
    {
        let file = try FileByteSource(path: image)
        // 2^27 (128 MiB): zstd's own limit for frames made without --long, so the device's memory stays bounded.
        if image.hasSuffix(".zst") { return try ZstdStreamSource(source: file, windowLogMax: 27) }
        if image.hasSuffix(".xz") { return try XZStreamSource(source: file) }
        if let size = try? BlockDevice.openForReading(image).byteCount, size > capacity {
            throw FerryError(
                code: .deviceTooSmall, message: "'\(image)' is \(size) bytes but slot '\(slot.name)' holds \(capacity)")
        }
        return file
    }
}
