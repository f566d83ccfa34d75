import SystemPackage

/// The one domain error of Ferry.
///
/// Every failure that reaches the user is a `FerryError`: a stable ``Code`` (compared by code only,
/// mapped to a documented exit status), a one-line ``message`` that names the path, slot or
/// operation, an optional underlying ``cause`` (an `Errno`, a C library error or another
/// `FerryError`) and the source location that raised it.
public struct FerryError: Error, CustomStringConvertible, Sendable {
    /// A stable failure class. Tests assert on codes, never on messages.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: String, Sendable, CaseIterable {
            case usage
            case configurationNotFound, configurationInvalid
            case deviceNotFound, deviceInUse, deviceBooted, deviceNotConfigured, deviceTooSmall, sourceMismatch
            case io, permissionDenied, noSpace, loopDevice, unsupported
            case unknownSlot, nothingToRollBack
            case readBackMismatch
            case truncated, bundleInvalid, signatureInvalid, untrusted, notCompatible, downgrade, expired,
                limitExceeded, notIndexed
            case notAddressed, deviceKeyInvalid, notEncrypted
            case bootEnvironmentInvalid, bootEnvironmentTooSmall, bootEnvironmentUnsupported
            case healthCheckFailed, onTrial, hookFailed, bootloaderForeign
            case stateInvalid, lockHeld
            case network, tlsHandshake, pinMismatch, httpStatus, timeout, contentChanged, insecureURL, tooSlow
            case `internal`
        }

        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The command line was wrong (exit 2).
        public static let usage = Code(.usage)
        /// The system configuration file does not exist or cannot be read.
        public static let configurationNotFound = Code(.configurationNotFound)
        /// The system configuration is malformed or inconsistent.
        public static let configurationInvalid = Code(.configurationInvalid)
        /// A device, partition or image file named by the configuration does not exist.
        public static let deviceNotFound = Code(.deviceNotFound)
        /// The device is mounted, held, or opened exclusively by someone else.
        public static let deviceInUse = Code(.deviceInUse)
        /// The device belongs to the booted slot group.
        public static let deviceBooted = Code(.deviceBooted)
        /// The device is not named in the system configuration.
        public static let deviceNotConfigured = Code(.deviceNotConfigured)
        /// The device is smaller than the configuration or the payload requires.
        public static let deviceTooSmall = Code(.deviceTooSmall)
        /// A slot Ferry reads from (a delta's source, a booted member to copy) is not the image the
        /// bundle or the state record needs: nothing was written; `ferry update` then takes the
        /// full bundle.
        public static let sourceMismatch = Code(.sourceMismatch)
        /// A rollback was asked for, but there is no previous version to return to.
        public static let nothingToRollBack = Code(.nothingToRollBack)
        /// A read, write or sync failed (EIO and friends).
        public static let io = Code(.io)
        /// The operation needs privileges the process does not have.
        public static let permissionDenied = Code(.permissionDenied)
        /// The device or file system is full.
        public static let noSpace = Code(.noSpace)
        /// A loop device could not be attached, configured or detached.
        public static let loopDevice = Code(.loopDevice)
        /// The kernel or device does not support the operation.
        public static let unsupported = Code(.unsupported)
        /// A written slot reads back differently from what was written (a failing device).
        public static let readBackMismatch = Code(.readBackMismatch)
        /// A stream (bundle, payload) ended before its declared end.
        public static let truncated = Code(.truncated)
        /// A bundle's container or manifest is malformed (bad tar member, odd name, bad JSON, bad table).
        public static let bundleInvalid = Code(.bundleInvalid)
        /// A signature is missing, malformed, or does not match the signed data.
        public static let signatureInvalid = Code(.signatureInvalid)
        /// Signatures are valid but not enough trusted, non-denied, currently valid signers made them.
        public static let untrusted = Code(.untrusted)
        /// The bundle is for another device (`compatible`).
        public static let notCompatible = Code(.notCompatible)
        /// The version is older than the booted one, or the security version below the floor.
        public static let downgrade = Code(.downgrade)
        /// The bundle (or a signer's certificate) has expired.
        public static let expired = Code(.expired)
        /// A size or count read before verification exceeds Ferry's limits.
        public static let limitExceeded = Code(.limitExceeded)
        /// The bundle is not the one the signed update index names: its manifest, version,
        /// compatible, payloads, size or SHA-256 differ from the index entry (a swapped bundle).
        public static let notIndexed = Code(.notIndexed)
        /// The bundle is encrypted, but not to this device: no recipient of its key envelope opens
        /// with the device's key (or matches its certificate).
        public static let notAddressed = Code(.notAddressed)
        /// The device key cannot be used: not configured while the bundle is encrypted, unreadable,
        /// not loadable from its OpenSSL provider, or not the key of its certificate.
        public static let deviceKeyInvalid = Code(.deviceKeyInvalid)
        /// The device requires encrypted bundles (`requireEncryption`) and this one is not.
        public static let notEncrypted = Code(.notEncrypted)
        /// A slot, group or bootname given on the command line is not in the configuration.
        public static let unknownSlot = Code(.unknownSlot)
        /// A boot environment is missing, corrupt (no valid copy) or malformed, or its location is.
        public static let bootEnvironmentInvalid = Code(.bootEnvironmentInvalid)
        /// The variables do not fit into the boot environment.
        public static let bootEnvironmentTooSmall = Code(.bootEnvironmentTooSmall)
        /// The environment cannot be changed atomically (single raw copy without opt-in, MTD device).
        public static let bootEnvironmentUnsupported = Code(.bootEnvironmentUnsupported)
        /// The configured health check failed or timed out.
        public static let healthCheckFailed = Code(.healthCheckFailed)
        /// The booted group is not confirmed yet, so the other group is its only fallback.
        public static let onTrial = Code(.onTrial)
        /// A pre- or post-install hook failed or timed out.
        public static let hookFailed = Code(.hookFailed)
        /// A bootloader slot's selector (MBR sector, GPT) selects neither of its regions, changed
        /// since Ferry recorded it, or is damaged in a way no update of Ferry's explains.
        public static let bootloaderForeign = Code(.bootloaderForeign)
        /// A state file in the state directory is unreadable or malformed.
        public static let stateInvalid = Code(.stateInvalid)
        /// Another Ferry command holds the global lock.
        public static let lockHeld = Code(.lockHeld)
        /// The server cannot be reached, or the connection broke and the retries ran out.
        public static let network = Code(.network)
        /// The TLS handshake failed: protocol older than TLS 1.2, chain or hostname check, client certificate.
        public static let tlsHandshake = Code(.tlsHandshake)
        /// The server's certificate matches none of the configured pins (or no pin is configured for the host).
        public static let pinMismatch = Code(.pinMismatch)
        /// The server answered with an error status (404, 500, …), a redirect loop, or a malformed response.
        public static let httpStatus = Code(.httpStatus)
        /// A connection, or a transfer that stalled, timed out and the retries ran out.
        public static let timeout = Code(.timeout)
        /// The file on the server changed during the download (ETag, Last-Modified or size differ).
        public static let contentChanged = Code(.contentChanged)
        /// A URL (or a redirect) is not https://: Ferry never downloads over plain HTTP.
        public static let insecureURL = Code(.insecureURL)
        /// A download gave up within its bounds: slower than `network.minimumRate` over
        /// `network.rateWindowSeconds`, or more than `network.maximumReconnects` reconnections.
        public static let tooSlow = Code(.tooSlow)
        /// A bug: an invariant of Ferry itself did not hold.
        public static let `internal` = Code(.internal)

        /// The stable name of the code, as printed by `--verbose` and documented in docs/errors.md.
        public var name: String { wrapped.rawValue }

        /// The process exit status for this failure class (docs/errors.md).
        public var exitStatus: Int32 {
            switch wrapped {
            case .usage: 2
            case .configurationNotFound: 10
            case .configurationInvalid: 11
            case .deviceNotFound: 20
            case .deviceInUse: 21
            case .deviceBooted: 22
            case .deviceNotConfigured: 23
            case .deviceTooSmall: 24
            case .io: 25
            case .permissionDenied: 26
            case .noSpace: 27
            case .loopDevice: 28
            case .unsupported: 29
            case .unknownSlot: 12
            case .nothingToRollBack: 13
            case .sourceMismatch: 30
            case .notAddressed: 31
            case .deviceKeyInvalid: 32
            case .notEncrypted: 33
            case .truncated: 40
            case .readBackMismatch: 48
            case .bundleInvalid: 41
            case .signatureInvalid: 42
            case .untrusted: 43
            case .notCompatible: 44
            case .downgrade: 45
            case .expired: 46
            case .limitExceeded: 47
            case .notIndexed: 49
            case .bootEnvironmentInvalid: 80
            case .bootEnvironmentTooSmall: 81
            case .bootEnvironmentUnsupported: 82
            case .healthCheckFailed: 83
            case .onTrial: 84
            case .hookFailed: 85
            case .bootloaderForeign: 86
            case .stateInvalid: 60
            case .lockHeld: 61
            case .network: 50
            case .tlsHandshake: 51
            case .pinMismatch: 52
            case .httpStatus: 53
            case .timeout: 54
            case .contentChanged: 55
            case .insecureURL: 56
            case .tooSlow: 57
            case .internal: 70
            }
        }

        public var description: String { name }

        /// Every code, in declaration order (docs/errors.md lists them all; a test checks it).
        public static let all: [Code] = Wrapped.allCases.map(Code.init)
    }

    public var code: Code
    public var message: String
    public var cause: (any Error & Sendable)?
    public var location: String

    public init(
        code: Code, message: String, cause: (any Error & Sendable)? = nil,
        fileID: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.cause = cause
        self.location = "\(fileID):\(line)"
    }

    public var description: String { message }

    /// Returns a copy whose message is prefixed with `context` (as errors cross layers).
    public func prefixed(_ context: String) -> FerryError {
        var copy = self
        copy.message = "\(context): \(message)"
        return copy
    }

    /// The message followed by the chain of causes, one per line, for `--verbose`.
    public func detailedDescription() -> String {
        var lines = ["\(message) [\(code.name), exit \(code.exitStatus), at \(location)]"]
        var next: (any Error)? = cause
        var depth = 1
        while let error = next {
            let indent = String(repeating: "  ", count: depth)
            if let ferry = error as? FerryError {
                lines.append("\(indent)caused by: \(ferry.message) [\(ferry.code.name), at \(ferry.location)]")
                next = ferry.cause
            } else if let errno = error as? Errno {
                lines.append("\(indent)caused by: \(errno) (errno \(errno.rawValue))")
                next = nil
            } else {
                lines.append("\(indent)caused by: \(error)")
                next = nil
            }
            depth += 1
        }
        return lines.joined(separator: "\n")
    }
}

