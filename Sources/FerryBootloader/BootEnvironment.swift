import FerrySystem

/// A bootloader's variable store (U-Boot environment, GRUB environment block).
///
/// Every `update` is one atomic transition (ARCHITECTURE.md invariant 4): a cut at any instant
/// leaves either the complete old or the complete new set of variables.
public protocol BootEnvironment: AnyObject {
    /// A name for messages (the file or configuration it came from).
    var name: String { get }
    /// All variables.
    func read() throws(FerryError) -> [String: String]
    /// Sets (non-nil) and removes (nil) variables in one write. No-op changes still write,
    /// so that a corrupt redundant copy is repaired.
    func update(_ changes: [String: String?]) throws(FerryError)
}

extension BootEnvironment {
    /// One variable, or nil.
    public func value(_ name: String) throws(FerryError) -> String? { try read()[name] }
}
