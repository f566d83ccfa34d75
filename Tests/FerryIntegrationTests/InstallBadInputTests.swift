import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Logging
import Testing

/// Every bad bundle given to `ferry install`: a one-line error with its exit status, the booted
/// group byte-identical, the boot order unchanged, and the target never made primary.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct InstallBadInputTests {
    struct Fixture {
        let dir: String
        let sandbox: Sandbox
        let bundle: String
        let groupA: SHA256Digest

        init(_ dir: String) throws {
            self.dir = dir
            sandbox = try Sandbox.make(in: dir)
            bundle = "\(dir)/update.ferry"
            try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: bundle, seed: 5)
            groupA = try Self.hashGroupA(sandbox)
        }

        static func hashGroupA(_ sandbox: Sandbox) throws -> SHA256Digest {
            let table = try PartitionTable.read(sandbox.diskPath)
            let hasher = SHA256Hasher()
            for label in ["rootfs_a", "modem_a", "tee_a"] {
                let partition = try table.partition(.partitionLabel(label), disk: sandbox.diskPath)
                hasher.update(
                    try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(
                        at: 0, count: Int(partition.byteCount)))
            }
            return hasher.finalize()
        }

        /// Members of the bundle with their content offsets.
        func members() throws -> [TarMember] {
            let reader = TarReader(source: try FileByteSource(path: bundle))
            var result: [TarMember] = []
            while let member = try reader.nextMember() { result.append(member) }
            return result
        }

        func expectRefused(
            _ bytes: [UInt8], status: Int32, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            try makeFile("\(dir)/bad.ferry", bytes: bytes)
            let result = try Shell.run([
                TestEnvironment.ferryBinary, "install", "\(dir)/bad.ferry", "--progress", "json", "--config",
                sandbox.configurationPath,
            ])
            #expect(result.status == status, "\(what): \(result.output)", sourceLocation: sourceLocation)
            let errors = result.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error: ") }
            #expect(errors.count == 1, "\(what): \(result.output)", sourceLocation: sourceLocation)
            #expect(try Self.hashGroupA(sandbox) == groupA, "\(what) changed group A", sourceLocation: sourceLocation)
            let environment = try Shell.check([
                TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
            ])
            #expect(environment.contains("BOOT_ORDER=A B"), "\(what) switched", sourceLocation: sourceLocation)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty, sourceLocation: sourceLocation)
        }
    }

    @Test func flippedBytesTruncationsAndTrailingGarbage() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let good = try readFile(fixture.bundle)
            let members = try fixture.members()
            let rootfs = try #require(members.first { $0.name == "rootfs.img\(TestEnvironment.payloadSuffix)" })
            // A byte flipped in the first, a middle and the last chunk of a payload.
            for (where_, offset) in [
                ("first", rootfs.offset + 100), ("middle", rootfs.offset + rootfs.size / 2),
                ("last", rootfs.offset + rootfs.size - 50),
            ] {
                var bytes = good
                bytes[Int(offset)] ^= 0x20
                try fixture.expectRefused(bytes, status: 41, "byte flipped in the \(where_) chunk")
            }
            // Truncated at every member boundary and in the middle of each payload.
            var cuts: [Int64] = []
            for member in members {
                cuts.append(member.headerOffset)
                cuts.append(member.offset)
                if member.size > 4096 { cuts.append(member.offset + member.size / 2) }
            }
            cuts.append(members.last!.offset + ((members.last!.size + 511) / 512) * 512)  // before the end marker
            for cut in cuts where cut > 0 && cut < Int64(good.count) {
                try fixture.expectRefused(
                    Array(good.prefix(Int(cut))), status: cut < 1536 ? 40 : 40, "truncated at \(cut)")
            }
            // Trailing garbage after the archive.
            try fixture.expectRefused(good + Array("garbage".utf8), status: 41, "trailing garbage")
        }
    }

    @Test func corruptXZWhoseHashesMatch() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let members = try fixture.members()
            let reader = TarReader(source: try FileByteSource(path: fixture.bundle))
            var contents: [String: [UInt8]] = [:]
            while let member = try reader.nextMember() {
                contents[member.name] = try reader.readRemainingContent(maximumCount: 64 << 20)
            }
            // Corrupt the xz data of the first rootfs chunk, then fix the chunk's compressed hash in
            // the manifest and sign it again: only the decoder can notice now.
            var manifest = try Manifest.parse(contents["manifest.json"]!)
            var payload = contents["rootfs.img\(TestEnvironment.payloadSuffix)"]!
            let chunk = manifest.payloads.firstIndex { $0.target == "rootfs" }!
            let first = manifest.payloads[chunk].chunks[0]
            payload[Int(first.offset + first.size / 2)] ^= 0x55
            manifest.payloads[chunk].chunks[0].sha256 = SHA256Hasher.hash(
                Array(payload[Int(first.offset)..<Int(first.offset + first.size)]))
            let manifestBytes = manifest.serialized()
            let signature = try CMS.sign(
                content: manifestBytes, certificatePath: "\(dir)/pki/signer1.pem", keyPath: "\(dir)/pki/signer1.key")
            let sink = MemoryByteSink()
            let tar = TarWriter(sink: sink)
            try tar.addMember(name: "manifest.json", bytes: manifestBytes)
            try tar.addMember(name: "manifest.json.1.p7s", bytes: signature)
            for member in members where !member.name.hasPrefix("manifest.json") {
                try tar.addMember(
                    name: member.name,
                    bytes: member.name == "rootfs.img\(TestEnvironment.payloadSuffix)"
                        ? payload : contents[member.name]!)
            }
            try tar.finish()
            try fixture.expectRefused(sink.bytes, status: 41, "corrupt xz stream")
        }
    }

    @Test func mountedTargetSlot() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let partition = try PartitionTable.read(fixture.sandbox.diskPath).partition(
                .partitionLabel("modem_b"), disk: fixture.sandbox.diskPath)
            try DurableFile.createDirectory("\(dir)/mnt")
            // An operator mounted the target's modem slot (through its own loop device).
            try Shell.check([
                "sh", "-c",
                "dd if=/dev/zero of=\(dir)/fs.img bs=1M count=8 status=none && mkfs.ext4 -q -F \(dir)/fs.img && dd if=\(dir)/fs.img of=\(fixture.sandbox.diskPath) bs=1M seek=\(partition.startOffset >> 20) conv=notrunc status=none",
            ])
            try Shell.check([
                "mount", "-o", "loop,offset=\(partition.startOffset),sizelimit=\(partition.byteCount)",
                fixture.sandbox.diskPath, "\(dir)/mnt",
            ])
            defer { _ = try? Shell.run(["umount", "\(dir)/mnt"]) }
            let result = try Shell.run([
                TestEnvironment.ferryBinary, "install", fixture.bundle, "--config", fixture.sandbox.configurationPath,
            ])
            #expect(result.status == 21, "\(result.output)")
            #expect(try Fixture.hashGroupA(fixture.sandbox) == fixture.groupA)
            // Refused before anything was written: B is not even marked bad.
            let journal = StateStore(directory: try fixture.sandbox.configuration().stateDirectory).installJournal()
            #expect(journal == nil)
            let environment = try Shell.check([
                TestEnvironment.ferryBinary, "env", "list", "--config", fixture.sandbox.configurationPath,
            ])
            #expect(environment.contains("BOOT_ORDER=A B"))
        }
    }
}
