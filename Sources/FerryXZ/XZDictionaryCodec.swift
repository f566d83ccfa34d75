internal import CLzma
import FerrySystem

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
                        filters.baseAddress, nil, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
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
    /// - Throws: `.bundleInvalid` when the stream is corrupt, decodes to another size, or is
    ///   followed by other bytes; `.limitExceeded` when it would need more than `memoryLimit`.
    public static func decode(
        _ compressed: UnsafeRawBufferPointer, dictionary: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        memoryLimit: Int = 256 << 20
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
                    filters.baseAddress, nil, compressed.baseAddress?.assumingMemoryBound(to: UInt8.self),
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
