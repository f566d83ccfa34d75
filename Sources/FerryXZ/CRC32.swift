internal import CLzma

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib's `crc32`), computed by liblzma.
///
/// U-Boot environments and Android's `bootloader_control` use this checksum.
public enum CRC32 {
    /// The CRC-32 of `bytes`, continuing from `previous` (0 to start).
    ///
    /// The corresponding C function is `lzma_crc32(3)`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return previous }
        return lzma_crc32(base.assumingMemoryBound(to: UInt8.self), bytes.count, previous)
    }

    /// The CRC-32 of `bytes`.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// The CRC-32 of a slice.
    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }
}
