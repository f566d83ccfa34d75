import FerryBootloader
import FerrySystem
import FerryXZ

/// Boot environments read from the device: U-Boot copies, GRUB's block, fw_env.config.
enum BootloaderTargets {
    /// The first byte picks the layout (bit 0: redundant, bit 1: big-endian, bit 2: boolean
    /// flags, bit 3: fix each copy's CRC so that mutations reach the entry parser); the rest is
    /// one copy, or two equal halves for a redundant environment. A decoded
    /// copy must encode again and decode to the same variables.
    @Sendable static func ubootEnvironment(_ input: UnsafeRawBufferPointer) {
        guard let layout = input.first else { return }
        let rest = Array(input.dropFirst())
        let redundant = layout & 1 != 0
        let size = redundant ? rest.count / 2 : rest.count
        let format = UBootEnvironmentFormat(
            size: size, redundant: redundant, byteOrder: layout & 2 != 0 ? .big : .little,
            flagScheme: layout & 4 != 0 ? .boolean : .incremental)
        var images = redundant ? [Array(rest[..<size]), Array(rest[size..<(2 * size)])] : [rest]
        if layout & 8 != 0 && format.dataSize > 0 {
            for index in images.indices {
                let crc = CRC32.checksum(images[index][format.headerSize...])
                let bytes = [UInt8(crc & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc >> 16 & 0xff), UInt8(crc >> 24)]
                images[index].replaceSubrange(0..<4, with: format.byteOrder == .little ? bytes : bytes.reversed())
            }
        }
        var copies: [UBootEnvironmentCopy?] = []
        for (index, image) in images.enumerated() {
            do { copies.append(try UBootEnvironmentCodec.decode(image, format: format, name: "copy \(index)")) } catch {
                copies.append(nil)
            }
        }
        let current =
            redundant ? UBootEnvironmentCodec.currentIndex(copies[0], copies[1]) : (copies[0] == nil ? nil : 0)
        guard let current, let copy = copies[current] else { return }
        let encoded: [UInt8]
        do {
            encoded = try UBootEnvironmentCodec.encode(
                copy.variables, flags: copy.flags, padByte: copy.padByte, format: format, name: "fuzz")
        } catch { return }  // a name the decoder accepts but Ferry never writes (e.g. with a newline)
        guard encoded.count == size else {
            violated("uboot-env", "encoded \(encoded.count) bytes for a \(size)-byte copy")
        }
        do {
            guard let again = try UBootEnvironmentCodec.decode(encoded, format: format, name: "re-encoded"),
                again.variables == copy.variables
            else { violated("uboot-env", "a re-encoded copy decodes differently") }
        } catch {
            violated("uboot-env", "a re-encoded copy is refused: \(error.message)")
        }
    }

    /// A GRUB environment block; accepted variables must encode and decode to themselves.
    @Sendable static func grubEnvironment(_ input: UnsafeRawBufferPointer) {
        let variables: [String: String]
        do { variables = try GRUBEnvironment.decode(Array(input), name: "fuzz.grubenv") } catch { return }
        let encoded: [UInt8]
        do { encoded = try GRUBEnvironment.encode(variables, name: "fuzz") } catch { return }
        do {
            guard try GRUBEnvironment.decode(encoded, name: "re-encoded") == variables else {
                violated("grubenv", "a re-encoded block decodes differently")
            }
        } catch {
            violated("grubenv", "a re-encoded block is refused: \(error.message)")
        }
    }

    /// An `fw_env.config`; the environment it describes is then read as `ferry env list` reads
    /// it, with every device replaced by a 64 KiB scratch file (offsets and sizes as given).
    @Sendable static func fwEnvConfig(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        let config: FWEnvConfig
        do { config = try FWEnvConfig.parse(text, name: "fw_env.config", directory: "/etc") } catch { return }
        guard (1...2).contains(config.locations.count),
            config.locations.allSatisfy({ $0.size > 5 && $0.device.hasPrefix("/") })
        else {
            violated("fw-env-config", "accepted \(config.locations)")
        }
        let locations = config.locations.enumerated().map { index, location in
            UBootEnvironmentLocation(
                device: environmentFiles[index], offset: location.offset, size: location.size,
                sectorSize: location.sectorSize)
        }
        _ = try? UBootEnvironment(locations: locations, name: "fuzz environment").readState()
    }

    /// Two 64 KiB files, each with an environment copy of 16 KiB at 0 and at 32 KiB (the sandbox's layout).
    private static let environmentFiles: [String] = {
        let folder = FuzzScratch.directory("fwenv")
        let format = UBootEnvironmentFormat(size: 0x4000, redundant: true)
        return (0..<2).map { index in
            let path = "\(folder)/env\(index).img"
            do throws(FerryError) {
                let copy = try UBootEnvironmentCodec.encode(
                    ["BOOT_ORDER": "A B", "copy": "\(index)"], flags: UInt8(index + 1), padByte: 0, format: format,
                    name: path)
                var image = [UInt8](repeating: 0, count: 64 << 10)
                image.replaceSubrange(0..<copy.count, with: copy)
                image.replaceSubrange((32 << 10)..<((32 << 10) + copy.count), with: copy)
                try DurableFile.write(image, to: path)
            } catch {
                fatalError("fuzz target fw-env-config: \(error.message)")
            }
            return path
        }
    }()
}
