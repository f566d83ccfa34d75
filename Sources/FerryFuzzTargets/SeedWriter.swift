import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerryDelta
import FerryJSON
import FerrySystem

/// Writes the seeds that Ferry's own writers make (`ferry-fuzz make-seeds <corpus folder>`):
/// deltas by `DeltaGenerator` against the delta target's source, archives by `TarWriter`,
/// manifests and indexes by their serializers, environments by their codecs, state files by
/// `StateStore`, each with a few broken variants. tools/fuzz adds what outside tools make
/// (mkenvimage, grub-editenv, GNU tar, `ferry bundle create`, the sandbox's system.json).
public enum SeedWriter {
    public static func write(into corpus: String) throws(FerryError) {
        let seeds = Seeds(corpus: corpus)
        try deltas(seeds)
        try archives(seeds)
        try documents(seeds)
        try environments(seeds)
        try state(seeds)
        try settings(seeds)
    }

    final class Seeds {
        let corpus: String
        init(corpus: String) { self.corpus = corpus }

        func put(_ target: String, _ name: String, _ bytes: [UInt8]) throws(FerryError) {
            precondition(FuzzTargets.named(target) != nil, "no fuzz target \(target)")
            try DurableFile.createDirectory("\(corpus)/\(target)")
            try DurableFile.write(bytes, to: "\(corpus)/\(target)/\(name)")
        }

        func put(_ target: String, _ name: String, _ text: String) throws(FerryError) {
            try put(target, name, Array(text.utf8))
        }
    }

    // MARK: - Deltas

    private static func deltas(_ seeds: Seeds) throws(FerryError) {
        let source = DeltaTargets.source
        var changed = source
        for index in stride(from: 5000, to: 9000, by: 7) { changed[index] ^= 0x5A }
        changed.replaceSubrange(40000..<40040, with: Array("a changed line in the text region of it!".utf8))
        // Blocks moved: the last 4 KiB first.
        let moved = Array(source[(60 << 10)...] + source[..<(60 << 10)])
        // Grown: new data and zeros appended; shrunk: the first 20 KiB.
        var grown = source + [UInt8](repeating: 0, count: 8 << 10)
        for index in 0..<(4 << 10) { grown.append(UInt8(truncatingIfNeeded: index &* 31 &+ 7)) }
        let shrunk = Array(source[..<(20 << 10)])
        // Shifted: 5 bytes inserted into the random region, and a byte in every 16 after it grown by
        // 5, as references in compiled code do (a patch operation, formatVersion 3).
        var shifted = Array(source[..<3000]) + [1, 2, 3, 4, 5] + Array(source[3000..<(64 << 10) - 5])
        for index in stride(from: 3008, to: 16 << 10, by: 16) { shifted[index] &+= 5 }
        var made: [(String, [UInt8])] = []
        // The version-2 seed: what a build host with an older Ferry (or `--format-version 2`) makes.
        for (name, target, version) in [
            ("same", source, 3), ("changed", changed, 3), ("moved", moved, 3), ("grown", grown, 3),
            ("shrunk", shrunk, 3), ("shifted", shifted, 3), ("version2-shifted", shifted, 2),
        ] {
            var options = DeltaGenerator.Options()
            options.formatVersion = UInt32(version)
            options.threads = 1
            options.preset = 1
            options.extreme = false
            var delta: [UInt8] = []
            let statistics = try DeltaGenerator(
                source: MemoryBlockTarget(source), target: MemoryBlockTarget(target), options: options
            ).create {
                (bytes) throws(FerryError) in delta += bytes
            }
            // A valid seed applies: the same path as the fuzz target, checked to the end.
            let stream = MemoryByteSource(delta, name: name)
            let applier = try DeltaApplier(delta: stream, source: MemoryBlockTarget(source), sourceName: "source")
            try applier.verifySource()
            var output: [UInt8] = []
            try applier.apply(from: stream) { (_, bytes, _) throws(FerryError) in output += bytes }
            precondition(output == target, "the \(name) seed delta does not reproduce its target")
            precondition(name != "shifted" || statistics.operations[.patch] != nil, "the shifted seed has no patch")
            made.append((name, delta))
            try seeds.put("delta", "valid-\(name).delta", delta)
        }
        let changedDelta = made[1].1
        try seeds.put("delta", "invalid-truncated.delta", Array(changedDelta[..<(changedDelta.count * 2 / 3)]))
        var flipped = changedDelta
        flipped[flipped.count - 10] ^= 0x01
        try seeds.put("delta", "invalid-flipped-data.delta", flipped)
        var badCheck = changedDelta
        badCheck[DeltaFormat.headerSize] ^= 0x10  // the first source check's offset, unaligned
        try seeds.put("delta", "invalid-source-check.delta", badCheck)
        try seeds.put("delta", "invalid-header-only.delta", Array(changedDelta[..<DeltaFormat.headerSize]))
    }

