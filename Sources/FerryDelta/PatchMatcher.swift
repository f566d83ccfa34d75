import FerrySystem

/// Approximate matches of changed target bytes against the source bytes they resemble, for a
/// `patch` operation (host side).
///
/// The scan follows the design of Colin Percival's bsdiff ("Naive differences of executable
/// code", 2003): walk the target; at each position find the longest exact match in the source;
/// keep extending the current alignment (target position + a fixed offset) for as long as it
/// matches about as well as the best new match, since an alignment that matches most bytes turns
/// into differences that are mostly zeros; when a new match beats the current alignment by more
/// than a few bytes (``switchMargin(_:)``), end the current *cover* where its matches thin out
/// (the prefix maximizing 3 × matches − 2 × length: bsdiff keeps half, this two thirds), start the next one as far back as its matches reach, and put the bytes
/// between them in the literal stream. The exact-match search uses hash chains over 8-byte
/// sequences of the source (the newest `chainDepth` candidates, plus the current alignment)
/// instead of a suffix array: 4 bytes per source byte and a table of heads (at most 64 MiB for
/// an operation's 16 MiB of source).
struct PatchMatcher {
    static let hashLength = 8
    /// Candidates looked at per position: 256 made the debian pair's delta 0.3 % smaller than 64
    /// and took 17 % more CPU time (12 % more on the small pair).
    static let chainDepth = 64
    /// The longest exact match measured; longer ones are taken as this long (the scan continues
    /// from there along the same alignment).
    static let longestMeasured = 1 << 16
    /// How much better than the current alignment a new match must be to start a new cover: a
    /// byte, plus a third of the bits of the jump to its alignment (a far jump costs a longer
    /// control record, and usually another one back; measured on Debian kernel modules, this
    /// makes patches about 1.5 % smaller than bsdiff's fixed 8 bytes).
    @inline(__always)
    func switchMargin(_ jump: Int) -> Int {
        1 + (Int.bitWidth - jump.magnitude.leadingZeroBitCount) / 3
    }

    struct Result {
        var records: [DeltaPatch.Record] = []
        var diff: [UInt8] = []
        var literal: [UInt8] = []
    }

    let source: UnsafeRawBufferPointer
    private let hashBits: Int
    /// The hash chains, in huge pages (``HugePageTable``): every lookup reads them at random.
    private let tables: (head: HugePageTable, chain: HugePageTable)
    private let head: UnsafeMutableBufferPointer<Int32>
    private let chain: UnsafeMutableBufferPointer<Int32>

    init(source: UnsafeRawBufferPointer) {
        precondition(source.count < Int(Int32.max), "Ferry bug: a patch source over 2 GiB")
        self.source = source
        var bits = 12
        while bits < 24 && (1 << bits) < source.count { bits += 1 }
        hashBits = bits
        tables = (
            HugePageTable(count: 1 << bits, filledWith: -1), HugePageTable(count: max(source.count, 1), filledWith: -1)
        )
        head = tables.head.elements
        chain = tables.chain.elements
        if source.count >= Self.hashLength {
            for position in 0...(source.count - Self.hashLength) {
                let key = Self.hash(source, position, bits: bits)
                chain[position] = head[key]
                head[key] = Int32(position)
            }
        }
    }

    static func hash(_ bytes: UnsafeRawBufferPointer, _ position: Int, bits: Int) -> Int {
        let word = bytes.loadUnaligned(fromByteOffset: position, as: UInt64.self)
        return Int(truncatingIfNeeded: (word &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - bits))
    }

    /// How many bytes of `target` from `at` equal the source's from `from`, up to `longestMeasured`.
    @inline(__always)
    func matchLength(_ target: UnsafeRawBufferPointer, _ at: Int, _ from: Int) -> Int {
        let limit = min(Self.longestMeasured, target.count - at, source.count - from)
        var length = 0
        while length + 8 <= limit {
            let a = target.loadUnaligned(fromByteOffset: at + length, as: UInt64.self)
            let b = source.loadUnaligned(fromByteOffset: from + length, as: UInt64.self)
            if a != b { return length + (a ^ b).trailingZeroBitCount / 8 }
            length += 8
        }
        while length < limit && target[at + length] == source[from + length] { length += 1 }
        return length
    }

