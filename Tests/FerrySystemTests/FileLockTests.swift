import FerrySystem
import FerryTestSupport
import Testing

/// The global `flock` lock every writing command takes.
@Suite struct FileLockTests {
    @Test func acquiringTwiceThrowsLockHeld() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/lock"
            let lock = try FileLock.acquire(path, holder: "ferry install")
            #expect(lock.path == path)
            expectFerryError(.lockHeld) { try FileLock.acquire(path, holder: "ferry mark") }
            lock.release()
        }
    }

    @Test func releaseThenAcquireWorks() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/lock"
            let first = try FileLock.acquire(path, holder: "first")
            first.release()
            first.release()  // twice is harmless
            let second = try FileLock.acquire(path, holder: "second")
            expectFerryError(.lockHeld) { try FileLock.acquire(path, holder: "third") }
            second.release()
            let third = try FileLock.acquire(path, holder: "third")
            third.release()
        }
    }

    @Test func deinitReleasesTheLock() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/lock"
            do {
                let scoped = try FileLock.acquire(path, holder: "scoped")
                #expect(scoped.path == path)
            }
            let again = try FileLock.acquire(path, holder: "again")
            again.release()
        }
    }

    @Test func theLockFileNamesTheHolder() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/lock"
            // A longer text from an earlier holder must not leave a tail behind.
            try makeFile(path, bytes: Array(String(repeating: "x", count: 200).utf8))
            let lock = try FileLock.acquire(path, holder: "ferry install")
            let text = try #require(TextFile.attribute(path))
            #expect(text.hasPrefix("ferry install (pid "))
            #expect(!text.contains("x"))
            lock.release()
            // The file stays (it is the lock's identity); only the lock goes.
            #expect(TextFile.exists(path))
        }
    }

    @Test func aLockInAMissingDirectoryThrowsDeviceNotFound() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.deviceNotFound) { try FileLock.acquire("\(dir)/missing/lock", holder: "x") }
        }
    }

    @Test func locksOnDifferentFilesAreIndependent() async throws {
        try await withTemporaryDirectory { dir in
            let a = try FileLock.acquire("\(dir)/a.lock", holder: "a")
            let b = try FileLock.acquire("\(dir)/b.lock", holder: "b")
            a.release()
            b.release()
        }
    }
}
