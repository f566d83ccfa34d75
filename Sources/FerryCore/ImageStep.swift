import FerryBundle
import FerryCrypto
import FerryDelta
import FerrySystem
import Logging

/// The image step: a full image written chunk by chunk into its slot, zero chunks first, each
/// chunk checked before it is written and read back from the device after a checkpoint made it
/// durable.
extension Installer {
    /// Writes an image payload into `slot`, resuming after the chunks the journal says are durable.
    func write(
        _ payload: Manifest.Payload, to slot: SlotConfiguration, reader: BundleReader, access: SlotAccess,
        journal: inout InstallJournal, store: StateStore
    ) throws(FerryError) {
        // Whole chunks land in aligned buffers: they need not pass through the page cache.
        let session = try SlotWriteSession(slot, access: access, directWrites: true, wrap: wrapDevice)
        defer { try? session.close() }
        let resumeAt = min(journal.chunksDone[slot.name] ?? 0, payload.chunks.count)
        progress(
            ProgressEvent(
                stage: .write, slot: slot.name, bytesDone: Int64(resumeAt) * payload.chunkSize, bytesTotal: payload.size
            ))
        var sinceCheckpoint: Int64 = 0
        // Every chunk of the slot is read back and compared with its signed decoded hash (as strong
        // as the whole-payload hash), from the device, not the page cache. Regions are read back
        // once a checkpoint made them durable, on a thread of their own, while later chunks are
        // decoded and written; chunks written before an interruption are durable already.
        let readBack = session.chunkReadBack(payload)
        // (Runs before the device is closed: no read may outlive its descriptor.)
        defer { readBack.cancel() }
        readBack.verify(upTo: resumeAt)
        // Zero chunks first: the signed manifest says which chunks decode to zeros, so their ranges
        // are zeroed by the device and synced before the first chunk is written (when it is handed
        // out, so the decoders are busy meanwhile), and read back while the rest decodes. Reading
        // back zeroed ranges is slow on some devices, loop devices over sparse files among them:
        // left for the end, it was the end's longest wait.
        let zeroFirst = Self.zeroChunksToZeroFirst(payload, from: resumeAt)
        var zeroedFirst = zeroFirst.isEmpty
        let zeroedAlready = Set(zeroFirst)
        // Each chunk arrives hash-checked (compressed and decoded) before it is written.
        try reader.readPayload(payload, resumeAt: resumeAt, checkWholeHash: false) {
            (index, offset, bytes) throws(FerryError) in
            if !zeroedFirst {
                if !journal.zeroed.contains(slot.name) {
                    for span in Self.spans(of: zeroFirst, in: payload) { try session.device.zeroOut(span) }
                    try session.checkpoint { () throws(FerryError) in
                        journal.zeroed.append(slot.name)
                        try store.setInstallJournal(journal)
                    }
                }
                readBack.verify(zeroFirst)
                zeroedFirst = true
            }
            if !zeroedAlready.contains(index) {
                try session.write(bytes, at: offset)
                sinceCheckpoint += Int64(bytes.count)
            }
            if sinceCheckpoint >= checkpointBytes {
                try session.checkpoint { () throws(FerryError) in
                    journal.chunksDone[slot.name] = index + 1
                    try store.setInstallJournal(journal)
                }
                sinceCheckpoint = 0
                if let failure = readBack.failure { throw failure }
                readBack.verify(upTo: index + 1)
            }
            progress(
                ProgressEvent(
                    stage: .write, slot: slot.name, bytesDone: offset + Int64(bytes.count), bytesTotal: payload.size))
        }
        try session.synchronize()
        progress(
            ProgressEvent(
                stage: .readBack, slot: slot.name, bytesDone: readBack.verifiedBytes, bytesTotal: payload.size))
        readBack.verify(upTo: payload.chunks.count)
        try readBack.finish()
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: payload.size, bytesTotal: payload.size))
    }

    /// The zero chunks at or after `first` whose range starts and ends on a 4 KiB boundary (what
    /// ``ImageWriter`` lets the device zero; in practice every zero chunk but a short last one).
    static func zeroChunksToZeroFirst(_ payload: Manifest.Payload, from first: Int) -> [Int] {
        payload.zeroChunks.filter { index in
            index >= first && (Int64(index) * payload.chunkSize) % 4096 == 0
                && payload.decodedSize(ofChunk: index) % 4096 == 0
        }
    }

    /// The byte ranges of `chunks` in the slot, adjacent ones merged.
    static func spans(of chunks: [Int], in payload: Manifest.Payload) -> [Range<Int64>] {
        var spans: [Range<Int64>] = []
        for index in chunks {
            let start = Int64(index) * payload.chunkSize
            let next = start..<(start + Int64(payload.decodedSize(ofChunk: index)))
            if let last = spans.last, last.upperBound == next.lowerBound {
                spans[spans.count - 1] = last.lowerBound..<next.upperBound
            } else {
                spans.append(next)
            }
        }
        return spans
    }
}
