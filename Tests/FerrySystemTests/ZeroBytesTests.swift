import FerrySystem
import Testing

struct ZeroBytesTests {
    @Test(arguments: [0, 1, 4095, 65536, 65537, 3 << 20])
    func zerosAndOneNonZeroByte(size: Int) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<size])
        #expect(ZeroBytes.isZero(UnsafeRawBufferPointer(bytes)))
        // A single set bit anywhere (first, last, or on a 64 KiB boundary) is seen.
        for position in Set([0, size / 2, 65536, size - 1]) where position >= 0 && position < size {
            bytes[position] = 0x80
            #expect(!ZeroBytes.isZero(UnsafeRawBufferPointer(bytes)), "non-zero byte at \(position) of \(size)")
            bytes[position] = 0
        }
    }
}
