/// How QEMU runs the guest's CPUs.
public enum Accelerator: String, Sendable, Equatable, CaseIterable {
    /// Hardware virtualization through /dev/kvm.
    case kvm
    /// QEMU's software emulator: slower, works everywhere.
    case tcg
}
