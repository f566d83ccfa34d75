import FerryBundle
import FerryCrypto
import FerryDelta
import FerrySystem
import Logging

/// The copy step: a member of the target group that the bundle does not carry made to hold the
/// image its booted counterpart was installed with.
extension Installer {
    /// Gives `copy.slot` the image recorded for the booted member: nothing to do when it already
    /// holds it (read and hashed); otherwise copied from the booted member (read only; a member
    /// mounted read-write is refused) and checked against the recorded SHA-256 as it is read,
    /// then synced and read back.
    func copy(_ copy: GroupCopy, access: SlotAccess) throws(FerryError) {
        let session = try SlotWriteSession(copy.slot, access: access, wrap: wrapDevice)
        defer { try? session.close() }
        progress(ProgressEvent(stage: .verify, slot: copy.slot.name, bytesDone: 0, bytesTotal: copy.size))
        if try SHA256Hasher.hash(session.device, byteCount: copy.size) == copy.sha256 {
            logger.info("Slot already holds the booted member's image", metadata: ["slot.name": "\(copy.slot.name)"])
            return
        }
        let source = try access.openForReading(copy.source)
        defer { try? source.close() }
        let hasher = SHA256Hasher()
        let piece = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while offset < copy.size {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(Int64(piece), copy.size - offset))])
            try source.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            try session.write(UnsafeRawBufferPointer(slice), at: offset)
            offset += Int64(slice.count)
            progress(ProgressEvent(stage: .write, slot: copy.slot.name, bytesDone: offset, bytesTotal: copy.size))
        }
        guard hasher.finalize() == copy.sha256 else {
            throw FerryError(
                code: .sourceMismatch,
                message:
                    "booted slot '\(copy.source.name)' no longer holds the image recorded for it (sha256 \(copy.sha256)): cannot copy it into '\(copy.slot.name)'"
            )
        }
        try session.readBack(byteCount: copy.size, sha256: copy.sha256, what: "what was copied")
        progress(ProgressEvent(stage: .readBack, slot: copy.slot.name, bytesDone: copy.size, bytesTotal: copy.size))
    }
}