    // MARK: - Archives

    private static func archives(_ seeds: Seeds) throws(FerryError) {
        func archive(_ members: [(String, [UInt8])]) throws(FerryError) -> [UInt8] {
            let sink = MemoryByteSink()
            let writer = TarWriter(sink: sink)
            for (name, bytes) in members {
                _ = try writer.addMember(name: name, bytes: bytes, mode: 0o644, mtime: 1_767_225_600)
            }
            try writer.finish()
            return sink.bytes
        }
        let one = try archive([("manifest.json", Array("{}\n".utf8))])
        let several = try archive([
            ("manifest.json", Array("{\"formatVersion\": 1}\n".utf8)),
            ("manifest.json.1.p7s", [UInt8](repeating: 0x30, count: 700)),
            ("rootfs.img.xz", [UInt8](repeating: 0xFD, count: 1500)),
        ])
        let longName = String(repeating: "d", count: 90) + "/" + String(repeating: "f", count: 90)
        let names = try archive([(longName, Array("prefix field\n".utf8)), ("empty", [])])
        try seeds.put("tar", "valid-one.tar", one)
        try seeds.put("tar", "valid-several.tar", several)
        try seeds.put("tar", "valid-names.tar", names)
        try seeds.put("tar", "valid-empty.tar", try archive([]))
        try seeds.put("tar", "invalid-truncated.tar", Array(several[..<1300]))
        var checksum = one
        checksum[10] ^= 0x01
        try seeds.put("tar", "invalid-checksum.tar", checksum)
        try seeds.put("tar", "invalid-trailing.tar", one + [0x41])

        // App archives made by TarWriter hold regular files only; tools/fuzz adds GNU tar ones.
        try seeds.put(
            "app-archive", "valid-files.tar",
            try archive([("bin/app", Array("#!/bin/sh\necho hi\n".utf8)), ("etc/app.conf", Array("x=1\n".utf8))]))
    }

    // MARK: - Manifests and indexes

    private static func digest(_ text: String) -> SHA256Digest { SHA256Hasher.hash(Array(text.utf8)) }

