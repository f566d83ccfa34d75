import FerryBundle
import FerryCore
import FerrySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// App archives: unpacked by the app store into a version folder, with every entry checked.
enum AppTargets {
    /// The archive is listed by the tar reader (directories and links allowed) and unpacked by
    /// `AppStore.stageArchive` into a store in a scratch directory. Whatever the archive says,
    /// nothing may appear outside the store, and an accepted version holds no link that leads
    /// out of it. The store is emptied after each input.
    @Sendable static func appArchive(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        unpack(bytes)
        let repaired = TarRepair.fixingChecksums(bytes)
        if repaired != bytes { unpack(repaired) }
    }

    private static func unpack(_ bytes: [UInt8]) {
        let listing = TarReader(source: MemoryByteSource(bytes, name: "fuzz-app.tar"), maximumMemberSize: 1 << 24)
        listing.allowsDirectoriesAndLinks = true
        do throws(FerryError) {
            while let member = try listing.nextMember() {
                if member.kind == .file { _ = try listing.readRemainingContent(maximumCount: 1 << 16) }
            }
            try listing.finishAndCheckEnd()
        } catch {}

        let staged: Bool
        do {
            try store.stageArchive(name: "app", version: "1.0", archive: MemoryByteSource(bytes, name: "fuzz-app.tar"))
            staged = true
        } catch {
            staged = false
        }
        let outside = FuzzScratch.entries(root).sorted()
        guard outside == ["outside", "store"], FuzzScratch.entries("\(root)/outside").isEmpty else {
            violated(
                "app-archive",
                "the archive created something outside the app store: \(outside), outside/: \(FuzzScratch.entries("\(root)/outside"))"
            )
        }
        if staged { checkLinks(in: "\(root)/store/app/1.0", relative: []) }
        FuzzScratch.removeTree("\(root)/store")
        guard (try? FileSystem.makeDirectory("\(root)/store", mode: 0o755)) != nil else {
            fatalError("fuzz target app-archive: cannot recreate \(root)/store")
        }
    }

    /// Every symbolic link under the version folder resolves (lexically) inside it.
    private static func checkLinks(in path: String, relative: [String]) {
        for name in FuzzScratch.entries(path) {
            let full = "\(path)/\(name)"
            let kind = FileSystem.kind(of: full)
            if kind == .directory {
                checkLinks(in: full, relative: relative + [name])
            } else if kind == .symbolicLink {
                guard let link = FileSystem.linkTarget(full) else { continue }
                var resolved = relative
                for part in link.split(separator: "/") {
                    if part == "." { continue }
                    if part == ".." {
                        guard !resolved.isEmpty else {
                            violated("app-archive", "the link '\(full)' -> '\(link)' leads out of the version")
                        }
                        resolved.removeLast()
                    } else {
                        resolved.append(String(part))
                    }
                }
                guard !link.hasPrefix("/") else {
                    violated("app-archive", "the link '\(full)' -> '\(link)' is absolute")
                }
            }
        }
    }

    /// `<root>/store` is the app store; `<root>/outside` must stay empty.
    private static let root: String = {
        let root = FuzzScratch.directory("apps")
        guard (try? FileSystem.makeDirectory("\(root)/store", mode: 0o755)) != nil,
            (try? FileSystem.makeDirectory("\(root)/outside", mode: 0o755)) != nil
        else {
            fatalError("fuzz target app-archive: cannot prepare \(root)")
        }
        return root
    }()

    private static var store: AppStore {
        AppStore(
            directory: "\(root)/store", keep: 1,
            logger: Logger(label: "ferry-fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
    }
}