extension FerryError {
    /// Maps a failed system call to a domain error, naming the operation and the path.
    ///
    /// `what` is a verb phrase ("opening", "writing 4096 bytes at offset 0 of", …).
    public static func syscall(
        _ what: String, errno: Errno, path: String, fileID: String = #fileID, line: Int = #line
    ) -> FerryError {
        let code: Code
        let reason: String
        switch errno {
        case .noSuchFileOrDirectory, .noSuchAddressOrDevice:
            code = .deviceNotFound
            reason = "does not exist"
        case .resourceBusy:
            code = .deviceInUse
            reason = "is in use (mounted, held, or opened exclusively by another process)"
        case .permissionDenied, .notPermitted:
            code = .permissionDenied
            reason = "permission denied (run as root?)"
        case .readOnlyFileSystem:
            code = .permissionDenied
            reason = "is read-only"
        case .noSpace:
            code = .noSpace
            reason = "no space left on device"
        case .notSupported, .inappropriateIOCTLForDevice, .noFunction, .operationNotSupportedByDevice:
            code = .unsupported
            reason = "not supported by this device or kernel (\(errno))"
        case .wouldBlock:
            code = .deviceInUse
            reason = "is locked by another process"
        default:
            code = .io
            reason = "\(errno)"
        }
        return FerryError(
            code: code, message: "\(what) '\(path)' failed: \(reason)", cause: errno, fileID: fileID, line: line)
    }
}