    private static func documents(_ seeds: Seeds) throws(FerryError) {
        // Built as JSON and checked by Manifest.parse, then written in the canonical form.
        func number(_ value: Int64) -> JSONValue { .number(Double(value)) }
        func chunks(_ sizes: [Int64], _ tag: String) -> JSONValue {
            var offset: Int64 = 0
            return .array(
                sizes.enumerated().map { index, size in
                    defer { offset += size }
                    return .object([
                        "offset": number(offset), "size": number(size),
                        "sha256": .string(digest("\(tag) c\(index)").hex),
                        "decodedSha256": .string(digest("\(tag) d\(index)").hex),
                    ])
                })
        }
        func payload(
            _ type: String, _ target: String, _ member: String, _ compression: String, size: Int64, chunkSize: Int64,
            stored: [Int64],
            extra: [String: JSONValue] = [:]
        ) -> JSONValue {
            var object: [String: JSONValue] = [
                "type": .string(type), "target": .string(target), "member": .string(member),
                "compression": .string(compression),
                "size": number(size), "sha256": .string(digest(member).hex), "storedSize": number(stored.reduce(0, +)),
                "chunkSize": number(chunkSize), "chunks": chunks(stored, member),
            ]
            object.merge(extra) { $1 }
            return .object(object)
        }
        let chunkSize: Int64 = 1 << 20
        let payloads: [JSONValue] = [
            payload(
                "image", "rootfs", "rootfs.img.xz", "xz", size: 2 * chunkSize + 4096, chunkSize: chunkSize,
                stored: [40_000, 29_000, 1_000]),
            payload(
                "image", "modem", "modem.img", "none", size: 65_536 + 512, chunkSize: 65_536, stored: [65_536, 512]),
            payload(
                "delta", "rootfs", "rootfs.delta", "none", size: 9_000, chunkSize: chunkSize, stored: [9_000],
                extra: [
                    "delta": .object([
                        "sourceSize": number(64 << 20), "sourceSha256": .string(digest("source").hex),
                        "targetSize": number(64 << 20),
                        "targetSha256": .string(digest("target").hex),
                        "sourceChecks": .array([
                            .object([
                                "offset": number(0), "length": number(4 << 20),
                                "sha256": .string(digest("check 0").hex),
                            ]),
                            .object([
                                "offset": number(8 << 20), "length": number(8192),
                                "sha256": .string(digest("check 1").hex),
                            ]),
                        ]),
                    ])
                ]),
            payload(
                "app", "web", "web-2.0.tar", "none", size: 10_240, chunkSize: chunkSize, stored: [10_240],
                extra: [
                    "app": .object([
                        "name": .string("web"), "version": .string("2.0"), "file": .string("web.tar"),
                        "unpack": .bool(true),
                    ])
                ]),
            payload(
                "settings", "carrier.json", "carrier.json", "none", size: 120, chunkSize: chunkSize, stored: [120],
                extra: [
                    "settings": .object([
                        "name": .string("carrier.json"), "format": .string("json"), "mergePatch": .bool(true),
                    ])
                ]),
        ]
        let fullJSON = JSONValue.object([
            "formatVersion": number(1), "compatible": .string("ferry-demo-x86_64"),
            "version": .string("1.2.0-rc.1+build.7"),
            "securityVersion": number(3), "buildTime": .string("2026-01-01T00:00:00Z"),
            "expires": .string("2027-01-01T00:00:00Z"),
            "description": .string("all payload types"), "payloads": .array(payloads),
        ])
        let rotationJSON = JSONValue.object([
            "formatVersion": number(1), "compatible": .string("ferry-demo-x86_64"), "version": .string("2.0.0"),
            "buildTime": .string("2026-01-01T00:00:00Z"), "payloads": .array([payloads[0]]),
            "keyring": .object([
                "member": .string("keyring.pem"), "size": number(1200), "sha256": .string(digest("keyring").hex),
                "denyList": .array([.string(digest("old signer").hex)]),
            ]),
        ])
        let full = try Manifest.parse(fullJSON.serialized())
        let rotation = try Manifest.parse(rotationJSON.serialized())
        try seeds.put("manifest", "valid-all-types.json", full.serialized())
        try seeds.put("manifest", "valid-keyring.json", rotation.serialized())
        try seeds.put("manifest", "valid-compact.json", full.json.compact())
        var text = String(decoding: full.serialized(), as: UTF8.self)
        try seeds.put(
            "manifest", "invalid-unknown-key.json", text.replacingFirst("\"compatible\"", with: "\"compatibel\""))
        try seeds.put("manifest", "invalid-truncated.json", Array(full.serialized().prefix(900)))
        text = String(decoding: full.json.compact(), as: UTF8.self)
        try seeds.put(
            "manifest", "invalid-chunk-gap.json", text.replacingFirst("\"offset\":40000", with: "\"offset\":40001"))

        let payloadList = JSONValue.array(payloads)
        try seeds.put("chunk-table", "valid-all-types.json", payloadList.compact())
        try seeds.put("chunk-table", "valid-pretty.json", payloadList.serialized())
        let payloadText = String(decoding: payloadList.compact(), as: UTF8.self)
        try seeds.put(
            "chunk-table", "invalid-count.json",
            payloadText.replacingFirst("\"size\":2101248", with: "\"size\":9101248"))
        try seeds.put(
            "chunk-table", "invalid-check-order.json",
            payloadText.replacingFirst("\"offset\":8388608", with: "\"offset\":0"))
        try seeds.put("chunk-table", "invalid-empty.json", "[]")

        let index = UpdateIndex(
            serial: 42, created: 1_767_225_600, expires: 1_798_761_600,
            entries: [
                UpdateIndex.entry(
                    for: full, manifestBytes: full.serialized(), url: "bundles/full-1.2.0.bundle", size: 123_456_789,
                    sha256: digest("bundle 1")),
                UpdateIndex.Entry(
                    compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!, securityVersion: 0,
                    url: "https://updates.example.com/b/1.1.0.bundle", size: 99, sha256: digest("bundle 2"),
                    manifestSHA256: digest("manifest 2"),
                    payloads: [UpdateIndex.PayloadSummary(type: "image", target: "rootfs")]),
            ])
        try seeds.put("update-index", "valid-two-entries.json", index.serialized())
        let indexText = String(decoding: index.serialized(), as: UTF8.self)
        try seeds.put("update-index", "invalid-http.json", indexText.replacingFirst("https://", with: "http://"))
        try seeds.put(
            "update-index", "invalid-serial.json", indexText.replacingFirst("\"serial\": 42", with: "\"serial\": -1"))
    }

    // MARK: - Boot environments

