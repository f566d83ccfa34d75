internal import CLzma
import FerrySystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// LZMA2 with a preset dictionary: compresses new data against old data it resembles.
///
/// The dictionary (for a delta, the source extents a target extent was derived from) is loaded into
/// LZMA2's window before the first byte, so every stretch of the new data that also occurs in the
/// old one costs a match instead of literals — wherever it lies in the dictionary. The output is a
/// raw LZMA2 stream (no .xz container, no check: the caller checks the decoded data's SHA-256), and
/// decoding needs the very same dictionary.
///
/// Memory: decoding needs about `dictionary.count + output size`; encoding about ten times that
/// (the binary-tree match finder).
public enum XZDictionaryCodec {
    /// Compresses `input` against `dictionary`.
    /// - Parameter preset: the xz level, 0 to 9; `extreme` as `xz --extreme`.
    /// - Throws: `.io` when liblzma cannot allocate memory; `.internal` otherwise.
    /// - Parameter literalContextBits, literalPositionBits, positionBits: LZMA's `lc`, `lp` and `pb`
    ///   (default 3, 0, 2); the stream records them, so decoding needs nothing else.
    public static func encode(
        _ input: UnsafeRawBufferPointer, dictionary: UnsafeRawBufferPointer, preset: Int = 9, extreme: Bool = true,
        literalContextBits: Int = 3, literalPositionBits: Int = 0, positionBits: Int = 2
    ) throws(FerryError) -> [UInt8] {
        precondition((0...9).contains(preset), "Ferry bug: xz preset \(preset) is not 0...9")
        var options = lzma_options_lzma()
        precondition(lzma_lzma_preset(&options, UInt32(preset) | (extreme ? CLzma_PRESET_EXTREME : 0)) == 0)
        options.lc = UInt32(literalContextBits)
        options.lp = UInt32(literalPositionBits)
        options.pb = UInt32(positionBits)
        options.dict_size = windowSize(dictionary: dictionary.count, output: input.count)
        options.preset_dict = dictionary.count > 0 ? dictionary.baseAddress?.assumingMemoryBound(to: UInt8.self) : nil
        options.preset_dict_size = UInt32(dictionary.count)
        let bound = input.count + input.count / 8 + 4096
        var output = [UInt8](repeating: 0, count: bound)
        var position = 0
        let result = withUnsafeMutablePointer(to: &options) { options in
            var filters = [
                lzma_filter(id: CLzma_FILTER_LZMA2, options: UnsafeMutableRawPointer(options)),
                lzma_filter(id: CLzma_VLI_UNKNOWN, options: nil),
            ]
            return filters.withUnsafeMutableBufferPointer { filters in
                output.withUnsafeMutableBufferPointer { out in
                    lzma_raw_buffer_encode(
                        filters.baseAddress, hugePageAllocator, input.baseAddress?.assumingMemoryBound(to: UInt8.self),
                        input.count,
                        out.baseAddress, &position, out.count)
                }
            }
        }
        guard result == LZMA_OK else {
            throw FerryError(
                code: result == LZMA_MEM_ERROR ? .io : .internal,
                message:
                    "compressing \(input.count) bytes against a \(dictionary.count)-byte dictionary failed (liblzma \(result.rawValue))"
            )
        }
        output.removeSubrange(position...)
        return output
    }

    /// Decodes `compressed` against `dictionary` into exactly `output.count` bytes.
    /// - Parameter memory: keeps liblzma's window between calls (one decoder at a time); without
    ///   it every call allocates (and faults in) a fresh window.
    /// - Throws: `.bundleInvalid` when the stream is corrupt, decodes to another size, or is
    ///   followed by other bytes; `.limitExceeded` when it would need more than `memoryLimit`.
    public static func decode(
        _ compressed: UnsafeRawBufferPointer, dictionary: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        memoryLimit: Int = 256 << 20, memory: LZMADecoderMemory? = nil
    ) throws(FerryError) {
        guard Int(windowSize(dictionary: dictionary.count, output: output.count)) <= memoryLimit else {
            throw FerryError(
                code: .limitExceeded, message: "a delta operation needs a window over \(memoryLimit >> 20) MiB")
        }
        var options = lzma_options_lzma()
        precondition(lzma_lzma_preset(&options, 6) == 0)
        options.dict_size = windowSize(dictionary: dictionary.count, output: output.count)
        options.preset_dict = dictionary.count > 0 ? dictionary.baseAddress?.assumingMemoryBound(to: UInt8.self) : nil
        options.preset_dict_size = UInt32(dictionary.count)
        var inputPosition = 0
        var outputPosition = 0
        let result = withUnsafeMutablePointer(to: &options) { options in
            var filters = [
                lzma_filter(id: CLzma_FILTER_LZMA2, options: UnsafeMutableRawPointer(options)),
                lzma_filter(id: CLzma_VLI_UNKNOWN, options: nil),
            ]
            return filters.withUnsafeMutableBufferPointer { filters in
                lzma_raw_buffer_decode(
                    filters.baseAddress, memory?.allocator, compressed.baseAddress?.assumingMemoryBound(to: UInt8.self),
                    &inputPosition,
                    compressed.count, output.baseAddress?.assumingMemoryBound(to: UInt8.self), &outputPosition,
                    output.count)
            }
        }
        guard result == LZMA_OK || result == LZMA_STREAM_END, outputPosition == output.count,
            inputPosition == compressed.count
        else {
            throw FerryError(
                code: .bundleInvalid,
                message: "a delta stream is corrupt: it decodes to \(outputPosition) of \(output.count) bytes "
                    + "using \(inputPosition) of \(compressed.count) (liblzma \(result.rawValue))")
        }
    }

