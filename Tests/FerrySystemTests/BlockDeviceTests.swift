import FerrySystem
import FerryTestSupport
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `BlockDevice` on regular image files: sizes, windows, reads and writes, zeroing, exclusivity.
@Suite struct BlockDeviceTests {
    static func range(_ bounds: (Int64, Int64)) -> Range<Int64> { Range(uncheckedBounds: bounds) }

    static let fileSize: Int64 = 256 << 10

    /// A temporary directory holding `image.bin`: `fileSize` seeded bytes (seed 1).
    func withImage<T>(_ body: (String, [UInt8]) async throws -> T) async throws -> T {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/image.bin"
            let bytes = seededBytes(count: Int(Self.fileSize), seed: 1)
            try makeFile(path, bytes: bytes)
            return try await body(path, bytes)
        }
    }

    // MARK: - Opening

    @Test func openForReadingReportsTheFileSizeAndSectorSize() async throws {
        try await withImage { path, _ in
            let device = try BlockDevice.openForReading(path)
            #expect(device.path == path)
            #expect(device.kind == .imageFile)
            #expect(!device.isWritable)
            #expect(device.byteCount == Self.fileSize)
            #expect(device.logicalSectorSize == 512)
            #expect(device.windowOffset == 0)
            #expect(device.deviceNumber == nil)
            try device.close()
        }
    }

    @Test func openExclusiveReportsTheFileSizeAndIsWritable() async throws {
        try await withImage { path, _ in
            let device = try BlockDevice.openExclusive(path)
            #expect(device.kind == .imageFile)
            #expect(device.isWritable)
            #expect(device.byteCount == Self.fileSize)
            #expect(device.logicalSectorSize == 512)
            try device.close()
        }
    }

    @Test func aSparseFileReportsItsApparentSize() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/sparse.img", size: 64 << 20)
            let device = try BlockDevice.openForReading("\(dir)/sparse.img")
            #expect(device.byteCount == 64 << 20)
            #expect(try readBytes(device, at: (64 << 20) - 4096, count: 4096) == [UInt8](repeating: 0, count: 4096))
        }
    }

    @Test func anEmptyFileHasNoBytes() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/empty.img")
            let device = try BlockDevice.openForReading("\(dir)/empty.img")
            #expect(device.byteCount == 0)
            #expect(try readBytes(device, at: 0, count: 0).isEmpty)
            expectFerryError(.deviceTooSmall) { try readBytes(device, at: 0, count: 1) }
        }
    }

    @Test func openingAMissingPathThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.deviceNotFound) { try BlockDevice.openForReading("\(dir)/missing.img") }
            expectFerryError(.deviceNotFound) { try BlockDevice.openExclusive("\(dir)/missing.img") }
            expectFerryError(.deviceNotFound) { try BlockDevice.openForReading("\(dir)/no/such/dir/disk.img") }
        }
    }

    @Test func openingADirectoryThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.deviceNotFound) { try BlockDevice.openForReading(dir) }
            expectFerryError(.deviceNotFound) { try BlockDevice.openExclusive(dir) }
        }
    }

    @Test func closeIsSafeToCallTwice() async throws {
        try await withImage { path, _ in
            let device = try BlockDevice.openExclusive(path)
            try device.close()
            try device.close()
        }
    }

    // MARK: - Reads and writes

    @Test(
        arguments: [
            (Int64(0), 512, UInt64(11)),
            (1, 1, 12),
            (511, 2, 13),
            (4095, 4097, 14),
            (12_345, 65_536, 15),
            (BlockDeviceTests.fileSize - 100, 100, 16),
            (0, Int(BlockDeviceTests.fileSize), 17),
        ] as [(Int64, Int, UInt64)])
    func writeThenReadRoundTrips(offset: Int64, count: Int, seed: UInt64) async throws {
        try await withImage { path, original in
            let data = seededBytes(count: count, seed: seed)
            let device = try BlockDevice.openExclusive(path)
            try writeBytes(data, to: device, at: offset)
            #expect(try readBytes(device, at: offset, count: count) == data)
            try device.synchronize()
            try device.close()

            // The raw file has the data at the offset and nothing else changed.
            var expected = original
            expected.replaceSubrange(Int(offset)..<(Int(offset) + count), with: data)
            let raw = try readFile(path)
            #expect(raw.count == Int(Self.fileSize))
            #expect(raw == expected)

            // A fresh read-only handle sees the same bytes.
            let reader = try BlockDevice.openForReading(path)
            #expect(try readBytes(reader, at: offset, count: count) == data)
        }
    }

    @Test(
        arguments: [
            (BlockDeviceTests.fileSize, 1),
            (BlockDeviceTests.fileSize - 10, 11),
            (BlockDeviceTests.fileSize + 1, 0),
            (BlockDeviceTests.fileSize + 4096, 4096),
            (0, Int(BlockDeviceTests.fileSize) + 1),
            (-1, 4),
        ] as [(Int64, Int)])
    func readsAndWritesPastTheEndThrowDeviceTooSmall(offset: Int64, count: Int) async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path)
            expectFerryError(.deviceTooSmall) { try readBytes(device, at: offset, count: count) }
            expectFerryError(.deviceTooSmall) {
                try writeBytes(seededBytes(count: count, seed: 3), to: device, at: offset)
            }
            try device.close()
            // A refused write leaves the file untouched (not even extended).
            #expect(try readFile(path) == original)
        }
    }

    @Test func aZeroByteAccessAtTheEndIsAllowed() async throws {
        try await withImage { path, _ in
            let device = try BlockDevice.openExclusive(path)
            #expect(try readBytes(device, at: Self.fileSize, count: 0).isEmpty)
            try writeBytes([], to: device, at: Self.fileSize)
            try device.close()
            #expect(try readFile(path).count == Int(Self.fileSize))
        }
    }

    // MARK: - Windows

    @Test func aWindowMapsOffsetsIntoTheFile() async throws {
        try await withImage { path, original in
            let window: Range<Int64> = 16_384..<49_152
            let device = try BlockDevice.openExclusive(path, window: window)
            #expect(device.byteCount == 32_768)
            #expect(device.windowOffset == 16_384)

            // Reading at window offset 0 reads file offset 16384.
            #expect(try readBytes(device, at: 0, count: 4096) == Array(original[16_384..<20_480]))

            // Writing at window offset 500 lands at file offset 16884.
            let data = seededBytes(count: 1000, seed: 21)
            try writeBytes(data, to: device, at: 500)
            // The last byte of the window is reachable.
            try writeBytes([0xA5], to: device, at: 32_767)
            try device.synchronize()
            try device.close()

            var expected = original
            expected.replaceSubrange(16_884..<17_884, with: data)
            expected[49_151] = 0xA5
            #expect(try readFile(path) == expected)
        }
    }

    // MARK: - Direct I/O

    /// Direct (O_DIRECT) writes and reads through a window: aligned writes bypass the page cache,
    /// unaligned ones take the buffered path, and every path sees the same bytes.
    @Test func directWritesAndTheDirectReaderSeeTheSameBytesAsBufferedIO() async throws {
        try await withImage { path, original in
            let window: Range<Int64> = 65_536..<196_608
            let device = try BlockDevice.openExclusive(path, window: window)
            // /tmp here is ext4, which takes direct I/O; elsewhere (an old tmpfs) there is none.
            let direct = device.enableDirectWrites()
            let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 4096)
            defer { aligned.deallocate() }
            let data = seededBytes(count: 65_536, seed: 31)
            aligned.copyBytes(from: data)
            // A cached (dirty) write first, then a direct one over it: the direct one wins.
            try writeBytes([1, 2, 3], to: device, at: 32_868)
            try device.write(UnsafeRawBufferPointer(aligned), at: 32_768)
            // Not whole sectors: through the page cache, even with direct writes on.
            let odd = seededBytes(count: 1001, seed: 32)
            try writeBytes(odd, to: device, at: 777)
            try device.synchronize()

            var expected = original
            expected.replaceSubrange(98_304..<163_840, with: data)
            expected.replaceSubrange(66_313..<67_314, with: odd)
            if let reader = device.directReader() {
                #expect(reader.path == path && reader.byteCount == window.count && !reader.isWritable)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: window.count, alignment: 4096)
                defer { buffer.deallocate() }
                try reader.read(into: buffer, at: 0)
                #expect(Array(buffer) == Array(expected[65_536..<196_608]))
                try reader.close()
            } else {
                #expect(!direct, "direct writes were taken but direct reads not")
            }
            try device.close()
            #expect(try readFile(path) == expected)
        }
    }

    /// The direct reader reopens the very file the device has open, not whatever the path names now.
    @Test func theDirectReaderReadsTheOpenFileNotThePath() async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openForReading(path)
            try Shell.check(["mv", path, path + ".old"])
            try makeFile(path, bytes: seededBytes(count: Int(Self.fileSize), seed: 99))
            guard let reader = device.directReader() else { return }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { buffer.deallocate() }
            try reader.read(into: buffer, at: 8192)
            #expect(Array(buffer) == Array(original[8192..<12_288]))
        }
    }

    @Test(arguments: [(32_768, 1), (32_000, 1000), (-1, 1), (40_000, 0)] as [(Int64, Int)])
    func aWindowRefusesOffsetsOutsideIt(offset: Int64, count: Int) async throws {
        try await withImage { path, original in
            // The file continues past the window, but the window does not.
            let device = try BlockDevice.openExclusive(path, window: 16_384..<49_152)
            expectFerryError(.deviceTooSmall) { try readBytes(device, at: offset, count: count) }
            expectFerryError(.deviceTooSmall) {
                try writeBytes(seededBytes(count: count, seed: 4), to: device, at: offset)
            }
            try device.close()
            #expect(try readFile(path) == original)
        }
    }

    @Test(arguments: [
        BlockDeviceTests.range((200_000, BlockDeviceTests.fileSize + 1)),
        BlockDeviceTests.range((BlockDeviceTests.fileSize + 512, BlockDeviceTests.fileSize + 1024)),
        BlockDeviceTests.range((-512, 512)),
    ])
    func aWindowPastTheFileEndThrowsDeviceTooSmall(window: Range<Int64>) async throws {
        try await withImage { path, _ in
            expectFerryError(.deviceTooSmall) { try BlockDevice.openForReading(path, window: window) }
            expectFerryError(.deviceTooSmall) { try BlockDevice.openExclusive(path, window: window) }
        }
    }

    @Test func aWindowCoveringTheWholeFileOrNothingIsAllowed() async throws {
        try await withImage { path, original in
            let whole = try BlockDevice.openForReading(path, window: 0..<Self.fileSize)
            #expect(whole.byteCount == Self.fileSize)
            #expect(try readBytes(whole, at: 0, count: Int(Self.fileSize)) == original)
            let empty = try BlockDevice.openForReading(path, window: 4096..<4096)
            #expect(empty.byteCount == 0)
            expectFerryError(.deviceTooSmall) { try readBytes(empty, at: 0, count: 1) }
        }
    }

    // MARK: - Zeroing and discarding

    @Test(arguments: [
        BlockDeviceTests.range((4096, 8192)),
        BlockDeviceTests.range((100, 300)),
        BlockDeviceTests.range((1, 70_001)),
        BlockDeviceTests.range((250_000, BlockDeviceTests.fileSize)),
        BlockDeviceTests.range((0, BlockDeviceTests.fileSize)),
        BlockDeviceTests.range((5000, 5000)),
    ])
    func zeroOutMakesTheRangeReadAsZerosAndKeepsTheSize(range: Range<Int64>) async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path)
            try device.zeroOut(range)
            #expect(try readBytes(device, at: range.lowerBound, count: Int(range.count)).allSatisfy { $0 == 0 })
            try device.synchronize()
            try device.close()

            var expected = original
            expected.replaceSubrange(
                Int(range.lowerBound)..<Int(range.upperBound), with: [UInt8](repeating: 0, count: Int(range.count)))
            let raw = try readFile(path)
            #expect(raw.count == Int(Self.fileSize))
            #expect(raw == expected)
        }
    }

    @Test func zeroOutThroughAWindowZeroesTheMappedRange() async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path, window: 65_536..<131_072)
            try device.zeroOut(1000..<3000)
            try device.close()
            var expected = original
            expected.replaceSubrange(66_536..<68_536, with: [UInt8](repeating: 0, count: 2000))
            #expect(try readFile(path) == expected)
        }
    }

    @Test func zeroOutPastTheEndThrowsDeviceTooSmall() async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path)
            expectFerryError(.deviceTooSmall) { try device.zeroOut(250_000..<(Self.fileSize + 1)) }
            try device.close()
            // Through a window, the window's end counts, not the file's.
            let window = try BlockDevice.openExclusive(path, window: 0..<4096)
            expectFerryError(.deviceTooSmall) { try window.zeroOut(4000..<4097) }
            try window.close()
            #expect(try readFile(path) == original)
        }
    }

    @Test(arguments: [
        BlockDeviceTests.range((8192, 16_384)),
        BlockDeviceTests.range((1000, 9000)),
        BlockDeviceTests.range((0, 0)),
    ])
    func discardKeepsTheSizeAndTheBytesAroundTheRange(range: Range<Int64>) async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path)
            try device.discard(range)
            try device.synchronize()
            try device.close()
            // Discarded contents are undefined; everything else must be intact.
            let raw = try readFile(path)
            #expect(raw.count == Int(Self.fileSize))
            #expect(raw[..<Int(range.lowerBound)] == original[..<Int(range.lowerBound)])
            #expect(raw[Int(range.upperBound)...] == original[Int(range.upperBound)...])
        }
    }

    @Test func discardPastTheEndThrowsDeviceTooSmall() async throws {
        try await withImage { path, original in
            let device = try BlockDevice.openExclusive(path, window: 0..<65_536)
            expectFerryError(.deviceTooSmall) { try device.discard(60_000..<70_000) }
            try device.close()
            #expect(try readFile(path) == original)
        }
    }

    // MARK: - Synchronizing and caches

    @Test func synchronizeAndDropCachesSucceedOnImageFiles() async throws {
        try await withImage { path, original in
            let writer = try BlockDevice.openExclusive(path)
            try writeBytes(seededBytes(count: 4096, seed: 5), to: writer, at: 8192)
            try writer.synchronize()
            try writer.synchronizeData()
            try writer.dropCaches()
            try writer.close()

            let window = try BlockDevice.openExclusive(path, window: 4096..<12_288)
            try window.synchronize()
            try window.dropCaches()
            try window.close()

            let reader = try BlockDevice.openForReading(path)
            try reader.dropCaches()
            #expect(try readBytes(reader, at: 8192, count: 4096) == seededBytes(count: 4096, seed: 5))
            #expect(try readBytes(reader, at: 0, count: 8192) == Array(original[0..<8192]))
        }
    }

    // MARK: - Exclusivity

    @Test func openExclusiveTwiceThrowsDeviceInUseUntilClosed() async throws {
        try await withImage { path, _ in
            let first = try BlockDevice.openExclusive(path)
            expectFerryError(.deviceInUse) { try BlockDevice.openExclusive(path) }
            // A window of the same file is the same file: also refused.
            expectFerryError(.deviceInUse) { try BlockDevice.openExclusive(path, window: 0..<4096) }
            // Readers are not excluded.
            let reader = try BlockDevice.openForReading(path)
            #expect(reader.byteCount == Self.fileSize)
            try reader.close()

            try first.close()
            let second = try BlockDevice.openExclusive(path)
            #expect(second.isWritable)
            try second.close()
        }
    }

    @Test func releasingADeviceByDeinitAlsoReleasesTheLock() async throws {
        try await withImage { path, _ in
            do {
                let scoped = try BlockDevice.openExclusive(path)
                #expect(scoped.isWritable)
            }
            let again = try BlockDevice.openExclusive(path)
            try again.close()
        }
    }

    @Test func anotherPathToTheSameFileIsAlsoExcluded() async throws {
        try await withImage { path, _ in
            let link = path + ".link"
            try Shell.check(["ln", "-s", path, link])
            let first = try BlockDevice.openExclusive(path)
            expectFerryError(.deviceInUse) { try BlockDevice.openExclusive(link) }
            try first.close()
        }
    }

    // MARK: - O_DIRECT

    @Test func directReadsWithAnAlignedBufferWork() async throws {
        // /tmp may be a tmpfs, which refuses O_DIRECT; /var/tmp is normally on disk.
        var template = Array("/var/tmp/ferry-direct-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer -> String? in
            guard let pointer = mkdtemp(buffer.baseAddress!) else { return nil }
            return String(cString: pointer)
        }
        let dir = try #require(created, "mkdtemp in /var/tmp failed")
        defer { _ = try? Shell.run(["rm", "-rf", "--one-file-system", dir]) }

        let path = "\(dir)/direct.img"
        let data = seededBytes(count: 64 << 10, seed: 31)
        try makeFile(path, bytes: data)

        let device: BlockDevice
        switch Result(catching: { () throws(FerryError) in try BlockDevice.openForReading(path, direct: true) }) {
        case .success(let opened): device = opened
        case .failure(let error):
            if (error.cause as? Errno) == .invalidArgument {
                try Test.cancel("the file system of /var/tmp does not support O_DIRECT")
            }
            throw error
        }
        defer { try? device.close() }
        #expect(device.byteCount == 64 << 10)

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        if case .failure(let error) = Result(catching: { () throws(FerryError) in
            try device.read(into: buffer, at: 16_384)
        }) {
            if (error.cause as? Errno) == .invalidArgument {
                try Test.cancel("the file system of /var/tmp does not support O_DIRECT reads")
            }
            throw error
        }
        #expect(Array(buffer) == Array(data[16_384..<24_576]))

        let whole = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { whole.deallocate() }
        try device.read(into: whole, at: 0)
        #expect(Array(whole) == data)
    }
}