    private static func environments(_ seeds: Seeds) throws(FerryError) {
        let variables = [
            "BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0", "bootcmd": "run distro_bootcmd",
            "ferry_v": "1",
        ]
        for (layout, name) in [
            (UInt8(0), "single-le"), (1, "redundant-le"), (3, "redundant-be"), (5, "redundant-boolean"),
            (2, "single-be"),
        ] {
            let format = UBootEnvironmentFormat(
                size: 512, redundant: layout & 1 != 0, byteOrder: layout & 2 != 0 ? .big : .little,
                flagScheme: layout & 4 != 0 ? .boolean : .incremental)
            var bytes: [UInt8] = [layout]
            let first = try UBootEnvironmentCodec.encode(variables, flags: 1, padByte: 0, format: format, name: name)
            bytes += first
            if format.redundant {
                var newer = variables
                newer["BOOT_A_LEFT"] = "2"
                bytes += try UBootEnvironmentCodec.encode(newer, flags: 2, padByte: 0xFF, format: format, name: name)
            }
            try seeds.put("uboot-env", "valid-\(name).env", bytes)
            if layout == 1 {
                var torn = bytes
                torn[600] ^= 0xFF  // the second copy's CRC no longer matches
                try seeds.put("uboot-env", "valid-torn-second.env", torn)
                // The CRC fixed by the harness (bit 3), an entry without '=' inside.
                var fixed = bytes
                fixed[0] = 9
                fixed.replaceSubrange(10..<14, with: Array("XYZ\0".utf8))
                try seeds.put("uboot-env", "invalid-entry.env", fixed)
            }
        }
        try seeds.put("uboot-env", "invalid-short.env", [0, 1, 2, 3, 4])

        let grub = try GRUBEnvironment.encode(
            ["ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0", "note": "a\\b\nc"], name: "grubenv")
        try seeds.put("grubenv", "valid-ferry.grubenv", grub)
        var broken = grub
        broken.replaceSubrange(25..<30, with: Array("NOEQ\n".utf8))
        try seeds.put("grubenv", "invalid-line.grubenv", broken)
        try seeds.put("grubenv", "invalid-size.grubenv", Array(grub[..<1000]))

        try seeds.put(
            "fw-env-config", "valid-redundant.config",
            "# device offset size\n/dev/mmcblk0 0xC0000 0x20000\n/dev/mmcblk0 -0x20000 0x20000 0x20000 1\n")
        try seeds.put("fw-env-config", "valid-file.config", "uboot.env 0 0x4000\t# a file next to the config\n")
        try seeds.put("fw-env-config", "invalid-mtd.config", "/dev/mtd0 0x0 0x10000 0x10000\n")
        try seeds.put("fw-env-config", "invalid-three.config", "a 0 64\nb 0 64\nc 0 64\n")
        try seeds.put("fw-env-config", "invalid-size.config", "/dev/sda 0 0x2000000\n")
    }

    // MARK: - State files

