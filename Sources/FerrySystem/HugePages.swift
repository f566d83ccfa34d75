#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Large tables for the host-side generators (a match finder's hash heads and chains, liblzma's
/// encoder tables): in transparent huge pages where the kernel offers them on request (`madvise`
/// in /sys/kernel/mm/transparent_hugepage/enabled, Debian's default), since with 4 KiB pages
/// nearly every random access to a table of tens of MiB also misses the TLB; and kept for the
/// next table once freed, instead of being unmapped and faulted in again, zeroed by the kernel
/// page by page (each delta segment needs about 200 MiB of such tables). A kernel without
/// transparent huge pages ignores the advice; the contents never depend on it.
///
/// Not for the device: a huge page is resident as a whole, and the device's buffers are small
/// and reused already.
public final class HugePageMemory: @unchecked Sendable {
    /// The size of a transparent huge page on x86-64 and arm64 (4 KiB base pages).
    public static let pageSize = 2 << 20
    /// The one pool of the process: two generator threads' tables (a diff's match finder, up to
    /// about 200 MiB; a patch's three streams) fit in it.
    public static let shared = HugePageMemory(keep: 8, keepBytes: 512 << 20)

    private let keep: Int
    private let keepBytes: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Blocks handed out, by address: their sizes.
    private var lent: [UnsafeMutableRawPointer: Int] = [:]
    /// Blocks given back, kept for reuse (at most `keep`).
    private var kept: [(pointer: UnsafeMutableRawPointer, size: Int)] = []

    /// A pool that keeps at most `keep` freed blocks of at most `keepBytes` in all.
    public init(keep: Int, keepBytes: Int) {
        self.keep = keep
        self.keepBytes = keepBytes
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        for block in kept { free(block.pointer) }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Where a request of `byteCount` bytes is worth a block of huge pages: at least one page.
    public static func worthIt(_ byteCount: Int) -> Bool { byteCount >= pageSize }

    /// At least `byteCount` bytes (contents undefined), aligned to ``pageSize`` and advised as
    /// huge pages: the smallest kept block that is big enough (and at most twice that: a small
    /// table does not hold on to a big block), or a new one; nil when there is no
    /// memory. Give it back with ``release(_:)``.
    public func allocate(byteCount: Int) -> UnsafeMutableRawPointer? {
        let size = max(Self.pageSize, (byteCount + Self.pageSize - 1) / Self.pageSize * Self.pageSize)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let fitting = kept.indices.filter { kept[$0].size >= size && kept[$0].size <= 2 * size }
        if let best = fitting.min(by: { kept[$0].size < kept[$1].size }) {
            let block = kept.remove(at: best)
            lent[block.pointer] = block.size
            return block.pointer
        }
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, Self.pageSize, size) == 0, let pointer else { return nil }
        _ = madvise(pointer, size, CInt(MADV_HUGEPAGE))
        lent[pointer] = size
        return pointer
    }

    /// Takes back a block from ``allocate(byteCount:)``: kept for reuse, while more than `keep`
    /// blocks or `keepBytes` are kept the smallest are freed. Returns false, doing nothing, for
    /// any other pointer.
    @discardableResult
    public func release(_ pointer: UnsafeMutableRawPointer) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard let size = lent.removeValue(forKey: pointer) else { return false }
        kept.append((pointer, size))
        while kept.count > keep || kept.reduce(0, { $0 + $1.size }) > keepBytes,
            let smallest = kept.indices.min(by: { kept[$0].size < kept[$1].size })
        {
            free(kept.remove(at: smallest).pointer)
        }
        return true
    }

    /// The bytes of the blocks kept for reuse.
    public var keptBytes: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return kept.reduce(0) { $0 + $1.size }
    }
}

/// A table of `count` `Int32`s filled with `value`, from ``HugePageMemory/shared`` when it is
/// that big, else from `malloc`.
public final class HugePageTable {
    public let elements: UnsafeMutableBufferPointer<Int32>

    public init(count: Int, filledWith value: Int32) {
        let bytes = max(1, count) * MemoryLayout<Int32>.stride
        let memory = HugePageMemory.worthIt(bytes) ? HugePageMemory.shared.allocate(byteCount: bytes) : malloc(bytes)
        guard let memory else { fatalError("Ferry: no memory for a table of \(bytes) bytes") }
        elements = UnsafeMutableBufferPointer(start: memory.bindMemory(to: Int32.self, capacity: count), count: count)
        elements.initialize(repeating: value)
    }

    deinit {
        let memory = UnsafeMutableRawPointer(elements.baseAddress!)
        if !HugePageMemory.shared.release(memory) { free(memory) }
    }
}
