import FerrySystem
import FerryXZ

/// A GUID Partition Table (UEFI specification 2.10, §5.3): a header at LBA 1 (primary) and at the
/// last LBA (backup), each naming its own copy of the partition entry array and the CRC-32 of
/// that array; the header's own CRC-32 is computed with its CRC field zeroed.
///
/// Ferry reads both copies and checks each on its own (signature, header size, CRC of the header,
/// its own LBA, CRC of its entry array), so that a torn write of either copy is recognised, and
/// writes a changed table backup first, then primary (`GPTSwitch`).
public struct GPT: Sendable, Equatable {
    public static let signature: [UInt8] = Array("EFI PART".utf8)
    public static let entrySize = 128

    /// The header fields Ferry reads and writes (92 bytes; a larger header's extra bytes are kept).
    public struct Header: Sendable, Equatable {
        public var revision: UInt32
        public var headerSize: UInt32
        public var myLBA: UInt64
        public var alternateLBA: UInt64
        public var firstUsableLBA: UInt64
        public var lastUsableLBA: UInt64
        public var diskGUID: [UInt8]
        public var entriesLBA: UInt64
        public var entryCount: UInt32
        public var entrySize: UInt32
        public var entriesCRC: UInt32
        /// The whole header sector as read (bytes past `headerSize` included), so a rewrite keeps them.
        var sector: [UInt8]

        /// Parses and checks a header sector: signature, size, CRC, entry size.
        /// - Returns: the header, or why it is not a valid one.
        static func parse(_ sector: [UInt8]) -> Result<Header, GPT.Problem> {
            guard sector.count >= 92, Array(sector[0..<8]) == GPT.signature else { return .failure(.noSignature) }
            let size = sector.littleEndian(UInt32.self, at: 12)
            guard size >= 92, Int(size) <= sector.count else { return .failure(.badHeaderSize(size)) }
            var zeroed = Array(sector[0..<Int(size)])
            zeroed.setLittleEndian(UInt32(0), at: 16)
            guard CRC32.checksum(zeroed) == sector.littleEndian(UInt32.self, at: 16) else {
                return .failure(.headerChecksum)
            }
            let entrySize = sector.littleEndian(UInt32.self, at: 84)
            let entryCount = sector.littleEndian(UInt32.self, at: 80)
            guard entrySize >= 128, entrySize % 8 == 0, entrySize <= 4096, entryCount >= 1, entryCount <= 16_384 else {
                return .failure(.badEntryArray(count: entryCount, size: entrySize))
            }
            return .success(
                Header(
                    revision: sector.littleEndian(UInt32.self, at: 8), headerSize: size,
                    myLBA: sector.littleEndian(UInt64.self, at: 24),
                    alternateLBA: sector.littleEndian(UInt64.self, at: 32),
                    firstUsableLBA: sector.littleEndian(UInt64.self, at: 40),
                    lastUsableLBA: sector.littleEndian(UInt64.self, at: 48), diskGUID: Array(sector[56..<72]),
                    entriesLBA: sector.littleEndian(UInt64.self, at: 72), entryCount: entryCount, entrySize: entrySize,
                    entriesCRC: sector.littleEndian(UInt32.self, at: 88), sector: sector))
        }

        /// The header sector with these fields and a freshly computed CRC.
        func encoded() -> [UInt8] {
            var bytes = sector
            bytes.replaceSubrange(0..<8, with: GPT.signature)
            bytes.setLittleEndian(revision, at: 8)
            bytes.setLittleEndian(headerSize, at: 12)
            bytes.setLittleEndian(UInt32(0), at: 16)
            bytes.setLittleEndian(myLBA, at: 24)
            bytes.setLittleEndian(alternateLBA, at: 32)
            bytes.setLittleEndian(firstUsableLBA, at: 40)
            bytes.setLittleEndian(lastUsableLBA, at: 48)
            bytes.replaceSubrange(56..<72, with: diskGUID)
            bytes.setLittleEndian(entriesLBA, at: 72)
            bytes.setLittleEndian(entryCount, at: 80)
            bytes.setLittleEndian(entrySize, at: 84)
            bytes.setLittleEndian(entriesCRC, at: 88)
            bytes.setLittleEndian(CRC32.checksum(bytes[0..<Int(headerSize)]), at: 16)
            return bytes
        }
    }

    /// One partition entry.
    public struct Entry: Sendable, Equatable {
        public var typeGUID: [UInt8]
        public var uniqueGUID: [UInt8]
        public var firstLBA: UInt64
        /// Inclusive.
        public var lastLBA: UInt64
        public var attributes: UInt64
        /// UTF-16LE, 72 bytes.
        public var nameBytes: [UInt8]

        public var isUsed: Bool { typeGUID.contains { $0 != 0 } }
        public var name: String {
            var units: [UInt16] = []
            for index in stride(from: 0, to: nameBytes.count - 1, by: 2) {
                let unit = UInt16(nameBytes[index]) | UInt16(nameBytes[index + 1]) << 8
                if unit == 0 { break }
                units.append(unit)
            }
            return String(decoding: units, as: UTF16.self)
        }
        /// The sectors it covers.
        public var sectors: ClosedRange<UInt64> { firstLBA...max(firstLBA, lastLBA) }
    }

    /// Why a copy of the table is not valid.
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case noSignature
        case badHeaderSize(UInt32)
        case headerChecksum
        case badEntryArray(count: UInt32, size: UInt32)
        case wrongLocation(UInt64)
        case entriesChecksum
        case outsideDisk

