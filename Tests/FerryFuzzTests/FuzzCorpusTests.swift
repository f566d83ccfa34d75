import FerryBundle
import FerryCrypto
import Testing

@testable import FerryFuzzTargets

/// Replays the committed fuzz corpus (Tests/FuzzCorpus/<target>/: seeds and every crash input
/// found so far) through the fuzz targets, without the fuzzer: each input must run to its end
/// (accepted, or refused with a FerryError) without a crash.
@Suite(.serialized)
struct FuzzCorpusTests {
    static let corpus: String = {
        let file = #filePath
        let tests = file.split(separator: "/", omittingEmptySubsequences: false).dropLast(2).joined(separator: "/")
        return "\(tests)/FuzzCorpus"
    }()

    @Test(arguments: FuzzTargets.all.map(\.name))
    func replay(_ name: String) throws {
        let target = try #require(FuzzTargets.named(name))
        let files = FuzzCorpus.files("\(Self.corpus)/\(name)").filter { !$0.hasSuffix("/README") }
        #expect(files.count >= 3, "the corpus of \(name) has \(files.count) files")
        var total = 0
        for file in files {
            let bytes = try #require(FuzzCorpus.read(file), "cannot read \(file)")
            total += bytes.count
            target.run(bytes)
        }
        #expect(total < 1 << 20, "the corpus of \(name) holds \(total) bytes (keep it under 1 MiB)")
    }

    /// The committed signatures were made outside (openssl cms): the valid one must pass the
    /// policy the target uses, or the target would never get past the refusals.
    @Test func theValidSignatureSeedVerifies() throws {
        let bytes = try #require(FuzzCorpus.read("\(Self.corpus)/signature/valid.p7s"))
        let policy = TrustPolicy(
            keyring: SignatureTargets.keyring, threshold: 1, denyList: [], trustedTime: 1_798_761_600, device: nil)
        let signers = try policy.verifySignatures(
            manifest: SignatureTargets.content, signatures: [(name: "valid.p7s", bytes: bytes)])
        #expect(signers.count == 1)
    }

    @Test func everyCorpusFolderIsATarget() {
        let folders = FuzzCorpus.folders(Self.corpus)
        #expect(Set(folders) == Set(FuzzTargets.all.map(\.name)))
    }
}