    private static func state(_ seeds: Seeds) throws(FerryError) {
        let scratch = FuzzScratch.directory("seeds")
        defer { FuzzScratch.removeTree(scratch) }
        let store = StateStore(directory: scratch)
        try store.setSlotRecord(
            InstalledSlotRecord(
                sha256: digest("image").hex, size: 67_108_864, version: "1.0.0", source: "factory",
                installedAt: "2026-01-01T00:00:00Z"),
            for: "rootfs_a")
        try store.setSlotRecord(
            InstalledSlotRecord(
                sha256: digest("modem").hex, size: 8_388_608, version: "1.1.0", source: "update.bundle"), for: "modem_b"
        )
        try seeds.put("state", "valid-slots.json", try TextFile.readBytes(store.slotsPath))
        var boot = BootState()
        boot.primary = "B"
        boot.pending = "B"
        boot.pendingBootID = "6f1c2e1a-0d5b-4b44-9c6f-6a1d2b3c4d5e"
        boot.rolledBackFrom = "A"
        boot.rolledBackTo = "B"
        boot.rolledBackAt = "2026-01-02T00:00:00Z"
        boot.confirmedAt = ["A": "2026-01-01T00:00:00Z"]
        boot.markedBadAt = ["A": "2026-01-02T00:00:00Z"]
        try store.setBootState(boot)
        try seeds.put("state", "valid-boot.json", try TextFile.readBytes(store.bootStatePath))
        try store.setGroupParts(
            GroupParts(
                group: "B", bundle: "mixed.bundle", version: "2.0.0", state: .activating,
                parts: [
                    GroupParts.Part(kind: .app, name: "web", version: "2.0", replaced: "1.0"),
                    GroupParts.Part(
                        kind: .settings, name: "carrier.json", format: "json", mergePatch: true, replaced: "kept"),
                ]))
        try seeds.put("state", "valid-group-parts.json", try TextFile.readBytes(store.groupPartsPath))
        try seeds.put(
            "state", "valid-install.json",
            """
            {"formatVersion": 1, "manifestSha256": "\(digest("manifest").hex)", "target": "B", "bundle": "update.bundle",
             "chunksDone": {"rootfs_b": 12}, "completed": ["modem_b"], "startedAt": "2026-01-01T00:00:00Z",
             "deltaPositions": {"rootfs_b": {"operation": 7, "deltaOffset": 123456, "targetOffset": 8388608}}, "futureKey": [1, 2]}

            """)
        try seeds.put(
            "state", "valid-trust.json",
            #"{"formatVersion": 1, "securityFloor": 3, "lastTrustedTime": 1767225600, "keyring": {"fingerprint": "ab", "denyList": [], "from": "b.bundle"}}"#
        )
        try seeds.put("state", "invalid-not-object.json", "[1, 2, 3]\n")
        try seeds.put(
            "state", "invalid-slots-type.json",
            #"{"formatVersion": 1, "slots": {"rootfs_a": 5}, "groups": 3, "state": "staged"}"#)
    }

    // MARK: - Settings

    private static func settings(_ seeds: Seeds) throws(FerryError) {
        func split(_ document: String, _ patch: String) -> [UInt8] {
            // The harness cuts at first * count / 256: pick the first byte that cuts after the document.
            let rest = Array((document + patch).utf8)
            let cut = document.utf8.count
            let first = rest.isEmpty ? 0 : (0...255).first { $0 * rest.count / 256 == cut } ?? 255
            return [UInt8(first)] + rest
        }
        try seeds.put(
            "settings-json", "valid-merge.json",
            split(
                #"{"apn": "internet", "mtu": 1500, "bands": [1, 3, 7], "roaming": {"enabled": false, "list": ["a"]}}"#,
                #"{"mtu": 1400, "roaming": {"enabled": true, "list": null}, "new": {"x": -1.5e-3}}"#))
        try seeds.put("settings-json", "valid-replace.json", split(#"[1, "two", null, true]"#, #""not an object""#))
        try seeds.put(
            "settings-json", "valid-unicode.json",
            split(#"{"name": "caf\u00e9 \ud83d\ude00 \n\t\"x\""}"#, #"{"name": null}"#))
        try seeds.put("settings-json", "invalid-duplicate.json", split(#"{"a": 1, "a": 2}"#, #"{}"#))
        try seeds.put(
            "settings-json", "invalid-deep.json",
            split(String(repeating: "[", count: 70) + String(repeating: "]", count: 70), "{}"))
        try seeds.put("settings-json", "invalid-syntax.json", split(#"{"a": 1,}"#, #"{"#))

        let carrier = """
            <?xml version="1.0" encoding="UTF-8"?>
            <carrier name="example"><apn>internet</apn><apn>ims</apn><mtu>1400</mtu></carrier>

            """
        try seeds.put("settings-xml", "valid-plain.xml", [0] + Array(carrier.utf8))
        try seeds.put("settings-xml", "valid-schema.xml", [1] + Array(carrier.utf8))
        try seeds.put(
            "settings-xml", "invalid-schema.xml",
            [1] + Array(carrier.replacingFirst("<mtu>1400</mtu>", with: "<mtu>-1</mtu>").utf8))
        try seeds.put("settings-xml", "invalid-not-well-formed.xml", [0] + Array("<carrier><apn>x</carrier>".utf8))
        try seeds.put(
            "settings-xml", "invalid-entity.xml",
            [0]
                + Array(
                    #"<?xml version="1.0"?><!DOCTYPE c [<!ENTITY e SYSTEM "file:///etc/passwd">]><carrier name="x"><apn>&e;</apn></carrier>"#
                        .utf8))
    }
}

extension String {
    fileprivate func replacingFirst(_ text: String, with replacement: String) -> String {
        let bytes = Array(utf8)
        let needle = Array(text.utf8)
        guard
            let start = (0...(bytes.count - needle.count)).first(where: {
                bytes[$0..<($0 + needle.count)].elementsEqual(needle)
            })
        else {
            preconditionFailure("seed template lacks '\(text)'")
        }
        return String(
            decoding: bytes[..<start] + Array(replacement.utf8) + bytes[(start + needle.count)...], as: UTF8.self)
    }
}
