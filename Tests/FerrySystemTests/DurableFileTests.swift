import FerrySystem
import FerryTestSupport
import SystemPackage
import Testing

/// Crash-safe replacement of small files, and directory creation.
@Suite struct DurableFileTests {
    @Test func writeCreatesTheFileAndLeavesNoTemporaryFile() async throws {
        try await withTemporaryDirectory { dir in
            let data = seededBytes(count: 10_000, seed: 41)
            try DurableFile.write(data, to: "\(dir)/state.json")
            #expect(try readFile("\(dir)/state.json") == data)
            #expect(try directoryEntries(dir) == ["state.json"])
        }
    }

    @Test func writeReplacesTheWholeFile() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/slots.json"
            try DurableFile.write(seededBytes(count: 8192, seed: 42), to: path)
            let inode = try FilePath(path).stat().inode
            // A shorter file replaces a longer one completely: nothing of the old one is left.
            let shorter = seededBytes(count: 100, seed: 43)
            try DurableFile.write(shorter, to: path)
            #expect(try readFile(path) == shorter)
            #expect(try directoryEntries(dir) == ["slots.json"])
            // Replaced by rename, not rewritten in place: readers of the old file keep the old data.
            #expect(try FilePath(path).stat().inode != inode)

            try DurableFile.write("text\n", to: path)
            #expect(try readFile(path) == Array("text\n".utf8))
            try DurableFile.write([UInt8](), to: path)
            #expect(try readFile(path).isEmpty)
            #expect(try directoryEntries(dir) == ["slots.json"])
        }
    }

    @Test func anOpenReaderKeepsSeeingTheOldContents() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/booted"
            try DurableFile.write("A\n", to: path)
            let reader = try FileDescriptor.open(FilePath(path), .readOnly)
            defer { try? reader.close() }
            try DurableFile.write("B\n", to: path)
            var buffer = [UInt8](repeating: 0, count: 16)
            let count = try buffer.withUnsafeMutableBytes { try reader.read(fromAbsoluteOffset: 0, into: $0) }
            #expect(Array(buffer[..<count]) == Array("A\n".utf8))
            #expect(try readFile(path) == Array("B\n".utf8))
        }
    }

    @Test func writeUsesTheGivenPermissions() async throws {
        try await withTemporaryDirectory { dir in
            try DurableFile.write([1, 2, 3], to: "\(dir)/default")
            // Permissions are subject to the umask, which may only remove bits.
            let defaults = try FilePath("\(dir)/default").stat().permissions
            #expect(defaults.isSubset(of: [.ownerReadWrite, .groupRead, .otherRead]))
            #expect(defaults.contains(.ownerReadWrite))

            try DurableFile.write([1, 2, 3], to: "\(dir)/private", permissions: .ownerReadWrite)
            #expect(try FilePath("\(dir)/private").stat().permissions == .ownerReadWrite)
        }
    }

    @Test func writeIntoAMissingDirectoryThrowsAndLeavesNothing() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.deviceNotFound) { try DurableFile.write([1], to: "\(dir)/missing/file") }
            let entries = try directoryEntries(dir)
            #expect(entries.isEmpty)
        }
    }

    @Test func writeOverADirectoryFailsAndRemovesItsTemporaryFile() async throws {
        try await withTemporaryDirectory { dir in
            try DurableFile.createDirectory("\(dir)/occupied/inner")
            #expect(throws: FerryError.self) { try DurableFile.write([1, 2], to: "\(dir)/occupied") }
            #expect(try directoryEntries(dir) == ["occupied"])
            #expect(TextFile.isDirectory("\(dir)/occupied/inner"))
        }
    }

    @Test func createDirectoryMakesMissingParents() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/a/b/c"
            try DurableFile.createDirectory(path)
            #expect(TextFile.isDirectory("\(dir)/a"))
            #expect(TextFile.isDirectory("\(dir)/a/b"))
            #expect(TextFile.isDirectory(path))
            // Again: nothing to do, no error.
            try DurableFile.createDirectory(path)
            try DurableFile.createDirectory("\(dir)/a")
            // Files can be written into it.
            try DurableFile.write("x", to: "\(path)/file")
            #expect(try directoryEntries(path) == ["file"])
        }
    }

    @Test func createDirectoryRefusesAPathThatIsAFile() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/file", bytes: [1])
            expectFerryError(.io) { try DurableFile.createDirectory("\(dir)/file") }
            expectFerryError(.io) { try DurableFile.createDirectory("\(dir)/file/sub") }
            #expect(!TextFile.isDirectory("\(dir)/file"))
        }
    }

    @Test func synchronizeDirectoryNeedsADirectory() async throws {
        try await withTemporaryDirectory { dir in
            try DurableFile.synchronizeDirectory(dir)
            expectFerryError(.deviceNotFound) { try DurableFile.synchronizeDirectory("\(dir)/missing") }
        }
    }
}
