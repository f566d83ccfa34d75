import CFerryShims

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs an external program (hooks, health checks, a custom boot chooser) with a time limit.
///
/// The child gets its own process group so that a timeout kills everything it started; its
/// standard output is captured (bounded), its standard error passes through to Ferry's.
public enum ChildProcess {
    public struct Result: Sendable, Equatable {
        /// The exit status, or 128 + signal number when it was killed.
        public var status: Int32
        /// Standard output (at most `outputLimit` bytes are kept).
        public var output: String
        /// Whether the time limit killed it.
        public var timedOut: Bool
    }

    /// Runs `arguments[0]` (a path, or a name searched on PATH) with `arguments[1...]`.
    ///
    /// - Parameters:
    ///   - environment: variables added to (or replacing those of) Ferry's environment.
    ///   - timeoutSeconds: after this the whole process group gets SIGKILL.
    ///   - mergeStandardError: capture standard error into `output` too.
    /// - Throws: `.deviceNotFound` when the program cannot be started.
    public static func run(
        _ arguments: [String], environment: [String: String] = [:], timeoutSeconds: Int,
        outputLimit: Int = 1 << 20, mergeStandardError: Bool = false
    ) throws(FerryError) -> Result {
        precondition(!arguments.isEmpty, "Ferry bug: running an empty command")
        var pipeFDs: [Int32] = [0, 0]
        guard CFerryShims_pipe2(&pipeFDs, O_CLOEXEC) == 0 else {
            throw FerryError.syscall("creating a pipe for", errno: currentErrno, path: arguments[0])
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        if mergeStandardError { posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        var merged = ProcessEnvironment.variables
        for (key, value) in environment { merged[key] = value }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, envp)
        close(pipeFDs[1])
        guard spawned == 0 else {
            close(pipeFDs[0])
            throw FerryError(
                code: .deviceNotFound, message: "cannot run '\(arguments[0])': \(String(cString: strerror(spawned)))")
        }
        defer { close(pipeFDs[0]) }

        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        let deadline = monotonicSeconds() + Double(timeoutSeconds)
        var timedOut = false
        var open = true
        while open {
            let remaining = deadline - monotonicSeconds()
            if remaining <= 0 {
                timedOut = true
                kill(-pid, SIGKILL)
                break
            }
            var descriptor = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(min(remaining, 1.0) * 1000) + 1)
            if ready < 0 && errno != EINTR { break }
            if ready > 0 {
                let count = read(pipeFDs[0], &buffer, buffer.count)
                if count > 0 {
                    if output.count < outputLimit {
                        output.append(contentsOf: buffer[..<min(count, outputLimit - output.count)])
                    }
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    open = false
                }
            }
        }
        // The pipe closed (or the deadline passed): wait for the child itself, still bounded.
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { break }
            if result == -1 && errno != EINTR { break }
            if monotonicSeconds() > deadline {
                timedOut = true
                kill(-pid, SIGKILL)
                while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
                break
            }
            usleep(5_000)
        }
        let signal = status & 0x7f
        let exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        return Result(status: exitStatus, output: String(decoding: output, as: UTF8.self), timedOut: timedOut)
    }

    static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
