import FerryBundle
import FerryCrypto
import FerrySystem

/// Detached CMS signatures (`manifest.json.<n>.p7s`, the index's signatures), the one part of a
/// bundle read before anything is trusted that a fuzzed input can reach in full.
enum SignatureTargets {
    /// The input is one signature over a fixed document, checked by the trust policy against a
    /// fixed keyring at a fixed time (2027-01-01). The committed seeds were made with
    /// `openssl cms -sign` by a signer of this CA (its keys are not kept).
    @Sendable static func signature(_ input: UnsafeRawBufferPointer) {
        let policy = TrustPolicy(keyring: keyring, threshold: 1, denyList: [], trustedTime: 1_798_761_600, device: nil)
        do {
            let signers = try policy.verifySignatures(
                manifest: content, signatures: [(name: "manifest.json.1.p7s", bytes: Array(input))])
            guard signers.count == 1 else {
                violated("signature", "\(signers.count) signers counted for one signature")
            }
        } catch {}
    }

    static let content =
        Array(#"{"formatVersion": 1, "note": "the content every fuzzed signature is checked against"}"#.utf8) + [0x0A]

    nonisolated(unsafe) static let keyring: Keyring = {
        do throws(FerryError) { return try Keyring(pem: Array(caPEM.utf8), name: "fuzz keyring") } catch {
            fatalError("fuzz target signature: \(error.message)")
        }
    }()

    /// CN=ferry-fuzz-ca (P-256, valid 2026-12-01 to 2036-11-29).
    static let caPEM = """
        -----BEGIN CERTIFICATE-----
        MIIBlTCCATugAwIBAgIUcAdTWkgLRZ0jgUiciGFZHVkCJZkwCgYIKoZIzj0EAwIw
        GDEWMBQGA1UEAwwNZmVycnktZnV6ei1jYTAeFw0yNjEyMDEwMjMwMjRaFw0zNjEx
        MjgwMjMwMjRaMBgxFjAUBgNVBAMMDWZlcnJ5LWZ1enotY2EwWTATBgcqhkjOPQIB
        BggqhkjOPQMBBwNCAAR+gwj0uAkFPH+vqGFblNc9XbH0AYI5g1ZhWUExAhkO9g7H
        VXb3CCA5JTzM29sPh/Hf6g1LrIb/FXRULtdEwksvo2MwYTAdBgNVHQ4EFgQUtxLd
        P6URqy5XdoQdcwdPTqoA4/wwHwYDVR0jBBgwFoAUtxLdP6URqy5XdoQdcwdPTqoA
        4/wwDgYDVR0PAQH/BAQDAgEGMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
        SAAwRQIhANrLqvKDcq8ou/y00hBkXFz8ggO5Pw7BiQqE2M2LQVFHAiBNmgjuXtba
        gu803FfgcPl7uVbRWPrNThyNCyDQuBu+/A==
        -----END CERTIFICATE-----
        """
}
