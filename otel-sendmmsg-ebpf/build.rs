//! Tells the BPF code which architecture's registers it reads (`bpf_target_arch`), the way
//! aya-ebpf does for itself: the BPF target is the same on every architecture, the kernel's
//! `pt_regs` is not. The sidecar's build script names its own target's architecture
//! (`AYA_BPF_TARGET_ARCH`), so a cross-built sidecar's object reads that architecture's registers.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
