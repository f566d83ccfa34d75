import FerrySystem

/// Writes verified image data to a slot: ranges of zeros are zeroed by the device
/// (`BLKZEROOUT`/`fallocate`) instead of copied, everything else with large writes.
public enum ImageWriter {
    /// The granularity at which runs of zeros are detected (aligned, a multiple of every sector size).
    static let zeroBlock = 64 << 10

    /// Writes `bytes` at `offset`: zero blocks are zeroed by the device, the rest written.
    /// The slot ends up byte-identical either way.
    public static func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64, to device: some BlockTarget)
        throws(FerryError)
    {
        var start = 0
        while start < bytes.count {
            let end = min(start + zeroBlock, bytes.count)
            let block = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            let isZero = ZeroBytes.isZero(block)
            // Extend the run while blocks stay of the same kind.
            var runEnd = end
            while runEnd < bytes.count {
                let next = UnsafeRawBufferPointer(rebasing: bytes[runEnd..<min(runEnd + zeroBlock, bytes.count)])
                guard ZeroBytes.isZero(next) == isZero else { break }
                runEnd = min(runEnd + zeroBlock, bytes.count)
            }
            if isZero && (offset + Int64(start)) % 4096 == 0 && (runEnd - start) % 4096 == 0 {
                try device.zeroOut((offset + Int64(start))..<(offset + Int64(runEnd)))
            } else {
                try device.write(UnsafeRawBufferPointer(rebasing: bytes[start..<runEnd]), at: offset + Int64(start))
            }
            start = runEnd
        }
    }
}