    /// The longest exact match of `target[at...]` in the source: (source position, length).
    func longestMatch(_ target: UnsafeRawBufferPointer, at: Int, alignment: Int) -> (position: Int, length: Int) {
        var best = (position: 0, length: 0)
        let aligned = at + alignment
        if aligned >= 0 && aligned < source.count {
            best = (aligned, matchLength(target, at, aligned))
        }
        guard at + Self.hashLength <= target.count, best.length < Self.longestMeasured else { return best }
        var candidate = head[Self.hash(target, at, bits: hashBits)]
        var depth = 0
        while candidate >= 0 && depth < Self.chainDepth {
            let from = Int(candidate)
            // Only a candidate that also matches at the current best length can beat it.
            if from + best.length < source.count, at + best.length < target.count,
                source[from + best.length] == target[at + best.length]
            {
                let length = matchLength(target, at, from)
                if length > best.length {
                    best = (from, length)
                    if length >= Self.longestMeasured { break }
                }
            }
            candidate = chain[from]
            depth += 1
        }
        return best
    }

    @inline(__always)
    func matches(_ target: UnsafeRawBufferPointer, _ at: Int, _ from: Int) -> Bool {
        from >= 0 && from < source.count && source[from] == target[at]
    }

    /// Covers, differences and literals that rebuild `target` from the source.
    func match(_ target: UnsafeRawBufferPointer) -> Result {
        var result = Result()
        result.diff.reserveCapacity(target.count)
        let count = target.count
        var scan = 0
        var length = 0
        var position = 0
        var lastScan = 0
        var lastPosition = 0
        var lastOffset = 0
        while scan < count {
            var oldScore = 0
            scan += length
            var scored = scan
            while scan < count {
                (position, length) = longestMatch(target, at: scan, alignment: lastOffset)
                while scored < scan + length {
                    if matches(target, scored, scored + lastOffset) { oldScore += 1 }
                    scored += 1
                }
                if (length == oldScore && length != 0) || length > oldScore + switchMargin(position - scan - lastOffset)
                {
                    break
                }
                if matches(target, scan, scan + lastOffset) { oldScore -= 1 }
                scan += 1
            }
            guard length != oldScore || scan == count else { continue }
            // How far the previous alignment carries forward, and the new one backward.
            var forward = 0
            var score = 0
            var bestScore = 0
            var index = 0
            while lastScan + index < scan && lastPosition + index < source.count {
                if source[lastPosition + index] == target[lastScan + index] { score += 1 }
                index += 1
                if score * 3 - index * 2 > bestScore * 3 - forward * 2 {
                    bestScore = score
                    forward = index
                }
            }
            var backward = 0
            if scan < count {
                score = 0
                bestScore = 0
                index = 1
                while scan >= lastScan + index && position >= index {
                    if source[position - index] == target[scan - index] { score += 1 }
                    if score * 3 - index * 2 > bestScore * 3 - backward * 2 {
                        bestScore = score
                        backward = index
                    }
                    index += 1
                }
            }
            // Where they overlap, split at the point that keeps the most matches.
            if lastScan + forward > scan - backward {
                let overlap = (lastScan + forward) - (scan - backward)
                score = 0
                bestScore = 0
                var split = 0
                for index in 0..<overlap {
                    if target[lastScan + forward - overlap + index] == source[lastPosition + forward - overlap + index]
                    {
                        score += 1
                    }
                    if target[scan - backward + index] == source[position - backward + index] { score -= 1 }
                    if score > bestScore {
                        bestScore = score
                        split = index + 1
                    }
                }
                forward += split - overlap
                backward -= split
            }
            for index in 0..<forward {
                result.diff.append(target[lastScan + index] &- source[lastPosition + index])
            }
            let literalStart = lastScan + forward
            let literalEnd = scan - backward
            if literalEnd > literalStart {
                result.literal.append(contentsOf: UnsafeRawBufferPointer(rebasing: target[literalStart..<literalEnd]))
            }
            let seek = (position - backward) - (lastPosition + forward)
            result.records.append(
                DeltaPatch.Record(cover: forward, literal: max(0, literalEnd - literalStart), seek: seek))
            lastScan = scan - backward
            lastPosition = position - backward
            lastOffset = position - scan
        }
        return result
    }
}
