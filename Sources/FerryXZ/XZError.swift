internal import CLzma
import FerrySystem

/// A liblzma failure: the library's return code and a one-line message saying what failed.
///
/// FerryXZ never throws this type directly. It becomes the ``FerryError/cause`` of the `FerryError`
/// thrown at the public API (``ferryError(_:fileID:line:)``), so `--verbose` can show the native code.
/// Compare `FerryError.code` in tests, not this.
public struct XZError: Error, Sendable, CustomStringConvertible {
    /// A liblzma return code (`lzma_ret`), with a named static for each value.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        init(_ value: lzma_ret) { rawValue = value.rawValue }

        /// `LZMA_OK`: the operation completed.
        public static let ok = Code(LZMA_OK)
        /// `LZMA_STREAM_END`: the end of the stream was reached.
        public static let streamEnd = Code(LZMA_STREAM_END)
        /// `LZMA_NO_CHECK`: the stream has no integrity check.
        public static let noCheck = Code(LZMA_NO_CHECK)
        /// `LZMA_UNSUPPORTED_CHECK`: the integrity check type is not supported by this liblzma.
        public static let unsupportedCheck = Code(LZMA_UNSUPPORTED_CHECK)
        /// `LZMA_GET_CHECK`: the integrity check type is now known.
        public static let getCheck = Code(LZMA_GET_CHECK)
        /// `LZMA_MEM_ERROR`: memory allocation failed.
        public static let memoryError = Code(LZMA_MEM_ERROR)
        /// `LZMA_MEMLIMIT_ERROR`: decoding needs more memory than the limit allows.
        public static let memoryLimitError = Code(LZMA_MEMLIMIT_ERROR)
        /// `LZMA_FORMAT_ERROR`: the input is not in the .xz format.
        public static let formatError = Code(LZMA_FORMAT_ERROR)
        /// `LZMA_OPTIONS_ERROR`: invalid or unsupported options (in the input, or passed by the caller).
        public static let optionsError = Code(LZMA_OPTIONS_ERROR)
        /// `LZMA_DATA_ERROR`: the compressed data is corrupt, truncated, or fails its integrity check.
        public static let dataError = Code(LZMA_DATA_ERROR)
        /// `LZMA_BUF_ERROR`: no progress is possible; for single-call decoding, the output buffer is too small.
        public static let bufferError = Code(LZMA_BUF_ERROR)
        /// `LZMA_PROG_ERROR`: liblzma was called wrongly (a bug in the caller).
        public static let programmingError = Code(LZMA_PROG_ERROR)

        /// The C name of the code (`LZMA_DATA_ERROR`), or the number if liblzma is newer than Ferry.
        public var description: String {
            switch self {
            case .ok: "LZMA_OK"
            case .streamEnd: "LZMA_STREAM_END"
            case .noCheck: "LZMA_NO_CHECK"
            case .unsupportedCheck: "LZMA_UNSUPPORTED_CHECK"
            case .getCheck: "LZMA_GET_CHECK"
            case .memoryError: "LZMA_MEM_ERROR"
            case .memoryLimitError: "LZMA_MEMLIMIT_ERROR"
            case .formatError: "LZMA_FORMAT_ERROR"
            case .optionsError: "LZMA_OPTIONS_ERROR"
            case .dataError: "LZMA_DATA_ERROR"
            case .bufferError: "LZMA_BUF_ERROR"
            case .programmingError: "LZMA_PROG_ERROR"
            default: "lzma_ret \(rawValue)"
            }
        }
    }

    /// The liblzma return code.
    public var code: Code
    /// What failed, in words ("the compressed data is corrupt").
    public var message: String

    init(_ value: lzma_ret, message: String) {
        self.code = Code(value)
        self.message = message
    }

    public var description: String { "\(message) (\(code))" }

    /// The domain error for this failure, with `context` (what was being decoded or encoded) in front.
    ///
    /// Corrupt, truncated or unsupported input is `.bundleInvalid` (the bytes came from a bundle);
    /// a decoder that would need more memory than allowed is `.limitExceeded`; a wrong call into
    /// liblzma is `.internal`; anything else (allocation failure) is `.io`.
    func ferryError(_ context: String, fileID: String = #fileID, line: Int = #line) -> FerryError {
        let ferryCode: FerryError.Code =
            switch code {
            case .dataError, .formatError, .optionsError, .bufferError, .unsupportedCheck, .noCheck: .bundleInvalid
            case .memoryLimitError: .limitExceeded
            case .programmingError: .internal
            default: .io
            }
        return FerryError(code: ferryCode, message: "\(context): \(message)", cause: self, fileID: fileID, line: line)
    }
}
