import FerryBundle
import FerryCrypto
import FerryDelta
import FerrySystem
import Logging

/// The delta step: a block delta applied from the booted slot into its slot of the target group.
extension Installer {
    /// Writes a delta payload: applies it to the booted slot `source` (read only, every range
    /// checked before use) into `slot`, operation by operation, each checked before it is
    /// written; checkpoints at operation boundaries; reads the slot back as checkpoints make it
    /// durable, and compares it with the target image's SHA-256 at the end.
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
        // The slot is read back from the device, in order, and compared with the target image's
        // signed SHA-256: each region on a thread of its own once a checkpoint made it durable,
        // while later operations are decoded and written. What an interrupted run wrote before
        // its last checkpoint is durable already.
        let readBack = session.wholeReadBack(
            sha256: info.targetSHA256, size: info.targetSize, what: "the delta's target image")
        // (Runs before the device is closed: no read may outlive its descriptor.)
        defer { readBack.cancel() }
        readBack.verify(through: start.targetOffset)
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
                if let failure = readBack.failure { throw failure }
                readBack.verify(through: next.targetOffset)
            }
            progress(
                ProgressEvent(stage: .write, slot: slot.name, bytesDone: next.targetOffset, bytesTotal: info.targetSize)
            )
        }
        guard stream.isAtEnd else {
            throw FerryError(
                code: .bundleInvalid, message: "payload '\(payload.member)' has data after the delta's last operation")
        }
        try session.synchronize()
        progress(
            ProgressEvent(
                stage: .readBack, slot: slot.name, bytesDone: readBack.verifiedBytes, bytesTotal: info.targetSize))
        readBack.verify(through: info.targetSize)
        try readBack.finish()
        progress(
            ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: info.targetSize, bytesTotal: info.targetSize))
    }
}
