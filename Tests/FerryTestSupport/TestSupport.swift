import FerryCore
import FerrySystem
import Logging
import SystemPackage

// The static Swift runtime (`swift build -c release --static-swift-stdlib`, which builds this
// target too) has no Testing module: what needs it is left out there.
#if canImport(Testing)
import Testing
#endif

#if canImport(Glibc)
import Glibc
#endif

/// A fresh temporary directory, removed (recursively) when `body` returns or throws.
public func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    var template = Array("/tmp/ferry-test-XXXXXX".utf8CString)
    guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw FerryError(code: .io, message: "mkdtemp failed")
    }
    let path = String(cString: created)
    defer { _ = try? Shell.run(["rm", "-rf", "--one-file-system", path]) }
    return try await body(path)
}

#if canImport(Testing)
/// Expects `body` to throw a `FerryError` whose code is `code` (tests never look at messages).
public func expectFerryError<R>(
    _ code: FerryError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> R
) {
    let error = #expect(throws: FerryError.self, sourceLocation: sourceLocation) { _ = try body() }
    #expect(
        error?.code == code, "expected \(code), got \(error.map { "\($0.code)" } ?? "no error")",
        sourceLocation: sourceLocation)
}
#endif

/// What users read must name things: an error line (`ferry: error: …`) or a log line at warning
/// level or above with `nil`, `Optional(` or an empty name (`''`, `""`, `()`, a trailing space) in it is a defect
/// (an optional or an empty string interpolated into a message). Every run of the ferry binary
/// through ``Shell`` is checked (docs/errors.md).
public enum UserFacingText {
    /// The offending lines of `output`.
    public static func violations(in output: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { line in
            isUserFacing(line) && hasOffendingText(line)
        }
    }

    static func isUserFacing(_ line: String) -> Bool {
        if line.contains("ferry: error:") { return true }
        // swift-log's stream handler: "<timestamp> <level> <label> : …".
        let words = line.split(separator: " ", maxSplits: 2)
        return words.count >= 2 && ["warning", "error", "critical"].contains(words[1])
    }

    static func hasOffendingText(_ line: String) -> Bool {
        if line.contains("Optional(") || line.contains("''") || line.contains("\"\"") || line.contains("()") {
            return true
        }
        // A message that ends in a space ended with an empty name ("… of group ").
        if line.last == " " { return true }
        // "nil" as a word.
        let scalars = Array(line.unicodeScalars)
        var index = 0
        while index + 3 <= scalars.count {
            if scalars[index] == "n", scalars[index + 1] == "i", scalars[index + 2] == "l" {
                let before = index == 0 ? nil : scalars[index - 1]
                let after = index + 3 < scalars.count ? scalars[index + 3] : nil
                let isWordCharacter = { (scalar: Unicode.Scalar?) -> Bool in
                    guard let scalar else { return false }
                    return scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "_"
                }
                if !isWordCharacter(before) && !isWordCharacter(after) { return true }
            }
            index += 1
        }
        return false
    }
}

/// A tiny seeded generator (SplitMix64): reproducible random choices in tests.
public struct SeededGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A number in 0..<bound.
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Deterministic pseudo-random bytes (xorshift64*), so fixtures are reproducible from a seed.
public func seededBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed
    var bytes = [UInt8]()
    bytes.reserveCapacity(count)
    while bytes.count < count {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        var word = state &* 0x2545_F491_4F6C_DD1D
        for _ in 0..<8 where bytes.count < count {
            bytes.append(UInt8(truncatingIfNeeded: word))
            word >>= 8
        }
    }
    return bytes
}

/// Creates a file holding `bytes` (or a sparse file of `size` zero bytes).
public func makeFile(_ path: String, bytes: [UInt8] = [], size: Int64? = nil) throws {
    let fd = try FileDescriptor.open(
        FilePath(path), .readWrite, options: [.create, .truncate],
        permissions: [.ownerReadWrite, .groupRead, .otherRead])
    defer { try? fd.close() }
    if !bytes.isEmpty { _ = try fd.writeAll(toAbsoluteOffset: 0, bytes) }
    if let size { try fd.resize(to: size) }
}

/// Reads a whole file.
public func readFile(_ path: String) throws -> [UInt8] {
    try TextFile.readBytes(path, limit: 1 << 30)
}

