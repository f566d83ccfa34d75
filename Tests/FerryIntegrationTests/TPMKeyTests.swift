import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A device key that only a TPM holds: a software TPM (`swtpm`), a key made inside it with
/// `tpm2-tools` and persisted at a handle, and Ferry loading it through the TPM's OpenSSL
/// provider (`tpm2-openssl`) by URI (docs/encryption.md).
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"),
    .enabled(
        if: SoftwareTPM.available, "needs swtpm, tpm2-tools and tpm2-openssl (tools/install-deps installs them)"))
struct TPMKeyTests {
    @Test func anEncryptedBundleInstallsWithAKeyOnlyTheTPMHolds() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let tpm = try SoftwareTPM.start(in: "\(dir)/tpm")
            defer { tpm.stop() }
            let handle = "0x81000010"
            try tpm.makeDecryptionKey(at: handle, publicKey: "\(dir)/tpm-public.pem")
            // The device certificate: the TPM key's public half, issued by a throw-away CA.
            try Shell.check([
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "\(dir)/fleet-ca.key", "-out", "\(dir)/fleet-ca.pem", "-subj", "/CN=Fleet CA", "-days", "30",
            ])
            try Shell.check([
                "openssl", "x509", "-new", "-subj", "/CN=tpm-device", "-force_pubkey", "\(dir)/tpm-public.pem", "-CA",
                "\(dir)/fleet-ca.pem", "-CAkey", "\(dir)/fleet-ca.key", "-days", "30", "-out", "\(dir)/device.pem",
            ])
            // Debian 12's tpm2-openssl (1.1.1) decrypts PKCS #1 v1.5 only.
            let images = try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/e.ferry", seed: 14,
                encryptTo: ["\(dir)/device.pem"], rsaPadding: .pkcs1)
            try sandbox.editConfiguration { object in
                object["deviceKey"] = .object([
                    "key": .string("handle:\(handle)"), "certificate": .string("device.pem"),
                    "providers": .array([.string("tpm2")]),
                ])
                object["requireEncryption"] = .bool(true)
            }
            let environment = ["TPM2OPENSSL_TCTI": tpm.tcti]
            let result = try EncryptedInstallTests.ferry(
                sandbox, ["install", "\(dir)/e.ferry"], environment: environment)
            try EncryptedInstallTests.expectInstalled(sandbox, result, images)
            // Without the TPM there is no key: the same command is refused before anything is written.
            tpm.stop()
            try sandbox.editConfiguration { $0["requireEncryption"] = .bool(true) }
            let without = try EncryptedInstallTests.ferry(
                sandbox, ["install", "\(dir)/e.ferry", "--force"], environment: environment)
            #expect(without.status == FerryError.Code.deviceKeyInvalid.exitStatus, "\(without.output)")
        }
    }
}

/// A software TPM 2.0 on a local TCP port, for one test.
struct SoftwareTPM {
    let directory: String
    let port: Int
    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    static var available: Bool {
        ["swtpm", "tpm2_createprimary", "tpm2_evictcontrol"].allSatisfy(TestEnvironment.hasCommand)
            && ["/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so", "/usr/lib/aarch64-linux-gnu/ossl-modules/tpm2.so"]
                .contains(where: TextFile.exists)
    }

    /// Starts swtpm with a new state in `directory`.
    static func start(in directory: String) throws -> SoftwareTPM {
        try DurableFile.createDirectory(directory)
        // A port of this process's own, with the next one for swtpm's control channel.
        let port = 20_000 + Int(getpid() % 5_000) * 2
        try Shell.check([
            "swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(directory)", "--server", "type=tcp,port=\(port)",
            "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear", "--daemon", "--pid",
            "file=\(directory)/pid",
        ])
        let tpm = SoftwareTPM(directory: directory, port: port)
        let deadline = WallClock.monotonicSeconds() + 10
        while try tpm.tool(["tpm2_getcap", "properties-fixed"]).status != 0 {
            guard WallClock.monotonicSeconds() < deadline else {
                tpm.stop()
                throw FerryError(code: .io, message: "swtpm did not answer on port \(port)")
            }
            sleepSeconds(0.1)
        }
        return tpm
    }

    func tool(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run(arguments, environment: ["TPM2TOOLS_TCTI": tcti, "TPM2OPENSSL_TCTI": tcti])
    }

    /// Creates an RSA 2048 decryption key inside the TPM (its private half never leaves it),
    /// persists it at `handle`, and writes its public half to `publicKey` (PEM).
    func makeDecryptionKey(at handle: String, publicKey: String) throws {
        // Without a resource manager, each tool leaves its transient objects loaded: flushed between steps.
        for step in [
            ["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "\(directory)/primary.ctx"],
            [
                "tpm2_create", "-C", "\(directory)/primary.ctx", "-G", "rsa2048", "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt", "-u", "\(directory)/key.pub", "-r",
                "\(directory)/key.priv",
            ],
            [
                "tpm2_load", "-C", "\(directory)/primary.ctx", "-u", "\(directory)/key.pub", "-r",
                "\(directory)/key.priv", "-c", "\(directory)/key.ctx",
            ],
            ["tpm2_evictcontrol", "-C", "o", "-c", "\(directory)/key.ctx", handle],
            [
                "openssl", "pkey", "-provider", "tpm2", "-provider", "default", "-in", "handle:\(handle)", "-pubout",
                "-out", publicKey,
            ],
        ] {
            let result = try tool(step)
            guard result.status == 0 else {
                throw FerryError(code: .io, message: "\(step[0]) failed: \(result.output)")
            }
            _ = try tool(["tpm2_flushcontext", "-t"])
        }
    }

    func stop() {
        guard let text = try? TextFile.read("\(directory)/pid"),
            let pid = Int32(text.filter(\.isNumber))
        else { return }
        kill(pid, SIGTERM)
        let deadline = WallClock.monotonicSeconds() + 5
        while kill(pid, 0) == 0 && WallClock.monotonicSeconds() < deadline { sleepSeconds(0.05) }
        FileSystem.removeIfPossible("\(directory)/pid")
    }
}
