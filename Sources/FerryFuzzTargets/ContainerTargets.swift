import FerryBundle
import FerrySystem

/// The bundle container and the bundle reader.
enum ContainerTargets {
    /// Members of an archive read as the bundle reader and `bundle info` do: content read in
    /// small pieces, skipped, or read whole for small members; then the end checked.
    @Sendable static func tar(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        readArchive(bytes)
        let repaired = TarRepair.fixingChecksums(bytes)
        if repaired != bytes { readArchive(repaired) }
    }

    private static func readArchive(_ bytes: [UInt8]) {
        let tar = TarReader(source: MemoryByteSource(bytes, name: "fuzz.tar"), maximumMemberSize: 1 << 30)
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: 97, alignment: 16)
        defer { piece.deallocate() }
        do throws(FerryError) {
            var index = 0
            while let member = try tar.nextMember() {
                guard member.kind == .file, !member.name.isEmpty, member.size >= 0,
                    member.offset >= member.headerOffset + 512
                else {
                    violated("tar", "member \(member) is not a regular file with a name, a size and a place")
                }
                switch index % 3 {
                case 0: _ = try tar.readRemainingContent(maximumCount: 1 << 16)
                case 1:
                    try tar.skipContent(7)
                    _ = try tar.readContent(into: piece)
                default: break  // skipped by the next nextMember()
                }
                index += 1
            }
            try tar.finishAndCheckEnd()
        } catch {}
    }

    /// A bundle up to its payloads, without the signature check (which no fuzzed input passes):
    /// the manifest and signature members, the manifest parsed as if trusted, the keyring member,
    /// then each payload member chunk by chunk (every chunk's hash checked) and the archive end.
    @Sendable static func bundle(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        readBundle(bytes)
        let repaired = TarRepair.fixingChecksums(bytes)
        if repaired != bytes { readBundle(repaired) }
    }

    private static func readBundle(_ bytes: [UInt8]) {
        let reader = BundleReader(source: MemoryByteSource(bytes, name: "fuzz.bundle"))
        do throws(FerryError) {
            try reader.readSignedManifest()
            guard reader.signatures.count <= BundleReader.maximumSignatures else {
                violated("bundle", "\(reader.signatures.count) signatures were read")
            }
            let manifest = try Manifest.parse(reader.manifestBytes)
            if let keyring = manifest.keyring {
                _ = try reader.nextMember(named: keyring.member, size: keyring.size)
                _ = try reader.tar.readRemainingContent(maximumCount: Int(keyring.size))
            }
            for payload in manifest.payloads {
                // A signed manifest may ask for 64 MiB chunks; the fuzzer keeps to small ones.
                guard payload.chunkSize <= 1 << 20 else { return }
                try reader.readPayload(payload) { (_, _, _) throws(FerryError) in }
            }
            try reader.finish()
        } catch {}
    }
}

/// Tar headers with their checksums recomputed: a random mutation of a header almost never keeps
/// the checksum right, so the targets that read archives also read this repaired copy to reach
/// the checks behind the checksum.
enum TarRepair {
    static func fixingChecksums(_ input: [UInt8]) -> [UInt8] {
        var bytes = input
        var offset = 0
        while offset + 512 <= bytes.count {
            let header = offset..<(offset + 512)
            if bytes[header].allSatisfy({ $0 == 0 }) {
                offset += 512
                continue
            }
            var sum = 0
            for index in header { sum += (148..<156).contains(index - offset) ? 32 : Int(bytes[index]) }
            let digits = Array(String(sum, radix: 8).utf8)
            let field =
                [UInt8](repeating: UInt8(ascii: "0"), count: max(0, 6 - digits.count)) + digits.suffix(6) + [0, 32]
            bytes.replaceSubrange((offset + 148)..<(offset + 156), with: field)
            var size = 0
            for byte in bytes[(offset + 124)..<(offset + 136)] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte) else { continue }
                size = min(size * 8 + Int(byte - UInt8(ascii: "0")), 1 << 40)
            }
            offset += 512 + (size + 511) / 512 * 512
        }
        return bytes
    }
}
