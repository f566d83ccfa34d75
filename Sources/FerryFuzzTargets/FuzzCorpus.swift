import FerrySystem

#if canImport(Glibc)
import Glibc
#endif

/// Corpus files on disk (the committed seeds under Tests/FuzzCorpus/<target>/, crash inputs).
public enum FuzzCorpus {
    /// The regular files of `path` (itself, or the files in it, sorted; hidden ones skipped).
    public static func files(_ path: String) -> [String] {
        guard TextFile.isDirectory(path) else { return [path] }
        return FuzzScratch.entries(path).filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }.filter {
            !TextFile.isDirectory($0)
        }
    }

    /// A file's bytes (corpus files are small: at most 1 MiB).
    public static func read(_ path: String) -> [UInt8]? {
        try? TextFile.readBytes(path, limit: 1 << 20)
    }
}

extension FuzzCorpus {
    /// The sub-folders of `path` (one per target in a corpus).
    public static func folders(_ path: String) -> [String] {
        FuzzScratch.entries(path).filter { !$0.hasPrefix(".") && TextFile.isDirectory("\(path)/\($0)") }.sorted()
    }
}
