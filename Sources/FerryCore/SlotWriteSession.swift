import FerryBundle
import FerryCrypto
import FerrySystem
import SystemPackage

/// One slot open for writing: the only way installs (images, deltas, copies) and `write-slot`
/// write a slot. It opens the slot through the write guard (`SlotAccess`), writes verified data
/// (zero runs zeroed by the device, aligned chunks with direct I/O where the device takes it),
/// makes checkpoints (the slot synced first, then the journal, so that the journal never claims
/// more than is durable), and reads back from the device, not the page cache: through a second
/// `O_DIRECT` descriptor where the device takes it, otherwise after the cached pages were dropped.
final class SlotWriteSession {
    let slot: SlotConfiguration
    private let open: OpenSlot
    /// The device as written: the fault-injection seam of the tests wraps it.
    let device: any BlockTarget
    private let wrap: (BlockDevice) -> any BlockTarget

    /// Opens `slot` exclusively after every check of the write guard.
    /// - Parameters:
    ///   - directWrites: write whole aligned chunks with `O_DIRECT` (image payloads).
    ///   - wrap: wraps the opened device (tests inject faults there).
    init(
        _ slot: SlotConfiguration, access: SlotAccess, directWrites: Bool = false,
        wrap: @escaping (BlockDevice) -> any BlockTarget = { $0 }
    ) throws(FerryError) {
        self.slot = slot
        open = try access.openForWriting(slot)
        if directWrites { _ = open.device.enableDirectWrites() }
        device = wrap(open.device)
        self.wrap = wrap
    }

    deinit { try? open.close() }

    /// The path written to, for messages: `/dev/loop3p2`, `/dev/mmcblk0p3`, `rootfs_b.img`.
    var devicePath: String { open.devicePath }

    /// Writes verified bytes at `offset` (runs of zeros zeroed by the device).
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        try ImageWriter.write(bytes, at: offset, to: device)
    }

    func synchronize() throws(FerryError) { try device.synchronize() }

    /// A checkpoint: the slot synced, then `save` (the journal).
    func checkpoint(_ save: () throws(FerryError) -> Void) throws(FerryError) {
        try device.synchronize()
        try save()
    }

    /// A queue that reads chunks of `payload` back while later ones are written (image payloads).
    func chunkReadBack(_ payload: Manifest.Payload) -> ReadBackQueue {
        ReadBackQueue(
            device: device, direct: open.device.directReader().map(wrap),
            dropCaches: { [open] (range) throws(FerryError) in try open.device.dropCaches(range) }, payload: payload,
            slot: slot.name,
            path: open.devicePath)
    }

    /// A queue that reads a whole image back, in order, while the rest of it is written, and
    /// compares it with `sha256` at the end (delta payloads).
    func wholeReadBack(sha256: SHA256Digest, size: Int64, what: String) -> ReadBackQueue {
        ReadBackQueue(
            device: device, direct: open.device.directReader().map(wrap),
            dropCaches: { [open] (range) throws(FerryError) in try open.device.dropCaches(range) },
            wholeImage: sha256, size: size, slot: slot.name, path: open.devicePath, what: what)
    }

    /// The SHA-256 of the slot's first `byteCount` bytes as the device holds them (synced first).
    func deviceHash(byteCount: Int64) throws(FerryError) -> SHA256Digest {
        try device.synchronize()
        if let direct = open.device.directReader().map(wrap),
            let digest = try Self.hashDirectly(direct, byteCount: byteCount)
        {
            // What was written need not stay cached (memory is scarce on a device).
            try open.device.dropCaches(0..<byteCount)
            return digest
        }
        try open.device.dropCaches()
        return try SHA256Hasher.hash(device, byteCount: byteCount)
    }

    /// Reads the slot back and compares it with `sha256`.
    /// - Throws: `.readBackMismatch` naming what was written (`what`: "what was copied").
    func readBack(byteCount: Int64, sha256: SHA256Digest, what: String) throws(FerryError) {
        guard try deviceHash(byteCount: byteCount) == sha256 else {
            throw FerryError(
                code: .readBackMismatch,
                message:
                    "slot '\(slot.name)' (\(open.devicePath)) reads back differently from \(what): the device is failing"
            )
        }
    }

    /// Closes the device (and detaches a loop device Ferry attached for it).
    func close() throws(FerryError) { try open.close() }

    /// Hashes through an `O_DIRECT` reader in large sector-aligned pieces (the last rounded up to
    /// whole sectors and trimmed); nil when the device refuses direct reads (`EINVAL`), or when a
    /// rounded piece would pass the end of the device.
    private static func hashDirectly(_ reader: any BlockTarget, byteCount: Int64) throws(FerryError) -> SHA256Digest? {
        let sector = Int64(max(reader.logicalSectorSize, 512))
        guard (byteCount + sector - 1) / sector * sector <= reader.byteCount else { return nil }
        let piece = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        let hasher = SHA256Hasher()
        var offset: Int64 = 0
        while offset < byteCount {
            let wanted = Int(min(Int64(piece), byteCount - offset))
            let rounded = Int((Int64(wanted) + sector - 1) / sector * sector)
            do {
                try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<rounded]), at: offset)
            } catch  where (error.cause as? Errno) == .invalidArgument {
                return nil
            }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[..<wanted]))
            offset += Int64(wanted)
        }
        return hasher.finalize()
    }
}