    /// LZMA2's window: room for the dictionary and the output, so every byte of both can be matched.
    static func windowSize(dictionary: Int, output: Int) -> UInt32 {
        UInt32(clamping: max(Int(CLzma_DICT_SIZE_MIN), dictionary + output))
    }
}

/// liblzma's allocations for the encoders: its match finder's tables (tens of MiB for a diff
/// against megabytes of dictionary, read and written at random) from ``HugePageMemory/shared``,
/// everything else from `malloc`.
nonisolated(unsafe) private let hugePageAllocator: UnsafePointer<lzma_allocator> = {
    let allocator = UnsafeMutablePointer<lzma_allocator>.allocate(capacity: 1)
    allocator.initialize(
        to: lzma_allocator(
            alloc: { _, count, size in
                let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
                guard !overflow else { return nil }
                return HugePageMemory.worthIt(bytes)
                    ? HugePageMemory.shared.allocate(byteCount: bytes) : malloc(max(bytes, 1))
            },
            free: { _, pointer in
                guard let pointer else { return }
                if !HugePageMemory.shared.release(pointer) { free(pointer) }
            },
            opaque: nil))
    return UnsafePointer(allocator)
}()

/// Memory for liblzma's decoders, kept from one decode to the next: a decoder's one large block
/// (its window, up to dictionary + output bytes) comes from a region the caller lends
/// (``use(_:)``: the rest of an arena whose start holds the dictionary), or else from a block
/// allocated once and grown when a later decoder needs more; never a fresh window (mapped,
/// faulted in and zeroed page by page, then unmapped) per delta operation. Smaller requests go to
/// `malloc`. Serves one decoder at a time: a second large request while the first is out gets its
/// own `malloc` block.
public final class LZMADecoderMemory {
    /// Requests of at least this many bytes are large.
    static let largeRequest = 1 << 20
    private var region: UnsafeMutableRawBufferPointer?
    private var block: UnsafeMutableRawPointer?
    private var blockSize = 0
    private var lent: UnsafeMutableRawPointer?
    private let storage: UnsafeMutablePointer<lzma_allocator>

    public init() {
        storage = .allocate(capacity: 1)
        storage.initialize(
            to: lzma_allocator(
                alloc: { opaque, count, size in
                    let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
                    guard !overflow, let opaque else { return nil }
                    return Unmanaged<LZMADecoderMemory>.fromOpaque(opaque).takeUnretainedValue().allocate(bytes)
                },
                free: { opaque, pointer in
                    guard let opaque else { return }
                    Unmanaged<LZMADecoderMemory>.fromOpaque(opaque).takeUnretainedValue().release(pointer)
                },
                opaque: nil))
        storage.pointee.opaque = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        free(block)
        storage.deallocate()
    }

    var allocator: UnsafePointer<lzma_allocator> { UnsafePointer(storage) }

    /// Large requests go to `region` (when it is big enough) until the next call; nil: to the
    /// kept block. The caller keeps `region` allocated and untouched while a decoder runs.
    public func use(_ region: UnsafeMutableRawBufferPointer?) {
        precondition(lent == nil, "Ferry bug: the LZMA window moved while a decoder held it")
        self.region = region
    }

    /// The bytes of the kept block (0 while every window fitted the lent regions).
    public var keptBytes: Int { blockSize }

    private func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
        guard bytes >= Self.largeRequest, lent == nil else { return malloc(max(bytes, 1)) }
        if let region, bytes <= region.count {
            lent = region.baseAddress
        } else {
            if bytes > blockSize {
                free(block)
                block = malloc(bytes)
                blockSize = block == nil ? 0 : bytes
            }
            lent = block
        }
        return lent
    }

    private func release(_ pointer: UnsafeMutableRawPointer?) {
        if let pointer, pointer == lent {
            lent = nil
        } else {
            free(pointer)
        }
    }
}