/// Facts about the test machine, for gating suites.
public enum TestEnvironment {
    /// Root with a loop driver: the integration suite can attach loop devices.
    public static var canUseLoopDevices: Bool {
        geteuid() == 0 && TextFile.exists("/dev/loop-control")
    }

    /// Whether running under CI (then skipping the integration suite is a failure, see tools/test).
    public static var isCI: Bool { ProcessEnvironment.variables["CI"] == "true" }

    /// The package root (found from this file's location).
    public static var packageRoot: String {
        var path = FilePath(#filePath)
        while let last = path.lastComponent?.string, last != "Tests" { path.removeLastComponent() }
        path.removeLastComponent()
        return path.string
    }

    /// The `ferry` executable built next to the running test bundle.
    public static var ferryBinary: String {
        let runner = CommandLine.arguments[0]
        let folder = runner.contains("/") ? String(runner[..<runner.lastIndex(of: "/")!]) : "."
        return "\(folder)/ferry"
    }

    /// The codec of the payloads the install tests make: `xz` (the default) or `zstd`, from
    /// `FERRY_TEST_CODEC`. tools/test runs the install suites once with each.
    public static var payloadCodec: String {
        ProcessEnvironment.variables["FERRY_TEST_CODEC"] == "zstd" ? "zstd" : "xz"
    }

    /// The member-name suffix of a compressed payload of ``payloadCodec``.
    public static var payloadSuffix: String { payloadCodec == "zstd" ? ".zst" : ".xz" }

    /// `ferry bundle create` arguments for ``payloadCodec``.
    public static var codecArguments: [String] { ["--codec", payloadCodec] }

    /// Whether a command is on PATH.
    public static func hasCommand(_ name: String) -> Bool {
        (try? Shell.run(["sh", "-c", "command -v \(name)"]))?.status == 0
    }
}

/// Runs programs for tests (real peers: sfdisk, mkfs, fw_printenv, …) without Foundation.
public enum Shell {
    public struct Result: Sendable {
        public var status: Int32
        public var output: String
    }

