import SystemPackage

/// Lexical path helpers (no symlink resolution), for configuration paths.
public enum Paths {
    /// `path` made absolute against the current directory.
    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return FilePath(path).lexicallyNormalized().string }
        return FilePath(ProcessEnvironment.currentDirectory()).appending(path).lexicallyNormalized().string
    }

    /// `path` resolved against `directory` when relative.
    public static func resolve(_ path: String, against directory: String) -> String {
        if path.hasPrefix("/") { return FilePath(path).lexicallyNormalized().string }
        return FilePath(directory).appending(path).lexicallyNormalized().string
    }

    /// The folder holding `path`.
    public static func directory(of path: String) -> String {
        let parent = FilePath(path).removingLastComponent().string
        return parent.isEmpty ? "." : parent
    }

    /// `path` relative to `directory` when it lies inside it (for display), else unchanged.
    public static func display(_ path: String, relativeTo directory: String) -> String {
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        return path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : path
    }
}

/// The one rule for names Ferry turns into paths, tar members or configuration keys (slot and
/// class names, app names and versions, settings names, bundle members): ASCII letters and
/// digits, `.`, `_` and `-`, nothing else (no `/`, no spaces, no control characters). Each use
/// adds its own limits (a length, no leading `.`, reserved words).
public enum PlainName {
    public static func isPlain(_ text: String) -> Bool {
        !text.isEmpty
            && text.unicodeScalars.allSatisfy {
                ("0"..."9").contains($0) || ("A"..."Z").contains($0) || ("a"..."z").contains($0) || $0 == "."
                    || $0 == "_" || $0 == "-"
            }
    }
}
