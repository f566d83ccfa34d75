import FerryBundle
import FerryCrypto
import FerryDelta
import FerrySystem
import Logging

/// The delta step: a block delta applied from the booted slot into its slot of the target group.
extension Installer {
    /// Writes a delta payload: applies it to the booted slot `source` (read only, every range
    /// checked before use) into `slot`, operation by operation, each checked before it is
    /// written; checkpoints at operation boundaries; then reads the slot back and compares it
    /// with the target image's SHA-256.
    func writeDelta(
        _ payload: Manifest.Payload, to slot: SlotConfiguration, from source: SlotConfiguration, reader: BundleReader,
        access: SlotAccess, journal: inout InstallJournal, store: StateStore
    ) throws(FerryError) {
        guard let info = payload.delta else {
            throw FerryError(code: .internal, message: "payload '\(payload.member)' is not a delta")
        }
        let session = try SlotWriteSession(slot, access: access, wrap: wrapDevice)
        defer { try? session.close() }
        let sourceDevice = try access.openForReading(source)
        defer { try? sourceDevice.close() }
        let stream = try PayloadStream(reader: reader, payload: payload)
        let applier = try DeltaApplier(delta: stream, source: sourceDevice, sourceName: "booted slot '\(source.name)'")
        // The stream must be the delta the signed manifest describes (its source checks were
        // verified against the booted slot before anything was written).
        guard applier.header.sourceSHA256 == info.sourceSHA256, applier.header.sourceSize == info.sourceSize,
            applier.header.targetSHA256 == info.targetSHA256, applier.header.targetSize == info.targetSize,
            applier.sourceChecks == info.sourceChecks, Int64(applier.header.formatVersion) == info.formatVersion
        else {
            throw FerryError(
                code: .bundleInvalid,
                message: "payload '\(payload.member)' is not the delta its manifest entry describes")
        }
        var start = applier.firstOperation
        if let saved = journal.deltaPositions[slot.name], saved.deltaOffset > start.deltaOffset,
            saved.deltaOffset <= payload.size
        {
            try stream.skip(saved.deltaOffset - start.deltaOffset)
            start = saved
        }
        progress(
            ProgressEvent(stage: .write, slot: slot.name, bytesDone: start.targetOffset, bytesTotal: info.targetSize))
        var sinceCheckpoint: Int64 = 0
        try applier.apply(from: stream, start: start, verifyWholeTarget: false) {
            (offset, bytes, next) throws(FerryError) in
            try session.write(bytes, at: offset)
            sinceCheckpoint += Int64(bytes.count)
            if sinceCheckpoint >= checkpointBytes {
                try session.checkpoint { () throws(FerryError) in
                    journal.deltaPositions[slot.name] = next
                    try store.setInstallJournal(journal)
                }
                sinceCheckpoint = 0
            }
            progress(
                ProgressEvent(stage: .write, slot: slot.name, bytesDone: next.targetOffset, bytesTotal: info.targetSize)
            )
        }
        guard stream.isAtEnd else {
            throw FerryError(
                code: .bundleInvalid, message: "payload '\(payload.member)' has data after the delta's last operation")
        }
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: 0, bytesTotal: info.targetSize))
        try session.readBack(byteCount: info.targetSize, sha256: info.targetSHA256, what: "the delta's target image")
        progress(
            ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: info.targetSize, bytesTotal: info.targetSize))
    }
}
