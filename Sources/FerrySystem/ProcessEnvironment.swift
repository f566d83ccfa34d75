#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Facts about the running process that Ferry's policy depends on.
public enum ProcessEnvironment {
    /// The current working directory ("/" if it cannot be determined).
    ///
    /// The corresponding C function is `getcwd(3)`.
    public static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether the process runs with effective user id 0.
    public static var isRoot: Bool { system_geteuid() == 0 }

    /// The process environment as a dictionary.
    public static var variables: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }

    /// The number of processors currently online (at least 1): the default worker count for
    /// parallel compression.
    ///
    /// It ignores CPU affinity masks and cgroup quotas, so inside a restricted container it can
    /// be larger than the CPU time actually available.
    ///
    /// The corresponding C function is `sysconf(_SC_NPROCESSORS_ONLN)`.
    public static var processorCount: Int { max(1, sysconf(CInt(_SC_NPROCESSORS_ONLN))) }

    /// Whether standard output (or `fd`) is a terminal.
    public static func isTerminal(_ fd: CInt = 1) -> Bool { isatty(fd) == 1 }
}
