import FerryBundle
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import SystemPackage

extension Sandbox {
    /// Writes seeded images for the given slot classes next to the sandbox and a bundle of them,
    /// signed by the sandbox's `signer`, in chunks of 1 MiB.
    /// - Parameter zeroChunks: per slot class, the 1 MiB chunks of its image that are all zeros
    ///   (the empty blocks of a filesystem image, which installs zero first).
    /// - Returns: the images, by slot class, in the given order.
    @discardableResult
    func makeUpdate(
        _ sizes: [(slotClass: String, bytes: Int)], output: String, version: String = "1.1.0",
        signer: String = "signer1",
        preset: Int = 6, seed: UInt64 = 0, zeroChunks: [String: [Int]] = [:], encryptTo recipients: [String] = [],
        rsaPadding: Envelope.RSAPadding = .oaep
    ) throws -> [(String, [UInt8])] {
        var images: [(String, [UInt8])] = []
        for (slotClass, count) in sizes {
            var bytes = seededBytes(count: count, seed: seed &+ UInt64(count))
            for chunk in zeroChunks[slotClass] ?? [] {
                let range = (chunk << 20)..<min((chunk + 1) << 20, count)
                bytes.replaceSubrange(range, with: repeatElement(0, count: range.count))
            }
            try makeFile("\(directory)/\(slotClass).img", bytes: bytes)
            images.append((slotClass, bytes))
        }
        var options = BundleWriter.Options.forTests(
            compatible: "ferry-demo-x86_64", version: SemanticVersion(version)!,
            images: sizes.map { BundleWriter.Image(slotClass: $0.slotClass, path: "\(directory)/\($0.slotClass).img") },
            signers: [
                BundleWriter.Signer(
                    certificate: "\(directory)/pki/\(signer).pem", key: "\(directory)/pki/\(signer).key")
            ])
        options.chunkSize = 1 << 20
        options.preset = preset
        options.recipients = recipients
        options.rsaPadding = rsaPadding
        try BundleWriter.create(options, output: output, logger: quietLogger)
        return images
    }
}

extension Sandbox {
    /// Formats partition `label` of the disk as ext4 and mounts it at `mountPoint` (made if needed)
    /// through a loop device over the whole disk while `body` runs; unmounts and detaches after,
    /// also on failure. `body` gets the partition's node.
    func withMountedPartition<T>(_ label: String, at mountPoint: String, _ body: (String) throws -> T) async throws -> T
    {
        let partition = try PartitionTable.read(diskPath).partition(.partitionLabel(label), disk: diskPath)
        try DurableFile.createDirectory(mountPoint)
        return try await withLoopDevice(diskPath) { loop in
            let node = try loop.partitionDevice(partition)
            try Shell.check(["mkfs.ext4", "-q", "-F", node])
            try Shell.check(["mount", node, mountPoint])
            defer { _ = try? Shell.run(["umount", mountPoint]) }
            return try body(node)
        }
    }
}

extension Sandbox {
    /// Changes the sandbox's system.json: `change` edits its top-level object.
    func editConfiguration(_ change: (inout [String: JSONValue]) throws -> Void) throws {
        var object =
            try JSONValue.parse(try readFile(configurationPath), what: "system.json", code: .internal).objectValue
            ?? [:]
        try change(&object)
        try DurableFile.write(
            String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: configurationPath)
    }

    /// Makes a device key and certificate (`<name>.key`, `<name>.pem` in the sandbox's folder):
    /// RSA 2048 or EC P-256.
    func makeDeviceKey(_ name: String, ec: Bool = false) throws {
        try Shell.check(
            [
                "openssl", "req", "-x509", "-nodes", "-keyout", "\(directory)/\(name).key", "-out",
                "\(directory)/\(name).pem",
            ]
                + (ec ? ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] : ["-newkey", "rsa:2048"])
                + ["-subj", "/CN=\(name)", "-days", "30"])
    }
}

extension BundleWriter.Options {
    /// Options whose payloads use ``TestEnvironment/payloadCodec`` (xz, or zstd at level 3 when
    /// tools/test runs the install suites a second time with FERRY_TEST_CODEC=zstd).
    static func forTests(
        compatible: String, version: SemanticVersion, images: [BundleWriter.Image], signers: [BundleWriter.Signer]
    ) -> Self {
        var options = Self(compatible: compatible, version: version, images: images, signers: signers)
        options.codec = Manifest.Compression(rawValue: TestEnvironment.payloadCodec) ?? .xz
        options.zstdLevel = 3
        return options
    }
}