    /// Runs `arguments` (searched on PATH), capturing stdout and stderr together (10 minutes at most).
    @discardableResult
    public static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> Result {
        var env = environment
        env["PATH"] = (ProcessEnvironment.variables["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        let result = try ChildProcess.run(
            arguments, environment: env, timeoutSeconds: 600, outputLimit: 64 << 20, mergeStandardError: true)
        #if canImport(Testing)
        // The ferry binary, or a script that runs it (tools/sandbox-boot with $FERRY).
        if arguments.first == TestEnvironment.ferryBinary || environment["FERRY"] == TestEnvironment.ferryBinary {
            for line in UserFacingText.violations(in: result.output) {
                Issue.record(
                    "ferry \(arguments.dropFirst().joined(separator: " ")) printed a message with nil, Optional( or an empty name: \(line)"
                )
            }
        }
        #endif
        return Result(status: result.status, output: result.output)
    }

    /// Runs and throws unless the exit status is 0.
    @discardableResult
    public static func check(_ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let result = try run(arguments, environment: environment)
        guard result.status == 0 else {
            throw FerryError(
                code: .io, message: "\(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
        }
        return result.output
    }
}

/// A sandbox device made by `tools/make-test-disk` in a temporary directory.
public struct Sandbox {
    public let directory: String
    public var configurationPath: String { "\(directory)/system.json" }
    public var diskPath: String { "\(directory)/disk.img" }

    /// Builds a sandbox with the given bootloader and rootfs slot size.
    public static func make(in directory: String, bootloader: String = "uboot", slotSize: String = "16M") throws
        -> Sandbox
    {
        let root = TestEnvironment.packageRoot
        try Shell.check([
            "\(root)/tools/make-test-disk", directory, "--bootloader", bootloader, "--slot-size", slotSize,
        ])
        return Sandbox(directory: directory)
    }

    public func configuration() throws -> SystemConfiguration {
        try SystemConfiguration.load(configurationPath)
    }
}

/// Attaches `file` to a loop device for the duration of `body`, and always detaches it, also when
/// `body` throws. Loop devices are only ever backed by files the test created.
public func withLoopDevice<T>(_ file: String, _ body: (LoopDevice) async throws -> T) async throws -> T {
    let loop = try LoopDevice.attach(file)
    do {
        let result = try await body(loop)
        try loop.detach()
        return result
    } catch {
        try? loop.detach()
        throw error
    }
}

/// A throw-away PKI made with the openssl command line (EC P-256, fast).
public struct TestPKI {
    public let directory: String
    public var keyring: String { "\(directory)/ca.pem" }
    public func certificate(_ name: String) -> String { "\(directory)/\(name).pem" }
    public func key(_ name: String) -> String { "\(directory)/\(name).key" }

    /// Makes a CA `ca` and, signed by it, one certificate per name in `signers` (digitalSignature,
    /// codeSigning), plus `serverauth` (an extended key usage without codeSigning); and a second,
    /// unrelated CA `otherca` with its signer `stranger`.
    public static func make(in directory: String, signers: [String] = ["signer1", "signer2", "signer3"]) throws
        -> TestPKI
    {
        try DurableFile.createDirectory(directory)
        let pki = TestPKI(directory: directory)
        try pki.makeCA("ca", subject: "/CN=Test Keyring CA")
        for name in signers { try pki.makeSigner(name, ca: "ca", extendedUsage: "codeSigning") }
        try pki.makeSigner("serverauth", ca: "ca", extendedUsage: "serverAuth")
        try pki.makeCA("otherca", subject: "/CN=Unrelated CA")
        try pki.makeSigner("stranger", ca: "otherca", extendedUsage: "codeSigning")
        return pki
    }

    func newKey(_ name: String) throws {
        try Shell.check([
            "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key(name),
        ])
    }

    public func makeCA(_ name: String, subject: String) throws {
        try newKey(name)
        try Shell.check([
            "openssl", "req", "-new", "-x509", "-key", key(name), "-subj", subject, "-days", "3650",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", certificate(name),
        ])
    }

    public func makeSigner(_ name: String, ca: String, extendedUsage: String, days: Int = 365) throws {
        try newKey(name)
        try DurableFile.write(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=\(extendedUsage)\n",
            to: "\(directory)/\(name).ext")
        try Shell.check([
            "openssl", "req", "-new", "-key", key(name), "-subj", "/CN=\(name)", "-out", "\(directory)/\(name).csr",
        ])
        try Shell.check([
            "openssl", "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", certificate(ca), "-CAkey", key(ca),
            "-CAcreateserial", "-days", "\(days)", "-extfile", "\(directory)/\(name).ext", "-out", certificate(name),
        ])
    }
}

/// Runs `arguments` again and again, killing each run with SIGKILL after a growing delay
/// (`firstDelay`, then `step` more each time), until `cuts` runs were really cut (a run may end
/// before its kill) or `attempts` runs were made. After each run, `after(attempt)` checks the state
/// and returns true to stop early (the work is done).
/// - Returns: how many runs were cut.
public func killRepeatedly(
    _ arguments: [String], attempts: Int, cuts: Int, firstDelay: Double, step: Double, after: (Int) throws -> Bool
) throws -> Int {
    var cut = 0
    for attempt in 0..<attempts where cut < cuts {
        let process = try SpawnedProcess(arguments)
        sleepSeconds(firstDelay + step * Double(attempt))
        if process.kill() == nil { cut += 1 }
        if try after(attempt) { break }
    }
    return cut
}

/// A child process the test can kill at a chosen moment (crash tests).
public final class SpawnedProcess {
    public let pid: pid_t
    private var reaped = false

    /// Starts `arguments` with output sent to /dev/null, with `environment` added to this
    /// process's environment.
    public init(_ arguments: [String], environment: [String: String] = [:]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        var variables: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        variables.merge(environment) { $1 }
        let environmentList = variables.map { strdup("\($0)=\($1)") } + [nil]
        defer { environmentList.forEach { free($0) } }
        let result = posix_spawn(&pid, arguments[0], &actions, nil, argv, environmentList)
        guard result == 0 else { throw FerryError(code: .io, message: "cannot start \(arguments[0]): \(result)") }
        self.pid = pid
    }

    /// Sends SIGKILL and reaps the process; returns its exit status, or nil if it was killed.
    @discardableResult
    public func kill() -> Int32? {
        Glibc.kill(pid, SIGKILL)
        return wait()
    }

    /// Whether it still runs (once it ended, `wait()` gives its status).
    public var isRunning: Bool {
        guard !reaped else { return false }
        // waitid with WNOWAIT: looks without reaping, so `wait()` still gets the status.
        var info = siginfo_t()
        guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 else { return false }
        return info._sifields._sigchld.si_pid == 0
    }

    /// Waits for the process; its exit status, or nil when a signal ended it.
    @discardableResult
    public func wait() -> Int32? {
        guard !reaped else { return nil }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        reaped = true
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : nil
    }

    deinit { if !reaped { kill() } }
}

/// Sleeps for `seconds`.
public func sleepSeconds(_ seconds: Double) {
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}

/// A block target that fails on purpose: a write error after `failAfterBytes` bytes were written,
/// or a sync error. For testing that every I/O failure is clean.
public final class FaultyBlockTarget: BlockTarget {
    public let inner: any BlockTarget
    public var failAfterBytes: Int64?
    public var writeError: Errno
    public var failSynchronize: Bool
    /// Fail the Nth sync (1-based) instead of every one.
    public var failSynchronizeAt: Int?
    /// Reads fail with EIO once this many bytes were read.
    public var failReadAfterBytes: Int64?
    /// The failing write first writes a sector-aligned part of its bytes (a short write), then fails.
    public var tearFailingWrite: Bool
    /// A device that lies: the byte at this offset is written flipped, and no error is reported.
    public var corruptByteAt: Int64?
    /// A device that lies about zeroing: it reports success and leaves the old bytes.
    public var ignoreZeroOut: Bool
    public private(set) var bytesWritten: Int64 = 0
    public private(set) var bytesRead: Int64 = 0
    public private(set) var synchronizations = 0

    public init(
        _ inner: any BlockTarget, failAfterBytes: Int64? = nil, writeError: Errno = .ioError,
        failSynchronize: Bool = false,
        failSynchronizeAt: Int? = nil, failReadAfterBytes: Int64? = nil, tearFailingWrite: Bool = false,
        corruptByteAt: Int64? = nil,
        ignoreZeroOut: Bool = false
    ) {
        self.corruptByteAt = corruptByteAt
        self.ignoreZeroOut = ignoreZeroOut
        self.inner = inner
        self.failAfterBytes = failAfterBytes
        self.writeError = writeError
        self.failSynchronize = failSynchronize
        self.failSynchronizeAt = failSynchronizeAt
        self.failReadAfterBytes = failReadAfterBytes
        self.tearFailingWrite = tearFailingWrite
    }

    public var byteCount: Int64 { inner.byteCount }
    public var logicalSectorSize: Int { inner.logicalSectorSize }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        if let limit = failReadAfterBytes, bytesRead + Int64(buffer.count) > limit {
            throw FerryError.syscall(
                "reading \(buffer.count) bytes at offset \(offset) of", errno: .ioError, path: "faulty device")
        }
        try inner.read(into: buffer, at: offset)
        bytesRead += Int64(buffer.count)
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        if let limit = failAfterBytes, bytesWritten + Int64(bytes.count) > limit {
            if tearFailingWrite {
                let part = Int(max(0, limit - bytesWritten)) / 512 * 512
                if part > 0 { try inner.write(UnsafeRawBufferPointer(rebasing: bytes[..<part]), at: offset) }
            }
            throw FerryError.syscall(
                "writing \(bytes.count) bytes at offset \(offset) of", errno: writeError, path: "faulty device")
        }
        if let corrupt = corruptByteAt, (offset..<(offset + Int64(bytes.count))).contains(corrupt) {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 4096)
            defer { copy.deallocate() }
            copy.copyMemory(from: bytes)
            copy[Int(corrupt - offset)] ^= 0x5a
            try inner.write(UnsafeRawBufferPointer(copy), at: offset)
        } else {
            try inner.write(bytes, at: offset)
        }
        bytesWritten += Int64(bytes.count)
    }

    public func synchronize() throws(FerryError) {
        synchronizations += 1
        if failSynchronize || failSynchronizeAt == synchronizations {
            throw FerryError.syscall("synchronizing", errno: .ioError, path: "faulty device")
        }
        try inner.synchronize()
    }

    public func zeroOut(_ range: Range<Int64>) throws(FerryError) {
        if let limit = failAfterBytes, bytesWritten + Int64(range.count) > limit {
            throw FerryError.syscall("zeroing \(range.count) bytes of", errno: writeError, path: "faulty device")
        }
        if !ignoreZeroOut { try inner.zeroOut(range) }
        bytesWritten += Int64(range.count)
    }
}

/// A logger that discards everything: keeps test output readable.
public let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
