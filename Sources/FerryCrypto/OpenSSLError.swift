internal import COpenSSL
import FerrySystem

/// OpenSSL's error queue, drained into one line.
enum OpenSSLError {
    /// The queued OpenSSL errors as text (and the queue emptied), or "no details".
    static func drain() -> String {
        var messages: [String] = []
        while true {
            var data: UnsafePointer<CChar>? = nil
            var flags: Int32 = 0
            let code = ERR_get_error_all(nil, nil, nil, &data, &flags)
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            let text = String(decoding: bytes, as: UTF8.self)
            // "error:HEX:lib:func:reason" — keep the reason, the useful part.
            var message = text.split(separator: ":").last.map(String.init) ?? text
            if let data, flags & ERR_TXT_STRING != 0 {
                // Details such as "Verify error: certificate has expired".
                message += " (\(String(cString: data)))"
            }
            messages.append(message)
        }
        return messages.isEmpty ? "no details" : messages.joined(separator: "; ")
    }
}
