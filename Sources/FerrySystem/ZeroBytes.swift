import Glibc

/// Fast checks for runs of zero bytes (the empty parts of a filesystem image), at memory speed:
/// `memcmp(3)` against a shared page of zeros instead of a byte-by-byte loop.
public enum ZeroBytes {
    /// 64 KiB of zeros, allocated once and never written.
    nonisolated(unsafe) private static let zeros: UnsafeRawBufferPointer = {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        page.initializeMemory(as: UInt8.self, repeating: 0)
        return UnsafeRawBufferPointer(page)
    }()

    /// Whether every byte of `bytes` is zero (true for an empty buffer). Stops at the first
    /// 64 KiB piece that holds a non-zero byte.
    public static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        var offset = 0
        while offset < bytes.count {
            let count = min(zeros.count, bytes.count - offset)
            if memcmp(base + offset, zeros.baseAddress!, count) != 0 { return false }
            offset += count
        }
        return true
    }
}
