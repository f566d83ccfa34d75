import FerryBundle
import FerryJSON
import FerrySystem
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// App-only updates (docs/apps.md): versioned app files under the configured app store, activated
/// by switching a symbolic link atomically, with the previous version kept for rollback.
///
///     <store>/<name>/<version>/<file>     one installed version (written, synced, then renamed in)
///     <store>/<name>/current -> <version>   the active version (a new link renamed over the old)
///     <store>/<name>/previous -> <version>  what `rollback` and a failed health check return to
///
/// A cut at any instant leaves `current` pointing at a complete version: a version directory
/// appears only by rename after its file and itself were synced, and the link is replaced by
/// rename. Half-written staging directories (`.<version>.partial-*`) are removed by the next install.
public struct AppStore {
    public let directory: String
    /// Versions kept besides the current one (the previous one included).
    public let keep: Int
    public let logger: Logger

    public init(directory: String, keep: Int = 1, logger: Logger) {
        self.directory = directory
        self.keep = max(1, keep)
        self.logger = logger
    }

    /// App names and versions become path components: plain names only.
    /// - Throws: `.bundleInvalid` for anything with `/`, `..`, a leading `.`, or other characters.
    public static func checkName(_ name: String, what: String) throws(FerryError) {
        guard PlainName.isPlain(name), name.count <= 64, !name.hasPrefix("."), name != "current", name != "previous",
            !GroupPartsControl.isLeftover(name)
        else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "\(what) '\(name)' is not a plain name (letters, digits, '.', '_', '-'; not starting with '.'; not 'current' or 'previous'; not ending like a temporary file, '.tmp-<digits>')"
            )
        }
    }

    func appDirectory(_ name: String) -> String { "\(directory)/\(name)" }

    /// The active version of `name`, if any.
    public func current(_ name: String) -> String? { FileSystem.linkTarget("\(appDirectory(name))/current") }
    /// The version `rollback` returns to, if any.
    public func previous(_ name: String) -> String? { FileSystem.linkTarget("\(appDirectory(name))/previous") }

    /// Installed apps and their versions.
    public func list() -> [(name: String, current: String?, previous: String?, versions: [String])] {
        FileSystem.entries(directory).filter { !$0.hasPrefix(".") && TextFile.isDirectory("\(directory)/\($0)") }
            .sorted().map { name in
                (name, current(name), previous(name), versions(name))
            }
    }

    /// The complete versions of `name` (staging directories excluded).
    public func versions(_ name: String) -> [String] {
        FileSystem.entries(appDirectory(name)).filter {
            !$0.hasPrefix(".") && $0 != "current" && $0 != "previous" && !GroupPartsControl.isLeftover($0)
        }.sorted()
    }

    /// Writes a new version: `write` fills `<version>/<file>` (through a staging directory); then
    /// the version directory is synced and renamed into place. Does not activate it.
    /// - Throws: `.bundleInvalid` for bad names; I/O errors; `write`'s errors.
    public func stage(
        name: String, version: String, file: String, _ write: (_ sink: FileByteSink) throws(FerryError) -> Void
    ) throws(FerryError) {
        try Self.checkName(name, what: "app name")
        try Self.checkName(version, what: "app version")
        try Self.checkName(file, what: "app file name")
        let (_, staging) = try makeStaging(name: name, version: version)
        let sink = try FileByteSink(path: "\(staging)/\(file)")
        try write(sink)
        try sink.finish()
        try DurableFile.synchronizeDirectory(staging)
        try install(staging: staging, name: name, version: version)
    }

    /// A fresh staging directory for `version` (half-written ones of earlier runs removed).
    private func makeStaging(name: String, version: String) throws(FerryError) -> (app: String, staging: String) {
        let app = appDirectory(name)
        try DurableFile.createDirectory(app)
        for entry in FileSystem.entries(app) where entry.hasPrefix(".") && entry.contains(".partial-") {
            try FileSystem.removeTree("\(app)/\(entry)")
        }
        let staging = "\(app)/.\(version).partial-\(FileSystem.processID)"
        try DurableFile.createDirectory(staging)
        return (app, staging)
    }

    /// Renames a complete, synced staging directory into place as `version`.
    private func install(staging: String, name: String, version: String) throws(FerryError) {
        let app = appDirectory(name)
        let final = "\(app)/\(version)"
        if TextFile.exists(final) {
            guard current(name) != version else {
                try FileSystem.removeTree(staging)
                throw FerryError(
                    code: .bundleInvalid, message: "app '\(name)' version \(version) is already the active version")
            }
            try FileSystem.removeTree(final)
        }
        try FileSystem.rename(staging, to: final)
        try DurableFile.synchronizeDirectory(app)
    }

    /// Writes a new version unpacked from a tar archive (ustar or pax; directories, regular
    /// files, symbolic and hard links) through a staging directory, like `stage`. Every entry is
    /// checked before it is created: a plain relative path (no `..`, no absolute path), not twice,
    /// not under a symbolic link of the archive; a symbolic link must point inside the version
    /// (relative, resolved lexically); a hard link must name an earlier regular file of the
    /// archive; devices, FIFOs and other kinds are refused. Permission bits are kept without
    /// set-user-ID, set-group-ID and sticky bits; owners are not (root owns what Ferry writes).
    /// - Throws: `.bundleInvalid` naming the entry; the archive's and the file system's errors.
    public func stageArchive(name: String, version: String, archive: any ByteSource) throws(FerryError) {
        try Self.checkName(name, what: "app name")
        try Self.checkName(version, what: "app version")
        let (_, staging) = try makeStaging(name: name, version: version)
        do {
            try Self.unpack(archive, into: staging, app: name)
        } catch {
            try? FileSystem.removeTree(staging)
            throw error
        }
        try install(staging: staging, name: name, version: version)
    }

    static func unpack(_ archive: any ByteSource, into root: String, app: String) throws(FerryError) {
        let tar = TarReader(source: archive)
        tar.allowsDirectoriesAndLinks = true
        var kinds: [String: TarMember.Kind] = [:]
        var directories: [String] = [root]
        var links: [(path: String, target: String)] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        func refuse(_ entry: String, _ problem: String) -> FerryError {
            FerryError(code: .bundleInvalid, message: "app '\(app)': archive entry '\(entry)' \(problem)")
        }
        while let member = try tar.nextMember() {
            // The archive's own folder ('.') is the version folder.
            if member.name == "." && member.kind == .directory { continue }
            let path = member.name
            let components = path.split(separator: "/").map(String.init)
            guard kinds[path] == nil else { throw refuse(path, "appears twice") }
            // Nothing may be created through a link the archive made.
            for length in 1..<max(1, components.count) {
                let parent = components[..<length].joined(separator: "/")
                if let kind = kinds[parent], kind != .directory {
                    throw refuse(path, "lies under '\(parent)', which is not a directory of the archive")
                }
            }
            let target = "\(root)/\(path)"
            try DurableFile.createDirectory(Paths.directory(of: target))
            let mode = FilePermissions(rawValue: CModeT(member.mode & 0o777))
            switch member.kind {
            case .file:
                let sink = try FileByteSink(path: target, permissions: mode, exclusive: true)
                while true {
                    let count = try tar.readContent(into: buffer)
                    if count == 0 { break }
                    try sink.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                }
                try sink.finish()
                try FileSystem.setMode(target, UInt32(member.mode & 0o777))
            case .directory:
                if !TextFile.isDirectory(target) {
                    try FileSystem.makeDirectory(target, mode: UInt32(member.mode & 0o777 | 0o700))
                }
                directories.append(target)
            case .symbolicLink:
                let link = member.linkName ?? ""
                guard !link.hasPrefix("/") else { throw refuse(path, "is a link to the absolute path '\(link)'") }
                links.append((path, link))
                try FileSystem.makeSymbolicLink(target, to: link)
            case .hardLink:
                let source = member.linkName ?? ""
                guard kinds[source] == .file else {
                    throw refuse(
                        path, "is a hard link to '\(source)', which is not an earlier regular file of the archive")
                }
                try FileSystem.makeHardLink(target, to: "\(root)/\(source)")
            }
            kinds[path] = member.kind
        }
        try tar.finishAndCheckEnd()
        try checkLinksStayInside(links, kinds: kinds, refuse: refuse)
        for directory in Set(
            directories + kinds.filter { $0.value == .file }.map { Paths.directory(of: "\(root)/\($0.key)") })
        {
            try DurableFile.synchronizeDirectory(directory)
        }
    }

    /// Each link, resolved lexically from its folder, stays inside the version and never passes
    /// through another link of the archive (whose target could lead out).
    private static func checkLinksStayInside(
        _ links: [(path: String, target: String)], kinds: [String: TarMember.Kind],
        refuse: (String, String) -> FerryError
    ) throws(FerryError) {
        for (path, link) in links {
            var resolved = Array(path.split(separator: "/").map(String.init).dropLast())
            for part in link.split(separator: "/", omittingEmptySubsequences: true) {
                if kinds[resolved.joined(separator: "/")] == .symbolicLink {
                    throw refuse(
                        path,
                        "is a link to '\(link)', which passes through the link '\(resolved.joined(separator: "/"))'")
                }
                if part == "." { continue }
                if part == ".." {
                    guard !resolved.isEmpty else {
                        throw refuse(path, "is a link to '\(link)', outside the app's folder")
                    }
                    resolved.removeLast()
                } else {
                    resolved.append(String(part))
                }
            }
        }
    }

    /// Makes `version` the active one (the old one becomes `previous`); prunes old versions
    /// unless `prune` is false (an activation that a health check may still switch back).
    public func activate(name: String, version: String, prune pruning: Bool = true) throws(FerryError) {
        let app = appDirectory(name)
        guard TextFile.isDirectory("\(app)/\(version)") else {
            throw FerryError(code: .unknownSlot, message: "app '\(name)' has no installed version \(version)")
        }
        if let old = current(name), old != version { try Self.switchLink("\(app)/previous", to: old) }
        try Self.switchLink("\(app)/current", to: version)
        if pruning { try prune(name) }
    }

    /// Puts `current` and `previous` back as they were before an activation (nil: no such link).
    /// A `previous` whose version is gone is left out rather than pointed at nothing.
    public func restore(_ name: String, current version: String?, previous: String?) throws(FerryError) {
        let app = appDirectory(name)
        if let version {
            if current(name) != version { try Self.switchLink("\(app)/current", to: version) }
        } else {
            try deactivate(name)
        }
        if let previous, TextFile.isDirectory("\(app)/\(previous)") {
            if self.previous(name) != previous { try Self.switchLink("\(app)/previous", to: previous) }
        } else if self.previous(name) != nil {
            try Self.removeLink("\(app)/previous")
        }
    }

    /// Returns to the previous version (which becomes current; the rolled-back one becomes previous).
    /// - Returns: (from, to).
    /// - Throws: `.unknownSlot` when there is nothing to return to.
    @discardableResult
    public func rollback(_ name: String) throws(FerryError) -> (from: String?, to: String) {
        let app = appDirectory(name)
        guard let previous = previous(name), TextFile.isDirectory("\(app)/\(previous)") else {
            throw FerryError(code: .nothingToRollBack, message: "app '\(name)' has no previous version to roll back to")
        }
        let from = current(name)
        try Self.switchLink("\(app)/current", to: previous)
        if let from { try Self.switchLink("\(app)/previous", to: from) }
        return (from, previous)
    }

    /// Leaves `name` without an active version (its first version failed its health check).
    public func deactivate(_ name: String) throws(FerryError) {
        try Self.removeLink("\(appDirectory(name))/current")
    }

    /// Removes a link (if there) and syncs its directory.
    static func removeLink(_ link: String) throws(FerryError) {
        try FileSystem.remove(link)
        try DurableFile.synchronizeDirectory(Paths.directory(of: link))
    }

    /// Removes versions beyond `keep` besides current and previous (oldest first by change time).
    func prune(_ name: String) throws(FerryError) {
        let app = appDirectory(name)
        let protected = Set([current(name), previous(name)].compactMap { $0 })
        let others = versions(name).filter { !protected.contains($0) }
            .sorted { FileSystem.changeTime("\(app)/\($0)") < FileSystem.changeTime("\(app)/\($1)") }
        let removable = max(0, others.count - max(0, keep - 1))
        for version in others.prefix(removable) { try FileSystem.removeTree("\(app)/\(version)") }
        if removable > 0 { try DurableFile.synchronizeDirectory(app) }
    }

    /// Points `link` at `target` atomically: a new link beside it, renamed over it, directory synced.
    static func switchLink(_ link: String, to target: String) throws(FerryError) {
        let temporary = "\(link).tmp-\(FileSystem.processID)"
        FileSystem.removeIfPossible(temporary)
        try FileSystem.makeSymbolicLink(temporary, to: target)
        try FileSystem.rename(temporary, to: link)
        try DurableFile.synchronizeDirectory(Paths.directory(of: link))
    }
}
