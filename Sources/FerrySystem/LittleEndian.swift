/// Fixed-width little-endian fields in byte arrays (on-disk formats: MBR, GPT, bootloader headers).
extension Array where Element == UInt8 {
    /// The `T` stored little-endian at `offset`; the bytes must be there.
    public func littleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count, "field outside the bytes")
        var value: T = 0
        for index in (0..<MemoryLayout<T>.size).reversed() { value = value << 8 | T(self[offset + index]) }
        return value
    }

    /// Stores `value` little-endian at `offset`.
    public mutating func setLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count, "field outside the bytes")
        for index in 0..<MemoryLayout<T>.size { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}