        public var description: String {
            switch self {
            case .noSignature: "no 'EFI PART' signature"
            case .badHeaderSize(let size): "header size \(size) is not valid"
            case .headerChecksum: "the header's CRC-32 does not match"
            case .badEntryArray(let count, let size): "an entry array of \(count) entries of \(size) bytes is not valid"
            case .wrongLocation(let lba): "the header says it is at LBA \(lba), not where it was read"
            case .entriesChecksum: "the partition entries' CRC-32 does not match"
            case .outsideDisk: "it points outside the disk"
            }
        }
    }

    public var header: Header
    /// The entry array, `entryCount × entrySize` bytes.
    public var entryArray: [UInt8]
    public let sectorSize: Int

    /// The entry at `index` (0-based).
    public func entry(_ index: Int) -> Entry {
        let base = index * Int(header.entrySize)
        return Entry(
            typeGUID: Array(entryArray[base..<(base + 16)]), uniqueGUID: Array(entryArray[(base + 16)..<(base + 32)]),
            firstLBA: entryArray.littleEndian(UInt64.self, at: base + 32),
            lastLBA: entryArray.littleEndian(UInt64.self, at: base + 40),
            attributes: entryArray.littleEndian(UInt64.self, at: base + 48),
            nameBytes: Array(entryArray[(base + 56)..<(base + 128)]))
    }

    /// Every used entry with its index.
    public var usedEntries: [(index: Int, entry: Entry)] {
        (0..<Int(header.entryCount)).map { ($0, entry($0)) }.filter { $0.entry.isUsed }
    }

    /// The table with entry `index` moved to `sectors` (everything else of the entry kept), and
    /// both headers' entry CRCs updated.
    public func moving(entry index: Int, to sectors: ClosedRange<UInt64>) -> GPT {
        var table = self
        let base = index * Int(header.entrySize)
        table.entryArray.setLittleEndian(sectors.lowerBound, at: base + 32)
        table.entryArray.setLittleEndian(sectors.upperBound, at: base + 40)
        table.header.entriesCRC = CRC32.checksum(table.entryArray)
        return table
    }

    // MARK: - Reading

    /// Both copies of a disk's table, each valid or with the reason it is not.
    public struct Copies: Sendable {
        public var primary: Result<GPT, Problem>
        public var backup: Result<GPT, Problem>

        /// The table a UEFI firmware uses: the primary when valid, else the backup.
        public var effective: GPT? {
            if case .success(let table) = primary { return table }
            if case .success(let table) = backup { return table }
            return nil
        }
    }

    /// Reads the primary table (header at LBA 1) and the backup (header at the last LBA).
    public static func read(_ disk: some BlockTarget, sectorSize: Int = 512) throws(FerryError) -> Copies {
        let lastLBA = UInt64(disk.byteCount / Int64(sectorSize)) - 1
        return Copies(
            primary: try readCopy(disk, headerLBA: 1, sectorSize: sectorSize, lastLBA: lastLBA),
            backup: try readCopy(disk, headerLBA: lastLBA, sectorSize: sectorSize, lastLBA: lastLBA))
    }

    static func readCopy(_ disk: some BlockTarget, headerLBA: UInt64, sectorSize: Int, lastLBA: UInt64)
        throws(FerryError) -> Result<GPT, Problem>
    {
        let sector = try disk.read(at: Int64(headerLBA) * Int64(sectorSize), count: sectorSize)
        let header: Header
        switch Header.parse(sector) {
        case .failure(let problem): return .failure(problem)
        case .success(let parsed): header = parsed
        }
        guard header.myLBA == headerLBA else { return .failure(.wrongLocation(header.myLBA)) }
        let arrayBytes = Int(header.entryCount) * Int(header.entrySize)
        let arraySectors = UInt64((arrayBytes + sectorSize - 1) / sectorSize)
        guard header.entriesLBA >= 1, header.entriesLBA + arraySectors - 1 <= lastLBA else {
            return .failure(.outsideDisk)
        }
        let array = try disk.read(at: Int64(header.entriesLBA) * Int64(sectorSize), count: arrayBytes)
        guard CRC32.checksum(array) == header.entriesCRC else { return .failure(.entriesChecksum) }
        return .success(GPT(header: header, entryArray: array, sectorSize: sectorSize))
    }

    // MARK: - Writing

    /// This copy as the writes that put it on the disk, at its own place: the entry array first,
    /// then the header sector (a cut between the two leaves a header whose entry CRC does not
    /// match, which every reader refuses: the other copy is then used).
    public func writes() -> [(offset: Int64, bytes: [UInt8])] {
        var array = entryArray
        let padded = (array.count + sectorSize - 1) / sectorSize * sectorSize
        array += [UInt8](repeating: 0, count: padded - array.count)
        let size = Int64(sectorSize)
        return [(Int64(header.entriesLBA) * size, array), (Int64(header.myLBA) * size, header.encoded())]
    }

    /// Whether `other` is this table's other copy: the same disk, the same entries.
    public func isCopy(of other: GPT) -> Bool {
        header.diskGUID == other.header.diskGUID && entryArray == other.entryArray
            && header.alternateLBA == other.header.myLBA && other.header.alternateLBA == header.myLBA
            && header.firstUsableLBA == other.header.firstUsableLBA
            && header.lastUsableLBA == other.header.lastUsableLBA
    }
}
